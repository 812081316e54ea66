/**
 * Previews after the response (issue 18): an upload's answer waits for no preview work. What a
 * preview needs is held before the request's clean-up (an image's preview JPEG is already in
 * memory, made by the verifier's one decode of its pixels; a JPEG's picture at 1/8 scale, read by
 * the verifier's walk of its scans, is in memory too; a video or HEIC is linked into
 * `<dataDir>/previews/` under its random id), and the frame, decode, encryption and ledger row
 * happen once the client has its 201. The thumbnail goes to the store scrubline keeps objects in
 * (the data dir, or the bucket, so that any replica can serve it).
 *
 * Previews follow their file's clock: the row takes the file's expiry as it is when the preview
 * is recorded (a job finished in the meantime included), and a file already purged or deleted
 * gets none. A preview that fails is simply not made. What a dead process held is removed at the
 * next start (`emptyPendingDir`), and a thumbnail written but never recorded is an orphan the
 * sweeper removes.
 */
import { link, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { ArtefactRecord, JobExpiry, Ledger } from '../storage/ledger.js';
import type { ObjectStore } from '../storage/objects.js';
import type { CleanFile } from '../pipeline.js';
import { emptyTempDir } from '../steps/receive.js';
import { seal, type Keyring } from '../storage/envelope.js';
import { makeThumbnail } from './thumbnails.js';
import type { Ffmpeg } from '../tools/ffmpeg.js';
import type { HeifDecoder } from '../tools/heif.js';

export type PreviewState = 'pending' | 'ready' | 'none';

export const thumbnailId = (fileId: string): string => `th_${fileId}`;

/** What one preview needs once the request is gone. */
interface Held {
  file: CleanFile;
  /** A link to the cleaned file in the pending dir, removed when the preview is done. */
  linked?: string;
}

export interface PreviewDeps {
  dataDir: string;
  ledger: Ledger;
  /** Where thumbnails are kept. */
  store: ObjectStore;
  storage: Keyring;
  /** A file's expiry once its job finished, for a finish report that lands while the preview is made. */
  expiry: JobExpiry;
  tools: Ffmpeg;
  heifDecoder: HeifDecoder | undefined;
  maxInputPixels: number;
  logger: Logger;
}

export class Previews {
  private readonly pending = new Map<string, Promise<void>>();
  private readonly pendingDir: string;

  constructor(private readonly deps: PreviewDeps) {
    this.pendingDir = path.join(deps.dataDir, 'previews');
  }

  /** At start-up: cleaned files a dead process held for previews it never made. */
  static emptyPendingDir(dataDir: string): number {
    return emptyTempDir(path.join(dataDir, 'previews'));
  }

  /** Whether a file can have a preview at all. */
  private possible(file: CleanFile): boolean {
    if (file.kind.family === 'video') return true;
    return file.preview !== undefined || file.makePreview !== undefined || (file.kind.format === 'heif' && this.deps.heifDecoder !== undefined);
  }

  /**
   * Before the response, while the upload's directory still exists: keeps what the preview will
   * need. Never fails the upload: a file that cannot be held just gets no preview.
   */
  async hold(file: CleanFile): Promise<Held | undefined> {
    if (!this.possible(file)) return undefined;
    if (file.preview !== undefined || file.makePreview !== undefined) return { file };
    const linked = path.join(this.pendingDir, `${file.id}.${file.ext}`);
    try {
      await mkdir(this.pendingDir, { recursive: true, mode: 0o700 });
      await link(file.path, linked);
      return { file: { ...file, path: linked }, linked };
    } catch (err) {
      this.deps.logger.warn({ fileId: file.id, err: { code: (err as NodeJS.ErrnoException).code } }, 'preview not held: the file will have none');
      return undefined;
    }
  }

  /** After the response: makes, stores and records the preview of a recorded file. */
  start(record: ArtefactRecord, held: Held): void {
    const work = this.make(record, held).finally(() => this.pending.delete(record.id));
    this.pending.set(record.id, work);
  }

  /** As this replica knows it: a preview being made on another replica reads as none until it is ready. */
  async state(fileId: string): Promise<PreviewState> {
    if (this.pending.has(fileId)) return 'pending';
    return (await this.deps.ledger.thumbnailOf(fileId)) !== undefined ? 'ready' : 'none';
  }

  /** Resolves when every preview started so far is done (shutdown, tests). */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.pending.values()]);
  }

  private async make(record: ArtefactRecord, held: Held): Promise<void> {
    const id = thumbnailId(record.id);
    const { store } = this.deps;
    const name = store.nameFor('thumbnail', id, 'jpg', record.jobId);
    try {
      const jpeg = await makeThumbnail(held.file, this.deps.tools, this.deps.maxInputPixels, this.deps.heifDecoder);
      if (!jpeg) return;
      const sealed = seal(this.deps.storage, name, jpeg);
      await store.put(name, sealed, sealed.length, { retention: record.retention });
      // The file's clock as it is now; a file purged or deleted meanwhile gets no preview.
      const file = await this.deps.ledger.get(record.id);
      if (!file || file.purgedAt !== undefined) throw new Error('the file is gone');
      await this.deps.ledger.record(
        [{ ...file, id, kind: 'thumbnail', parentId: file.id, mime: 'image/jpeg', bytes: jpeg.length, destination: store.destination, paths: [name] }],
        this.deps.expiry,
      );
    } catch (err) {
      // Whole or not at all, so a delete of what was never stored is a no-op.
      await store.delete(name).catch(() => undefined);
      this.deps.logger.info({ fileId: record.id, reason: err instanceof Error ? err.name : 'error' }, 'no preview for this file');
    } finally {
      if (held.linked) await rm(held.linked, { force: true });
    }
  }
}
