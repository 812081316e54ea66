/**
 * Just enough ISOBMFF box reading for the fingerprint's keyframe table and repro's rotation:
 * the boxes directly inside a range of a buffer, and the video tracks of a `moov`. Lenient (a
 * box that does not fit ends the list); the stripper and the verifier have their own, strict,
 * readers on purpose.
 */
export interface BoxRange {
  type: string;
  /** First byte of the payload (after the 8-byte header). */
  start: number;
  end: number;
}

export function boxesIn(buf: Buffer, start: number, end: number): BoxRange[] {
  const out: BoxRange[] = [];
  for (let pos = start; pos + 8 <= end; ) {
    const size = buf.readUInt32BE(pos);
    if (size < 8 || pos + size > end) break;
    out.push({ type: buf.toString('latin1', pos + 4, pos + 8), start: pos + 8, end: pos + size });
    pos += size;
  }
  return out;
}

export const childBox = (buf: Buffer, parent: { start: number; end: number }, type: string): BoxRange | undefined =>
  boxesIn(buf, parent.start, parent.end).find((b) => b.type === type);

/** The `trak` boxes of a moov payload [start, end) whose handler is `vide`, in file order. */
export function videoTracks(buf: Buffer, start: number, end: number): BoxRange[] {
  return boxesIn(buf, start, end).filter((trak) => {
    if (trak.type !== 'trak') return false;
    const mdia = childBox(buf, trak, 'mdia');
    const hdlr = mdia && childBox(buf, mdia, 'hdlr');
    return hdlr !== undefined && buf.toString('latin1', hdlr.start + 8, hdlr.start + 12) === 'vide';
  });
}
