/**
 * Step 6, tag expiry: every accepted file carries its retention and the moment it must be gone.
 * The policy: purged 24 hours after the job finishes, or 72 hours if the user explicitly opted
 * into extended retention; until the job finishes, a safety cap bounds how long anything lives.
 * A later "job finished" report re-dates the file in the ledger (Ledger.finishJob).
 */
import type { Fingerprinted, Retention, Tagged } from '../context.js';

export const retentionHours: Record<Retention, number> = { standard: 24, extended: 72 };

/** The time source, injectable so expiry is testable. */
export type Clock = () => Date;
export const systemClock: Clock = () => new Date();

/** When a file of this retention must be gone, given the time its clock started. */
export type Expiry = (retention: Retention, now: Date) => string;

export function expiresAt(retention: Retention, from: Date): string {
  return new Date(from.getTime() + retentionHours[retention] * 3_600_000).toISOString();
}

/**
 * The job clock for one upload:
 *   - the job already finished      → finish time + retention;
 *   - the job is still running      → now + the safety cap (re-dated when it finishes);
 *   - no job id (the upload is the job) → now + retention.
 */
export function jobExpiry(jobId: string | undefined, finishedAt: string | undefined, capHours: number): Expiry {
  return (retention, now) => {
    if (jobId === undefined) return expiresAt(retention, now);
    if (finishedAt !== undefined) return expiresAt(retention, new Date(finishedAt));
    return new Date(now.getTime() + capHours * 3_600_000).toISOString();
  };
}

export function tagExpiry<T extends Fingerprinted>(file: T, retention: Retention, clock: Clock, expiry: Expiry = expiresAt): T & Tagged {
  return { ...file, retention, expiresAt: expiry(retention, clock()) };
}
