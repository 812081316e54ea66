import { randomBytes } from 'node:crypto';

/** 96 random bits, URL-safe: upload, file and crash-report ids. */
export const randomId = (): string => randomBytes(12).toString('base64url');

const jobIdCharacters = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * A render job's id, as callers send it. It becomes a folder of bucket keys, so the path segments
 * `.` and `..` are refused (THREATS 52: `..` put keys outside scrubline's prefix, where the orphan
 * sweep never looks). The one check every route, the middleware and the stores use.
 */
export const isJobId = (value: string): boolean => jobIdCharacters.test(value) && value !== '.' && value !== '..';

export const jobIdRule = 'jobId must be 1–128 characters of letters, digits, ".", "_", ":" or "-", and not "." or "..".';
