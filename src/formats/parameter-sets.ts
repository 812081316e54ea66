/**
 * H.264 and HEVC parameter sets (SPS, PPS, VPS), read field by field to their trailing bits. They
 * are the coding tables a stream's pictures are decoded with, so they are kept byte for byte; but a
 * decoder stops reading at the last field it knows, so bytes after it (before the stop bit, or in
 * an extension a decoder skips) would ride along unseen (issue 26). A parameter set is canonical
 * when its fields are followed by the stop bit, zero bits to the byte's end, and nothing but zero
 * bytes. Anything else throws ParameterSetError, and the file is refused (a parameter set cannot
 * be rewritten in a remux). Extensions this reader does not parse (HEVC multi-layer and 3D VPS/PPS
 * extensions, 3D SPS extensions, extension data) throw too: what they hold cannot be proven.
 *
 * AV1's sequence header OBU is read the same way, to its trailing bits.
 *
 * Syntax: H.264 (ITU-T H.264) 7.3.2.1.1, 7.3.2.2, E.1.1; HEVC (ITU-T H.265) 7.3.2.1-7.3.2.3,
 * 7.3.3, 7.3.4, 7.3.7, E.2.1, E.2.2; AV1 (AOMedia AV1 bitstream) 5.5. Linear in the unit: every loop is bounded by the limit the
 * specification puts on its count.
 */

export class ParameterSetError extends Error {}

const fail = (why: string): never => {
  throw new ParameterSetError(why);
};

/** Bits of a unit's RBSP: the payload after the NAL header, emulation prevention bytes removed. */
class Bits {
  private readonly rbsp: Buffer;
  private pos = 0;

  constructor(nal: Buffer, headerBytes: number, escaped = true) {
    if (!escaped) {
      this.rbsp = nal.subarray(headerBytes);
      return;
    }
    const out = Buffer.allocUnsafe(nal.length);
    let n = 0;
    let zeros = 0;
    for (let i = headerBytes; i < nal.length; i++) {
      const byte = nal[i]!;
      if (zeros >= 2 && byte === 3) {
        zeros = 0;
        continue;
      }
      zeros = byte === 0 ? zeros + 1 : 0;
      out[n++] = byte;
    }
    this.rbsp = out.subarray(0, n);
  }

  u(n: number): number {
    let value = 0;
    for (let i = 0; i < n; i++) {
      const byte = this.rbsp[this.pos >> 3];
      if (byte === undefined) fail('its fields run past its end');
      value = value * 2 + ((byte! >> (7 - (this.pos & 7))) & 1);
      this.pos++;
    }
    return value;
  }

  flag(): boolean {
    return this.u(1) === 1;
  }

  skip(n: number): void {
    if (this.pos + n > this.rbsp.length * 8) fail('its fields run past its end');
    this.pos += n;
  }

  /** Exp-Golomb, unsigned; at most 32 leading zeros (values below 2^32). */
  ue(max = 0xfffffffe): number {
    let zeros = 0;
    while (this.u(1) === 0) if (++zeros > 32) fail('a field is not a valid code');
    const value = 2 ** zeros - 1 + this.u(zeros);
    if (value > max) fail('a count is beyond its limit');
    return value;
  }

  se(): number {
    const k = this.ue();
    return k % 2 === 1 ? (k + 1) / 2 : -(k / 2);
  }

  /** more_rbsp_data(): whether fields remain before the stop bit (the last 1 bit of the RBSP). */
  moreData(): boolean {
    let last = this.rbsp.length - 1;
    while (last >= 0 && this.rbsp[last] === 0) last--;
    if (last < 0) return false;
    const stop = last * 8 + (7 - countTrailingZeros(this.rbsp[last]!));
    return this.pos < stop;
  }

  /** rbsp_trailing_bits, then only zero bytes: the proof that nothing follows the fields. */
  end(): void {
    if (this.u(1) !== 1) fail('bytes follow its fields'); // or fields this reader does not know, which is the same to a decoder
    while (this.pos & 7) if (this.u(1) !== 0) fail('bytes follow its fields');
    for (let i = this.pos >> 3; i < this.rbsp.length; i++) if (this.rbsp[i] !== 0) fail('bytes follow its fields');
  }
}

const countTrailingZeros = (byte: number): number => {
  let n = 0;
  while (n < 8 && !((byte >> n) & 1)) n++;
  return n;
};

/** What later units need from earlier ones, by id: H.264 PPS the SPS's chroma format, HEVC SPS the VPS's sub-layers. */
export class ParameterSetContext {
  readonly h264Chroma = new Map<number, number>();
  readonly hevcSubLayers = new Map<number, number>();
}

/**
 * Throws ParameterSetError unless `nal` (an SPS, PPS or VPS; for AV1 a sequence header OBU) is
 * canonical; other units pass.
 */
export function checkParameterSet(codec: 'h264' | 'hevc' | 'av1', nal: Buffer, context: ParameterSetContext): void {
  if (codec === 'av1') {
    if (((nal[0] ?? 0) >> 3) % 16 === 1) av1SequenceHeader(nal);
    return;
  }
  if (codec === 'h264') {
    const type = nal[0]! & 0x1f;
    if (type === 7) h264Sps(new Bits(nal, 1), context);
    else if (type === 8) h264Pps(new Bits(nal, 1), context);
    else if (type === 13) h264SpsExtension(new Bits(nal, 1));
    return;
  }
  if (nal.length < 2) fail('it is shorter than its header');
  const type = (nal[0]! >> 1) & 0x3f;
  const layer = ((nal[0]! & 1) << 5) | (nal[1]! >> 3);
  if (type === 32) hevcVps(new Bits(nal, 2), context);
  else if (type === 33) hevcSps(new Bits(nal, 2), layer, context);
  else if (type === 34) hevcPps(new Bits(nal, 2));
}

// --- H.264 ---------------------------------------------------------------------------------------

const highProfiles = new Set([100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135]);

function h264ScalingList(b: Bits, size: number): void {
  let last = 8;
  let next = 8;
  for (let j = 0; j < size; j++) {
    if (next !== 0) next = (last + b.se() + 256) % 256;
    last = next === 0 ? last : next;
  }
}

function h264Sps(b: Bits, context: ParameterSetContext): void {
  const profile = b.u(8);
  b.skip(16); // constraint flags, level
  const id = b.ue(31);
  let chroma = 1;
  if (highProfiles.has(profile)) {
    chroma = b.ue(3);
    if (chroma === 3) b.skip(1);
    b.ue(6);
    b.ue(6);
    b.skip(1);
    if (b.flag()) for (let i = 0; i < (chroma !== 3 ? 8 : 12); i++) if (b.flag()) h264ScalingList(b, i < 6 ? 16 : 64);
  }
  b.ue(12);
  const pocType = b.ue(2);
  if (pocType === 0) b.ue(12);
  else if (pocType === 1) {
    b.skip(1);
    b.se();
    b.se();
    const cycle = b.ue(255);
    for (let i = 0; i < cycle; i++) b.se();
  }
  b.ue(32); // max_num_ref_frames
  b.skip(1);
  b.ue();
  b.ue();
  if (!b.flag()) b.skip(1); // frame_mbs_only_flag, mb_adaptive_frame_field_flag
  b.skip(1);
  if (b.flag()) for (let i = 0; i < 4; i++) b.ue();
  if (b.flag()) h264Vui(b);
  b.end();
  context.h264Chroma.set(id, chroma);
}

/** An SPS extension (7.3.2.1.2): the alpha plane's format, which avcC may carry. */
function h264SpsExtension(b: Bits): void {
  b.ue(31);
  if (b.ue(3) !== 0) {
    const depth = b.ue(4) + 9;
    b.skip(1 + 2 * depth);
  }
  if (b.flag()) fail('it holds extension data');
  b.end();
}

function h264Hrd(b: Bits): void {
  const count = b.ue(31) + 1;
  b.skip(8);
  for (let i = 0; i < count; i++) {
    b.ue();
    b.ue();
    b.skip(1);
  }
  b.skip(20);
}

/**
 * The fields H.264's and HEVC's VUI begin alike with (E.1.1, E.2.1): aspect ratio, overscan,
 * video signal type and colour description, chroma sample location.
 */
function vuiDisplayFields(b: Bits): void {
  if (b.flag() && b.u(8) === 255) b.skip(32);
  if (b.flag()) b.skip(1);
  if (b.flag()) {
    b.skip(4);
    if (b.flag()) b.skip(24);
  }
  if (b.flag()) {
    b.ue(5);
    b.ue(5);
  }
}

function h264Vui(b: Bits): void {
  vuiDisplayFields(b);
  if (b.flag()) b.skip(65);
  const nal = b.flag();
  if (nal) h264Hrd(b);
  const vcl = b.flag();
  if (vcl) h264Hrd(b);
  if (nal || vcl) b.skip(1);
  b.skip(1);
  if (b.flag()) {
    b.skip(1);
    for (let i = 0; i < 6; i++) b.ue();
  }
}

function h264Pps(b: Bits, context: ParameterSetContext): void {
  b.ue(255);
  const sps = b.ue(31);
  b.skip(2);
  const groups = b.ue(7) + 1;
  if (groups > 1) {
    const mapType = b.ue(6);
    if (mapType === 0) for (let i = 0; i < groups; i++) b.ue();
    else if (mapType === 2)
      for (let i = 0; i < groups - 1; i++) {
        b.ue();
        b.ue();
      }
    else if (mapType >= 3 && mapType <= 5) {
      b.skip(1);
      b.ue();
    } else if (mapType === 6) {
      const units = b.ue(139264) + 1; // at most a level 6.2 frame's macroblocks
      b.skip(units * Math.ceil(Math.log2(groups)));
    }
  }
  b.ue(31);
  b.ue(31);
  b.skip(3);
  b.se();
  b.se();
  b.se();
  b.skip(3);
  if (b.moreData()) {
    const transform8x8 = b.flag();
    const lists = 6 + ((context.h264Chroma.get(sps) ?? 1) !== 3 ? 2 : 6) * (transform8x8 ? 1 : 0);
    if (b.flag()) for (let i = 0; i < lists; i++) if (b.flag()) h264ScalingList(b, i < 6 ? 16 : 64);
    b.se();
  }
  b.end();
}

// --- HEVC ----------------------------------------------------------------------------------------

function profileTierLevel(b: Bits, maxSubLayersMinus1: number): void {
  b.skip(96); // general profile space/tier/idc, 32 compatibility flags, 48 constraint bits, level
  const profilePresent: boolean[] = [];
  const levelPresent: boolean[] = [];
  for (let i = 0; i < maxSubLayersMinus1; i++) {
    profilePresent.push(b.flag());
    levelPresent.push(b.flag());
  }
  if (maxSubLayersMinus1 > 0) b.skip(2 * (8 - maxSubLayersMinus1));
  for (let i = 0; i < maxSubLayersMinus1; i++) {
    if (profilePresent[i]) b.skip(88);
    if (levelPresent[i]) b.skip(8);
  }
}

function subLayerOrdering(b: Bits, maxSubLayersMinus1: number): void {
  const all = b.flag();
  for (let i = all ? 0 : maxSubLayersMinus1; i <= maxSubLayersMinus1; i++) {
    b.ue();
    b.ue();
    b.ue();
  }
}

function hevcScalingListData(b: Bits): void {
  for (let size = 0; size < 4; size++) {
    for (let matrix = 0; matrix < 6; matrix += size === 3 ? 3 : 1) {
      if (!b.flag()) b.ue(matrix);
      else {
        if (size > 1) b.se();
        for (let i = 0, n = Math.min(64, 1 << (4 + (size << 1))); i < n; i++) b.se();
      }
    }
  }
}

function hevcHrd(b: Bits, common: boolean, maxSubLayersMinus1: number): void {
  let nal = false;
  let vcl = false;
  let subPic = false;
  if (common) {
    nal = b.flag();
    vcl = b.flag();
    if (nal || vcl) {
      subPic = b.flag();
      if (subPic) b.skip(19);
      b.skip(8);
      if (subPic) b.skip(4);
      b.skip(15);
    }
  }
  for (let i = 0; i <= maxSubLayersMinus1; i++) {
    const general = b.flag();
    const withinCvs = general || b.flag();
    let lowDelay = false;
    if (withinCvs) b.ue(2047);
    else lowDelay = b.flag();
    const cpbCount = lowDelay ? 1 : b.ue(31) + 1;
    for (const present of [nal, vcl]) {
      if (!present) continue;
      for (let j = 0; j < cpbCount; j++) {
        b.ue();
        b.ue();
        if (subPic) {
          b.ue();
          b.ue();
        }
        b.skip(1);
      }
    }
  }
}

function hevcVps(b: Bits, context: ParameterSetContext): void {
  const id = b.u(4);
  b.skip(8); // base layer flags, max layers
  const maxSubLayersMinus1 = b.u(3);
  if (maxSubLayersMinus1 > 6) fail('it declares more sub-layers than HEVC has');
  b.skip(17);
  profileTierLevel(b, maxSubLayersMinus1);
  subLayerOrdering(b, maxSubLayersMinus1);
  const maxLayerId = b.u(6);
  const layerSets = b.ue(1023);
  b.skip(layerSets * (maxLayerId + 1));
  if (b.flag()) {
    b.skip(64);
    if (b.flag()) b.ue();
    const hrds = b.ue(layerSets + 1);
    for (let i = 0; i < hrds; i++) {
      b.ue(layerSets);
      hevcHrd(b, i === 0 || b.flag(), maxSubLayersMinus1);
    }
  }
  if (b.flag()) fail('it has a multi-layer extension, which scrubline cannot read');
  b.end();
  context.hevcSubLayers.set(id, maxSubLayersMinus1);
}

/** st_ref_pic_set (7.3.7) in an SPS; returns its delta POCs, which a later set may predict from. */
function shortTermRefPicSet(b: Bits, index: number, sets: Array<{ negative: number[]; positive: number[] }>): { negative: number[]; positive: number[] } {
  if (index !== 0 && b.flag()) {
    const ref = sets[index - 1]!;
    const deltaRps = (1 - 2 * b.u(1)) * (b.ue(32767) + 1);
    const refPocs = [...ref.negative, ...ref.positive];
    const used: boolean[] = [];
    for (let j = 0; j <= refPocs.length; j++) used.push(b.flag() || b.flag());
    // 7-61, 7-62: the predicted set's POCs, negatives nearest first, positives likewise.
    const negative: number[] = [];
    const positive: number[] = [];
    for (let j = ref.positive.length - 1; j >= 0; j--) if (ref.positive[j]! + deltaRps < 0 && used[ref.negative.length + j]) negative.push(ref.positive[j]! + deltaRps);
    if (deltaRps < 0 && used[refPocs.length]) negative.push(deltaRps);
    for (let j = 0; j < ref.negative.length; j++) if (ref.negative[j]! + deltaRps < 0 && used[j]) negative.push(ref.negative[j]! + deltaRps);
    for (let j = ref.negative.length - 1; j >= 0; j--) if (ref.negative[j]! + deltaRps > 0 && used[j]) positive.push(ref.negative[j]! + deltaRps);
    if (deltaRps > 0 && used[refPocs.length]) positive.push(deltaRps);
    for (let j = 0; j < ref.positive.length; j++) if (ref.positive[j]! + deltaRps > 0 && used[ref.negative.length + j]) positive.push(ref.positive[j]! + deltaRps);
    if (negative.length + positive.length > 16) fail('a reference picture set is larger than HEVC allows');
    return { negative, positive };
  }
  const negatives = b.ue(16);
  const positives = b.ue(16 - negatives);
  const negative: number[] = [];
  const positive: number[] = [];
  for (let i = 0, poc = 0; i < negatives; i++) {
    poc -= b.ue(32767) + 1;
    b.skip(1);
    negative.push(poc);
  }
  for (let i = 0, poc = 0; i < positives; i++) {
    poc += b.ue(32767) + 1;
    b.skip(1);
    positive.push(poc);
  }
  return { negative, positive };
}

function hevcVui(b: Bits, maxSubLayersMinus1: number): void {
  vuiDisplayFields(b);
  b.skip(3);
  if (b.flag()) for (let i = 0; i < 4; i++) b.ue();
  if (b.flag()) {
    b.skip(64);
    if (b.flag()) b.ue();
    if (b.flag()) hevcHrd(b, true, maxSubLayersMinus1);
  }
  if (b.flag()) {
    b.skip(3);
    for (let i = 0; i < 5; i++) b.ue();
  }
}

function hevcSps(b: Bits, layer: number, context: ParameterSetContext): void {
  const vps = b.u(4);
  const subLayersField = b.u(3);
  const multiLayer = layer !== 0 && subLayersField === 7;
  const maxSubLayersMinus1 = multiLayer ? (context.hevcSubLayers.get(vps) ?? 0) : subLayersField;
  if (maxSubLayersMinus1 > 6) fail('it declares more sub-layers than HEVC has');
  if (!multiLayer) {
    b.skip(1);
    profileTierLevel(b, maxSubLayersMinus1);
  }
  b.ue(15);
  let chroma = 1;
  let lumaDepth = 8;
  let chromaDepth = 8;
  if (multiLayer) {
    if (b.flag()) b.skip(8);
  } else {
    chroma = b.ue(3);
    if (chroma === 3) b.skip(1);
    b.ue();
    b.ue();
    if (b.flag()) for (let i = 0; i < 4; i++) b.ue();
    lumaDepth = b.ue(8) + 8;
    chromaDepth = b.ue(8) + 8;
  }
  const pocLsbBits = b.ue(12) + 4;
  if (!multiLayer) subLayerOrdering(b, maxSubLayersMinus1);
  for (let i = 0; i < 6; i++) b.ue();
  if (b.flag()) {
    const infer = multiLayer && b.flag();
    if (infer) b.skip(6);
    else if (b.flag()) hevcScalingListData(b);
  }
  b.skip(2);
  if (b.flag()) {
    b.skip(8);
    b.ue();
    b.ue();
    b.skip(1);
  }
  const setCount = b.ue(64);
  const sets: Array<{ negative: number[]; positive: number[] }> = [];
  for (let i = 0; i < setCount; i++) sets.push(shortTermRefPicSet(b, i, sets));
  if (b.flag()) {
    const longTerm = b.ue(32);
    b.skip(longTerm * (pocLsbBits + 1));
  }
  b.skip(2);
  if (b.flag()) hevcVui(b, maxSubLayersMinus1);
  if (b.flag()) {
    const range = b.flag();
    const multilayerExt = b.flag();
    const threeD = b.flag();
    const scc = b.flag();
    if (b.u(4) !== 0) fail('it holds extension data');
    if (threeD) fail('it has a 3D extension, which scrubline cannot read');
    if (range) b.skip(9);
    if (multilayerExt) b.skip(1);
    if (scc) {
      b.skip(1);
      if (b.flag()) {
        b.ue(64);
        b.ue(128);
        if (b.flag()) {
          const entries = b.ue(127) + 1;
          b.skip(entries * (lumaDepth + (chroma === 0 ? 0 : 2 * chromaDepth)));
        }
      }
      b.skip(3);
    }
  }
  b.end();
}

function hevcPps(b: Bits): void {
  b.ue(63);
  b.ue(15);
  b.skip(7);
  b.ue(14);
  b.ue(14);
  b.se();
  b.skip(1);
  const transformSkip = b.flag();
  if (b.flag()) b.ue();
  b.se();
  b.se();
  b.skip(4);
  const tiles = b.flag();
  b.skip(1);
  if (tiles) {
    const columns = b.ue(19) + 1;
    const rows = b.ue(21) + 1;
    if (!b.flag()) for (let i = 0; i < columns - 1 + rows - 1; i++) b.ue();
    b.skip(1);
  }
  b.skip(1);
  if (b.flag()) {
    b.skip(1);
    if (!b.flag()) {
      b.se();
      b.se();
    }
  }
  if (b.flag()) hevcScalingListData(b);
  b.skip(1);
  b.ue();
  b.skip(1);
  if (b.flag()) {
    const range = b.flag();
    const multilayer = b.flag();
    const threeD = b.flag();
    const scc = b.flag();
    if (b.u(4) !== 0) fail('it holds extension data');
    if (multilayer || threeD) fail('it has a multi-layer or 3D extension, which scrubline cannot read');
    if (range) {
      if (transformSkip) b.ue();
      b.skip(1);
      if (b.flag()) {
        b.ue();
        const entries = b.ue(5) + 1;
        for (let i = 0; i < entries; i++) {
          b.se();
          b.se();
        }
      }
      b.ue();
      b.ue();
    }
    if (scc) {
      b.skip(1);
      if (b.flag()) {
        b.skip(1);
        b.se();
        b.se();
        b.se();
      }
      if (b.flag()) {
        const entries = b.ue(128);
        if (entries > 0) {
          const mono = b.flag();
          const luma = b.ue(8) + 8;
          const chroma = mono ? 0 : b.ue(8) + 8;
          b.skip(entries * (luma + 2 * chroma));
        }
      }
    }
  }
  b.end();
}

// --- AV1 -----------------------------------------------------------------------------------------

/** uvlc(): leading zeros, a 1, then as many bits (AV1 4.10.3). */
function uvlc(b: Bits): void {
  let zeros = 0;
  while (b.u(1) === 0) if (++zeros > 32) fail('a field is not a valid code');
  if (zeros < 32) b.skip(zeros);
}

/** A sequence header OBU (its header, its size field, then the fields) read to its trailing bits. */
function av1SequenceHeader(obu: Buffer): void {
  const headerBytes = obu[0]! & 0x04 ? 2 : 1;
  let at = headerBytes;
  let size = obu.length - headerBytes;
  if (obu[0]! & 0x02) {
    size = 0;
    for (let i = 0; ; i++) {
      const byte = obu[at++];
      if (byte === undefined || i === 8) fail('its size field does not end');
      size += (byte! & 0x7f) * 2 ** (7 * i);
      if (!(byte! & 0x80)) break;
    }
  }
  if (at + size !== obu.length) fail('bytes follow its fields');
  const b = new Bits(obu, at, false);
  const profile = b.u(3);
  b.skip(1);
  const reduced = b.flag();
  let decoderModel = false;
  let bufferDelayBits = 0;
  if (reduced) b.skip(5);
  else {
    if (b.flag()) {
      b.skip(64);
      if (b.flag()) uvlc(b);
      decoderModel = b.flag();
      if (decoderModel) {
        bufferDelayBits = b.u(5) + 1;
        b.skip(42);
      }
    }
    const displayDelay = b.flag();
    const points = b.u(5) + 1;
    for (let i = 0; i < points; i++) {
      b.skip(12);
      if (b.u(5) > 7) b.skip(1);
      if (decoderModel && b.flag()) b.skip(2 * bufferDelayBits + 1);
      if (displayDelay && b.flag()) b.skip(4);
    }
  }
  const widthBits = b.u(4) + 1;
  const heightBits = b.u(4) + 1;
  b.skip(widthBits + heightBits);
  if (!reduced && b.flag()) b.skip(7);
  b.skip(3);
  if (!reduced) {
    b.skip(4);
    const orderHint = b.flag();
    if (orderHint) b.skip(2);
    const forceScreenContent = b.flag() ? 2 : b.u(1);
    if (forceScreenContent > 0 && !b.flag()) b.skip(1);
    if (orderHint) b.skip(3);
  }
  b.skip(3);
  // color_config (5.5.2)
  const high = b.flag();
  const depth = profile === 2 && high ? (b.flag() ? 12 : 10) : high ? 10 : 8;
  const mono = profile === 1 ? false : b.flag();
  let [primaries, transfer, matrix] = [2, 2, 2];
  if (b.flag()) [primaries, transfer, matrix] = [b.u(8), b.u(8), b.u(8)];
  if (mono) b.skip(1);
  else if (!(primaries === 1 && transfer === 13 && matrix === 0)) {
    b.skip(1);
    let [x, y] = profile === 0 ? [1, 1] : profile === 1 ? [0, 0] : [1, 0];
    if (profile > 1 && depth === 12) {
      x = b.u(1);
      y = x ? b.u(1) : 0;
    }
    if (x && y) b.skip(2);
  }
  if (!mono) b.skip(1);
  b.skip(1); // film_grain_params_present
  b.end();
}
