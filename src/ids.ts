import { randomBytes } from 'node:crypto';

/** 96 random bits, URL-safe: upload, file and crash-report ids. */
export const randomId = (): string => randomBytes(12).toString('base64url');
