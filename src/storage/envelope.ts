/**
 * Encryption at rest for everything scrubline stores itself (cleaned files in the local sink,
 * their reports, thumbnails): AES-256-GCM envelope encryption (issue 17).
 *
 *   - Each object gets a fresh 256-bit data key, wrapped by the storage key (AES-256-GCM); the
 *     header records the storage key's id, so keys can rotate: a keyring holds the current key,
 *     which writes, and older ones, which still read.
 *   - The wrap is bound to the object's name (its path in the data dir): an object moved or
 *     copied over another one's name (one user's file served as another's) does not open.
 *   - The data is encrypted in 64 KiB segments, each its own GCM message whose nonce and
 *     associated data bind its index and whether it is the last (the STREAM construction of
 *     Hoang, Reyhanitabar, Rogaway and Vizár, as in Tink's streaming AEAD): a segment moved,
 *     dropped, altered or cut off fails its tag.
 *   - A reader proves the whole object before it gives out a byte (`verifyObject`, then
 *     `openObject`), so a tampered or truncated object is refused, never served in part.
 *
 * Layout: "SCRUBENC1" · key id (8) · wrap nonce (12) · wrapped data key (32) · wrap tag (16) ·
 * nonce prefix (7) · then segments of ciphertext (up to 64 KiB) each followed by its 16-byte tag.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { open, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';

const magic = Buffer.from('SCRUBENC1', 'latin1');
const keyIdBytes = 8;
const tagBytes = 16;
const noncePrefixBytes = 7;
const headerBytes = magic.length + keyIdBytes + 12 + 32 + tagBytes + noncePrefixBytes;
export const segmentBytes = 64 * 1024;

export interface StorageKey {
  /** 8 bytes: the first of SHA-256 of the key, as recorded in each object's header. */
  id: Buffer;
  key: Buffer;
}

export class Keyring {
  readonly current: StorageKey;
  private readonly byId: Map<string, StorageKey>;

  /** `keys[0]` encrypts; every key decrypts what it wrapped. */
  constructor(keys: Buffer[]) {
    if (keys.length === 0 || keys.some((k) => k.length !== 32)) throw new Error('storage keys must be 32 bytes each');
    const ring = keys.map((key) => ({ key, id: createHash('sha256').update(key).digest().subarray(0, keyIdBytes) }));
    this.current = ring[0]!;
    this.byId = new Map(ring.map((k) => [k.id.toString('hex'), k]));
  }

  find(id: Buffer): StorageKey | undefined {
    return this.byId.get(id.toString('hex'));
  }
}

/** Raised when an object is not one of ours, was made with a key not in the ring, or was altered. */
export class TamperedObject extends Error {
  constructor(why: string) {
    super(`stored object refused: ${why}`);
    this.name = 'TamperedObject';
  }
}

function segmentNonce(prefix: Buffer, index: number, last: boolean): Buffer {
  const nonce = Buffer.alloc(12);
  prefix.copy(nonce, 0);
  nonce.writeUInt32BE(index, noncePrefixBytes);
  nonce[11] = last ? 1 : 0;
  return nonce;
}

/**
 * One segment, sealed: its ciphertext, then its tag, as two buffers. Joining them would copy every
 * byte once more, and each copy is garbage until V8's next full collection (issue 30: a 1 GiB
 * upload is sealed as it arrives).
 */
function* sealSegment(dataKey: Buffer, prefix: Buffer, index: number, last: boolean, plaintext: Buffer): Generator<Buffer> {
  const cipher = createCipheriv('aes-256-gcm', dataKey, segmentNonce(prefix, index, last));
  yield cipher.update(plaintext);
  // GCM's final() gives no bytes; it is joined to the tag in case a cipher ever does.
  yield Buffer.concat([cipher.final(), cipher.getAuthTag()]);
}

/** Encrypts `plaintext` chunks into one object. */
function* sealSegments(dataKey: Buffer, prefix: Buffer, plaintext: Buffer): Generator<Buffer> {
  const count = Math.max(1, Math.ceil(plaintext.length / segmentBytes));
  for (let i = 0; i < count; i++) yield* sealSegment(dataKey, prefix, i, i === count - 1, plaintext.subarray(i * segmentBytes, (i + 1) * segmentBytes));
}

/** What the data key's wrap authenticates besides itself: the format, the key id, the object's name. */
const wrapContext = (id: Buffer, name: string): Buffer => Buffer.concat([magic, id, Buffer.from(name, 'utf8')]);

function header(ring: Keyring, name: string, dataKey: Buffer, prefix: Buffer): Buffer {
  const wrapNonce = randomBytes(12);
  const wrap = createCipheriv('aes-256-gcm', ring.current.key, wrapNonce);
  wrap.setAAD(wrapContext(ring.current.id, name));
  const wrapped = Buffer.concat([wrap.update(dataKey), wrap.final()]);
  return Buffer.concat([magic, ring.current.id, wrapNonce, wrapped, wrap.getAuthTag(), prefix]);
}

/** An object's header, then its segments: the one place an object held in memory is sealed. */
function* sealedParts(ring: Keyring, name: string, plaintext: Buffer): Generator<Buffer> {
  const dataKey = randomBytes(32);
  const prefix = randomBytes(noncePrefixBytes);
  yield header(ring, name, dataKey, prefix);
  yield* sealSegments(dataKey, prefix, plaintext);
}

/** An encrypted object holding `plaintext`, to be stored under `name`. */
export function seal(ring: Keyring, name: string, plaintext: Buffer): Buffer {
  const object = Buffer.allocUnsafe(sealedBytes(plaintext.length));
  return object.subarray(0, sealInto(ring, name, plaintext, object));
}

/**
 * `seal`'s object written into `out` (at least `sealedBytes(plaintext.length)` long); its length.
 * For a writer that seals piece after piece: the cipher's output is copied out as it is made, so
 * it dies young, and `out` is used again. Held across the write instead, it lived long enough to
 * be moved to V8's old generation, and waited there for a full collection (issue 30).
 */
export function sealInto(ring: Keyring, name: string, plaintext: Buffer, out: Buffer): number {
  // A short buffer would cut the object silently (Buffer#copy copies what fits).
  if (out.length < sealedBytes(plaintext.length)) throw new RangeError('sealInto: the buffer is shorter than the sealed object');
  let length = 0;
  for (const part of sealedParts(ring, name, plaintext)) length += part.copy(out, length);
  return length;
}

/** The size of the object that `seal` makes of `plaintextBytes` bytes. */
export const sealedBytes = (plaintextBytes: number): number => headerBytes + plaintextBytes + Math.max(1, Math.ceil(plaintextBytes / segmentBytes)) * tagBytes;

/**
 * The file at `source` encrypted as one object to be stored under `name`, as a stream read one
 * segment at a time (nothing held whole in memory), with its length known before the first byte
 * (an object store wants it up front).
 */
export async function sealedFile(ring: Keyring, name: string, source: string): Promise<{ body: Readable; length: number }> {
  const { size } = await stat(source);
  async function* segments(): AsyncGenerator<Buffer> {
    const input = await open(source, 'r');
    try {
      const dataKey = randomBytes(32);
      const prefix = randomBytes(noncePrefixBytes);
      yield header(ring, name, dataKey, prefix);
      const count = Math.max(1, Math.ceil(size / segmentBytes));
      // One buffer for every segment's plaintext: the cipher copies out of it before it is refilled.
      const buffer = Buffer.allocUnsafe(segmentBytes);
      for (let i = 0; i < count; i++) {
        const { bytesRead } = await input.read(buffer, 0, segmentBytes, i * segmentBytes);
        // The file was cleaned and verified at this size; one that changed since is not sealed.
        if (bytesRead !== Math.min(segmentBytes, size - i * segmentBytes)) throw new Error('the file changed while it was being sealed');
        yield* sealSegment(dataKey, prefix, i, i === count - 1, buffer.subarray(0, bytesRead));
      }
    } finally {
      await input.close();
    }
  }
  return { body: Readable.from(segments(), { objectMode: false }), length: sealedBytes(size) };
}

/** The data key of an object, from its header. */
function unwrap(ring: Keyring, name: string, head: Buffer): { dataKey: Buffer; prefix: Buffer } {
  if (head.length < headerBytes || !head.subarray(0, magic.length).equals(magic)) throw new TamperedObject('not an encrypted object');
  let at = magic.length;
  const id = head.subarray(at, (at += keyIdBytes));
  const wrapNonce = head.subarray(at, (at += 12));
  const wrapped = head.subarray(at, (at += 32));
  const tag = head.subarray(at, (at += tagBytes));
  const prefix = head.subarray(at, (at += noncePrefixBytes));
  const key = ring.find(id);
  if (!key) throw new TamperedObject('made with a storage key that is not configured');
  try {
    const unwrapper = createDecipheriv('aes-256-gcm', key.key, wrapNonce);
    unwrapper.setAAD(wrapContext(id, name));
    unwrapper.setAuthTag(tag);
    return { dataKey: Buffer.concat([unwrapper.update(wrapped), unwrapper.final()]), prefix: Buffer.from(prefix) };
  } catch {
    throw new TamperedObject('its data key does not unwrap (altered, or stored under another name)');
  }
}

function openSegment(dataKey: Buffer, prefix: Buffer, index: number, last: boolean, sealed: Buffer): Buffer {
  if (sealed.length < tagBytes) throw new TamperedObject('a segment is cut short');
  try {
    const decipher = createDecipheriv('aes-256-gcm', dataKey, segmentNonce(prefix, index, last));
    decipher.setAuthTag(sealed.subarray(sealed.length - tagBytes));
    const plaintext = decipher.update(sealed.subarray(0, sealed.length - tagBytes));
    // final() proves the tag; for GCM it gives no bytes, and then nothing is copied again.
    const rest = decipher.final();
    return rest.length === 0 ? plaintext : Buffer.concat([plaintext, rest]);
  } catch {
    throw new TamperedObject(`segment ${index} fails its tag (altered, moved or truncated)`);
  }
}

/** Decrypts a whole object held in memory (reports, thumbnails). Throws TamperedObject. */
export function unseal(ring: Keyring, name: string, object: Buffer): Buffer {
  const { dataKey, prefix } = unwrap(ring, name, object.subarray(0, headerBytes));
  const body = object.subarray(headerBytes);
  const stride = segmentBytes + tagBytes;
  const count = Math.max(1, Math.ceil(body.length / stride));
  const parts: Buffer[] = [];
  for (let i = 0; i < count; i++) parts.push(openSegment(dataKey, prefix, i, i === count - 1, body.subarray(i * stride, (i + 1) * stride)));
  return Buffer.concat(parts);
}

/**
 * An object's plaintext segment by segment, each decrypted and proven before it is yielded.
 * The stored bytes are gathered into one frame the size of a stored segment, used again for each:
 * whatever the source's chunks, nothing but the plaintext is allocated per segment. A full frame
 * is opened once a byte after it arrives, or the source ends: only then is it known whether it is
 * the last segment, which its nonce says.
 */
export async function* segmentsOf(ring: Keyring, name: string, source: AsyncIterable<Uint8Array>): AsyncGenerator<Buffer> {
  const stride = segmentBytes + tagBytes;
  const frame = Buffer.allocUnsafe(stride);
  let filled = 0;
  let keys: { dataKey: Buffer; prefix: Buffer } | undefined;
  let index = 0;
  for await (const chunk of source) {
    for (let at = 0; at < chunk.byteLength; ) {
      const size = keys === undefined ? headerBytes : stride;
      if (filled === size) {
        // A byte follows: the header, or a segment that is not the last.
        if (keys === undefined) keys = unwrap(ring, name, frame.subarray(0, headerBytes));
        else yield openSegment(keys.dataKey, keys.prefix, index++, false, frame);
        filled = 0;
        continue;
      }
      const taken = Math.min(size - filled, chunk.byteLength - at);
      frame.set(chunk.subarray(at, at + taken), filled);
      filled += taken;
      at += taken;
    }
  }
  if (keys === undefined) {
    unwrap(ring, name, frame.subarray(0, filled));
    // A header with nothing after it is an object cut off before its one segment.
    throw new TamperedObject('a segment is cut short');
  }
  yield openSegment(keys.dataKey, keys.prefix, index, true, frame.subarray(0, filled));
}

/** Proves every segment of an object; resolves to its plaintext size. Throws TamperedObject. */
export async function verifyObject(ring: Keyring, name: string, source: AsyncIterable<Uint8Array>): Promise<number> {
  let bytes = 0;
  for await (const segment of segmentsOf(ring, name, source)) bytes += segment.length;
  return bytes;
}

/**
 * The plaintext of an object as a stream. Call `verifyObject` first: a segment that fails here
 * (the object changed since) destroys the stream rather than end it as if complete.
 */
export function openObject(ring: Keyring, name: string, source: AsyncIterable<Uint8Array>): Readable {
  return Readable.from(segmentsOf(ring, name, source), { objectMode: false });
}
