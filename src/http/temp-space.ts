/**
 * Bounded temp space (issue 29). An upload needs room in the temp dir for its original and its
 * cleaned copy: twice its size, at once, until it is answered (a resumable one is assembled there
 * from its encrypted pieces first, so the same twice). Before a byte is received, the upload's
 * need is reserved against the file system's free space, less what uploads in flight have already
 * reserved and a headroom kept for the ledger, logs and everything else; when it does not fit the
 * upload is answered 507 at once, instead of failing with ENOSPC halfway through.
 */
import { statfs } from 'node:fs/promises';
import { ScrubError } from '../errors.js';

/** What one upload of `bytes` needs in the temp dir: the original and the cleaned copy. */
export const tempBytesFor = (bytes: number): number => 2 * bytes;

export class TempSpace {
  /** Bytes reserved by uploads in flight. */
  reserved = 0;

  constructor(
    readonly dir: string,
    /** Free space never handed out, for everything else on the file system. */
    readonly headroomBytes: number,
  ) {}

  /** Bytes the file system has free for this process now. */
  async free(): Promise<number> {
    const info = await statfs(this.dir);
    return info.bavail * info.bsize;
  }

  /**
   * Reserves `bytes` until the returned function is called (idempotent). Throws 507
   * insufficient_storage, nothing reserved, when they do not fit.
   */
  async reserve(bytes: number): Promise<() => void> {
    const free = await this.free();
    if (free - this.reserved - this.headroomBytes < bytes) {
      throw new ScrubError('insufficient_storage', 'The server does not have the temporary space this upload needs just now. Nothing was kept; retry later, or send a smaller file.', {
        internal: `temp space: ${bytes} bytes wanted, ${free} free, ${this.reserved} reserved, ${this.headroomBytes} kept back`,
      });
    }
    this.reserved += bytes;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.reserved -= bytes;
    };
  }
}
