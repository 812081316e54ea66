/**
 * Objects in an S3-compatible bucket (AWS S3, MinIO, R2, Ceph): `SCRUBLINE_UPSTREAM_URL=s3://bucket/prefix`.
 * The endpoint, region and credentials are the AWS SDK v3's own (AWS_ENDPOINT_URL_S3, AWS_REGION,
 * AWS_ACCESS_KEY_ID and the rest of its chain), so any of those engines works with the settings
 * its operators already use.
 *
 * Every write asks for server-side encryption and tags the object with its retention class; the
 * object itself is a scrubline envelope on top of that, so the bucket holds only ciphertext.
 * The SDK is an optional peer dependency, loaded when a bucket is configured.
 */
import type { Readable } from 'node:stream';
import type { S3Client } from '@aws-sdk/client-s3';
import { storageUnavailable } from '../errors.js';
import { isJobId } from '../ids.js';
import { optionalPeer } from './peers.js';
import { ForeignName, MissingObject, type ObjectInfo, type ObjectRole, type ObjectStore } from './objects.js';

type Sdk = typeof import('@aws-sdk/client-s3');

export interface BucketOptions {
  bucket: string;
  /** Key prefix, without leading or trailing slash; scrubline's own (the orphan sweep deletes under it). */
  prefix: string;
  /** `AES256` (the default) or `aws:kms`, with `kmsKeyId`. */
  sse: 'AES256' | 'aws:kms';
  kmsKeyId?: string | undefined;
  /** The bucket in the path rather than the host name (MinIO, a server on an IP address). */
  forcePathStyle?: boolean;
  /** A client of the caller's (tests); otherwise one from the SDK's environment. */
  client?: S3Client;
  /** Told of each failed request, by operation (for the error metric). */
  onError?: ((operation: BucketOperation) => void) | undefined;
  /** Objects larger than this go up as multipart uploads (default 16 MiB). */
  multipartFromBytes?: number;
  /** The size of each part (default 8 MiB; S3's least is 5 MiB). */
  partBytes?: number;
}

export type BucketOperation = 'put' | 'get' | 'delete' | 'list';

/** S3 error names of a bucket that cannot serve just now, beside any 5xx status. */
const unavailableNames = new Set(['SlowDown', 'ServiceUnavailable', 'InternalError', 'RequestTimeout', 'TimeoutError']);
const networkCodes = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ENOTFOUND']);

/** Whether an SDK error means "the bucket is not there just now" rather than "this request is wrong". */
export function isBucketOutage(err: unknown): boolean {
  const { name, code, $metadata } = (err ?? {}) as { name?: string; code?: string; $metadata?: { httpStatusCode?: number } };
  return (typeof code === 'string' && networkCodes.has(code)) || (name !== undefined && unavailableNames.has(name)) || ($metadata?.httpStatusCode ?? 0) >= 500;
}

/** Parses `s3://bucket/prefix`; throws with what is wrong. */
export function parseBucketUrl(url: URL): { bucket: string; prefix: string } {
  // The S3 bucket naming rules: 3-63 lowercase letters, digits, dots and hyphens.
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(url.hostname)) throw new Error('the bucket name must be 3-63 lowercase letters, digits, dots and hyphens');
  if (url.search !== '' || url.hash !== '' || url.username !== '' || url.port !== '') throw new Error('an s3:// URL is s3://bucket/prefix, with no port, query or credentials (the AWS SDK takes those from its environment)');
  const prefix = decodeURIComponent(url.pathname).replace(/^\/+|\/+$/g, '');
  // The sweeper removes stray objects under the prefix: it must be scrubline's own, never a
  // shared bucket's root.
  if (prefix === '') throw new Error('give a prefix that is scrubline\'s own, such as s3://bucket/scrubline: the sweeper removes stray objects under it');
  if (!/^[A-Za-z0-9._/-]*$/.test(prefix) || prefix.split('/').some((part) => part === '.' || part === '..')) throw new Error('the prefix may hold letters, digits, ".", "_", "-" and "/"');
  return { bucket: url.hostname, prefix };
}

/** Where a job-less upload's objects go, beside the job folders. */
const noJob = '_nojob';
/** Where resumable uploads' encrypted pieces wait, whatever their job, until the upload ends. */
const partials = '_partials';

export class BucketStore implements ObjectStore {
  readonly destination = 'bucket';
  private readonly client: S3Client;
  private readonly s3: Sdk;
  /** The names this store builds, and no other: `<prefix>/<job>/<id>.<ext>`, `.json`, `.thumb.jpg`. */
  private readonly ours: RegExp;
  private readonly multipartFrom: number;
  private readonly partBytes: number;

  constructor(private readonly options: BucketOptions) {
    this.multipartFrom = options.multipartFromBytes ?? 16 * 1024 * 1024;
    this.partBytes = options.partBytes ?? 8 * 1024 * 1024;
    if (options.prefix === '') throw new Error('a bucket store needs a prefix of its own');
    this.s3 = optionalPeer<Sdk>('@aws-sdk/client-s3', 'An s3:// destination');
    this.client = options.client ?? new this.s3.S3Client({ forcePathStyle: options.forcePathStyle ?? false });
    // The job folder is one segment, never `.` or `..`: a key that climbs out is not ours.
    this.ours = new RegExp(`^${options.prefix.replace(/[.]/g, '\\.')}/(?!\\.\\.?/)[A-Za-z0-9._:-]{1,128}/[A-Za-z0-9_-]+\\.(?:[a-z0-9]+|json|thumb\\.jpg)$`);
  }

  private key(...parts: string[]): string {
    return [this.options.prefix, ...parts].join('/');
  }

  nameFor(role: ObjectRole, id: string, ext: string, jobId: string | undefined): string {
    // Keys are built from checked parts only (THREATS 52): the routes refuse such a job id first.
    if (jobId !== undefined && !isJobId(jobId)) throw new ForeignName('a job id that is not a single path segment');
    if (!/^[A-Za-z0-9_-]+$/.test(id) || !/^[a-z0-9]+$/.test(ext)) throw new ForeignName('an object id or extension scrubline does not make');
    if (role === 'partial') return this.key(partials, `${id}.part`);
    const folder = jobId ?? noJob;
    if (role === 'file') return this.key(folder, `${id}.${ext}`);
    if (role === 'report') return this.key(folder, `${id}.json`);
    return this.key(folder, `${id}.thumb.jpg`);
  }

  /** One request: an outage becomes storage_unavailable (503, retried by the client), and each failure is counted. */
  private async send<T>(operation: BucketOperation, request: () => Promise<T>): Promise<T> {
    try {
      return await request();
    } catch (err) {
      const name = (err as { name?: string }).name;
      // A missing key is an answer; so is a request the server does not implement (s3rver lists no multipart uploads).
      if (err instanceof this.s3.NoSuchKey || name === 'NotFound' || name === 'NotImplemented') throw err;
      this.options.onError?.(operation);
      throw isBucketOutage(err) ? storageUnavailable(err) : err;
    }
  }

  /**
   * For /readyz: the cheapest request the sweeper's permissions already allow, a listing under the
   * prefix of a name no object has (so it answers at once, with nothing).
   */
  async ping(): Promise<void> {
    await this.send('list', () => this.client.send(new this.s3.ListObjectsV2Command({ Bucket: this.options.bucket, Prefix: `${this.options.prefix}/.readyz`, MaxKeys: 1 })));
  }

  private checked(name: string): string {
    if (!this.ours.test(name)) throw new ForeignName('a key that is not one scrubline builds under its prefix');
    return name;
  }

  async put(name: string, body: Readable | Buffer, length: number, info: ObjectInfo): Promise<void> {
    const key = this.checked(name);
    const params = {
      Bucket: this.options.bucket,
      Key: key,
      Body: body,
      ContentType: 'application/octet-stream',
      ServerSideEncryption: this.options.sse,
      ...(this.options.sse === 'aws:kms' && this.options.kmsKeyId !== undefined ? { SSEKMSKeyId: this.options.kmsKeyId } : {}),
      // What a bucket lifecycle rule can act on as a backstop (README): the class, not a date,
      // since a job's finish report moves the date after the write.
      Tagging: `scrubline-retention=${info.retention}`,
      Metadata: { 'scrubline-envelope': '1' },
    };
    if (length <= this.multipartFrom) {
      await this.send('put', () => this.client.send(new this.s3.PutObjectCommand({ ...params, ContentLength: length })));
      return;
    }
    // A large object goes up in parts (S3 takes at most 5 GiB in one PUT), two at a time, so at
    // most two parts are held in memory. A failed upload is aborted by lib-storage, leaving no
    // parts; what an abort cannot reach (the process killed) the orphan sweep aborts later.
    const { Upload } = optionalPeer<typeof import('@aws-sdk/lib-storage')>('@aws-sdk/lib-storage', 'A large object in an s3:// destination');
    const upload = new Upload({ client: this.client, params, partSize: this.partBytes, queueSize: 2, leavePartsOnError: false });
    await this.send('put', () => upload.done());
  }

  /**
   * Aborts multipart uploads under the prefix started more than `graceMs` before `at`: parts of a
   * write that died with its process, which S3 keeps (and bills) until aborted. Returns how many;
   * 0 on a server that cannot list them (s3rver), where the bucket's lifecycle rule
   * (AbortIncompleteMultipartUpload, docs/operations.md) is the only backstop.
   */
  async abortStaleUploads(at: Date, graceMs: number): Promise<number> {
    let aborted = 0;
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    do {
      let page: import('@aws-sdk/client-s3').ListMultipartUploadsCommandOutput;
      try {
        page = await this.send('list', () =>
          this.client.send(new this.s3.ListMultipartUploadsCommand({ Bucket: this.options.bucket, Prefix: `${this.options.prefix}/`, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker })),
        );
      } catch (err) {
        if ((err as { name?: string }).name === 'NotImplemented') return aborted;
        throw err;
      }
      for (const upload of page.Uploads ?? []) {
        if (upload.Key === undefined || upload.UploadId === undefined || !this.ours.test(upload.Key)) continue;
        if (at.getTime() - (upload.Initiated?.getTime() ?? at.getTime()) < graceMs) continue;
        await this.send('delete', () => this.client.send(new this.s3.AbortMultipartUploadCommand({ Bucket: this.options.bucket, Key: upload.Key, UploadId: upload.UploadId })));
        aborted++;
      }
      ({ NextKeyMarker: keyMarker, NextUploadIdMarker: uploadIdMarker } = page);
      if (!page.IsTruncated) keyMarker = undefined;
    } while (keyMarker !== undefined);
    return aborted;
  }

  async get(name: string): Promise<AsyncIterable<Uint8Array>> {
    try {
      const key = this.checked(name);
      const response = await this.send('get', () => this.client.send(new this.s3.GetObjectCommand({ Bucket: this.options.bucket, Key: key })));
      return response.Body as Readable;
    } catch (err) {
      if (err instanceof this.s3.NoSuchKey || (err as { name?: string }).name === 'NotFound') throw new MissingObject('not stored', { cause: err });
      throw err;
    }
  }

  async delete(name: string): Promise<void> {
    // S3 answers a delete of a missing key with success: a repeated purge is a no-op.
    const key = this.checked(name);
    await this.send('delete', () => this.client.send(new this.s3.DeleteObjectCommand({ Bucket: this.options.bucket, Key: key })));
  }

  async *list(): AsyncIterable<{ name: string; modifiedMs: number }> {
    let token: string | undefined;
    do {
      const page = await this.send('list', () =>
        this.client.send(new this.s3.ListObjectsV2Command({ Bucket: this.options.bucket, Prefix: `${this.options.prefix}/`, ContinuationToken: token })),
      );
      for (const object of page.Contents ?? []) {
        if (object.Key !== undefined && this.ours.test(object.Key)) yield { name: object.Key, modifiedMs: object.LastModified?.getTime() ?? 0 };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  close(): void {
    this.client.destroy();
  }
}
