/**
 * Step 6, tag expiry: every accepted file carries its retention and the moment it must be gone.
 * The policy: purged 24 hours after the job, or 72 hours if the user explicitly opted into
 * extended retention. Until the job-finished clock exists (issue 5) the clock starts at upload.
 */
import type { Fingerprinted, Retention, Tagged } from '../context.js';

export const retentionHours: Record<Retention, number> = { standard: 24, extended: 72 };

/** The time source, injectable so expiry is testable. */
export type Clock = () => Date;
export const systemClock: Clock = () => new Date();

export function expiresAt(retention: Retention, now: Date): string {
  return new Date(now.getTime() + retentionHours[retention] * 3_600_000).toISOString();
}

export function tagExpiry<T extends Fingerprinted>(file: T, retention: Retention, clock: Clock): T & Tagged {
  return { ...file, retention, expiresAt: expiresAt(retention, clock()) };
}
