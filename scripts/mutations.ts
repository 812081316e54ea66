/**
 * `npm run mutations [-- --only <name>]`
 *
 * A test net that catches the removal of any safeguard (issue 31). Each entry below switches one
 * safeguard off in a scratch copy of the project (exact text replacements in one source file) and
 * names the test files that must then fail. The runner applies each in turn, runs those files, and
 * prints whether they caught it; it ends with `N/M safeguards caught` and exits 1 on a miss, on
 * an entry whose text no longer matches its file (STALE: the list must follow the code), or on
 * one whose mutated source does not compile (BROKEN: that proves nothing of the tests). Not run
 * in CI: each entry runs real test files (a minute or so apiece).
 *
 * Add an entry whenever a safeguard is added. A mutation must still type-check (a condition made
 * false with `false &&` narrows its operands to `never` and breaks the build): make it false
 * with a run-time test instead (`&& process.pid < 0`).
 */
import { spawn } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { scriptArgs } from './script-args.js';

interface Mutation {
  name: string;
  /** Source file, from the project root. */
  file: string;
  /** Each `find` must occur exactly once in the file; it is replaced by `replace`. */
  edits: Array<[find: string, replace: string]>;
  /** Test files that must fail once the safeguard is off. */
  tests: string[];
}

const mutations: Mutation[] = [
  // --- the verifier -----------------------------------------------------------------------------
  {
    name: 'value scan: input values no longer searched for in an image',
    file: 'src/steps/verify.ts',
    edits: [['const found = await matchedPatterns([output], patterns, excused);', 'const found = await matchedPatterns([output], patterns.slice(0, forbidden.length), excused);']],
    tests: ['test/real-world.test.ts'],
  },
  {
    name: 'image structure allowlist: problems of the output walk dropped',
    file: 'src/verify/structure-image.ts',
    edits: [['  else checkHeifStructure(out, report.problems, report.keptRanges);\n  return report;', '  else checkHeifStructure(out, report.problems, report.keptRanges);\n  report.problems.length = 0;\n  return report;']],
    tests: ['test/canonical-image.test.ts', 'test/strip.test.ts'],
  },
  {
    name: 'value scan excuse: coded data excused without proof that it is the input\'s',
    file: 'src/steps/verify.ts',
    edits: [['const same = pieces.every((s, i) => digest(output.subarray(s.start, s.end)) === input[i]);', 'const same = pieces.length > 0;']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'value scan excuse: a value inside the output\'s coded data excused without proving that data is the input\'s',
    file: 'src/steps/verify.ts',
    edits: [['if (inCoded.size > 0) {', 'if (process.pid < 0 && inCoded.size > 0) {']],
    tests: ['test/real-world.test.ts'],
  },
  {
    name: 'JPEG walk: several AC codes taken in one step even past the block\'s last coefficient',
    file: 'src/formats/jpeg-scan.ts',
    edits: [
      ['if (to > 64) break;', 'if (((run >> 5) & 127) === 127) break;'],
      ['if (k + ((run >> 5) & 127) <= 64) {', 'if (((run >> 5) & 127) !== 127) {'],
    ],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'structure thread: the problems it found are not answered',
    file: 'src/verify/structure-worker.ts',
    edits: [['answer = { id, report: checkImageStructure(format, out, { dc }) };', 'answer = { id, report: { ...checkImageStructure(format, out, { dc }), problems: [] } };']],
    tests: ['test/structure-thread.test.ts', 'test/canonical-image.test.ts'],
  },
  {
    name: 'structure thread: a check that throws is answered as a clean report',
    file: 'src/verify/structure-worker.ts',
    edits: [[": { id, failed: { code: (err as NodeJS.ErrnoException).code, message: err instanceof Error ? err.message : String(err) } };", ": { id, report: { problems: [], keptRanges: [], structures: [], forbidden: [] } };"]],
    tests: ['test/structure-thread.test.ts'],
  },
  {
    name: 'store sink: an image\'s sealed copy stored before its verdict, not staged in its work dir',
    file: 'src/steps/forward-store.ts',
    edits: [[".then((sealed) => pipeline(sealed.body, createWriteStream(staged, { mode: 0o600, flags: 'wx', flush: true })))", ".then((sealed) => this.store.put(name, sealed.body, sealed.length, { retention: 'standard' }))"]],
    tests: ['test/http.test.ts'],
  },
  {
    name: 'store sink: a staged copy on another file system fails the upload instead of being sealed afresh',
    file: 'src/steps/forward-store.ts',
    edits: [["  if (err.code === 'EXDEV') return false;\n", '']],
    tests: ['test/storage.test.ts'],
  },
  {
    name: 'value scan budget (THREATS 48)',
    file: 'src/verify/scan.ts',
    edits: [['if (counter.work > scanWorkPerByte * offset + scanWorkAllowance) throw new ScanBudgetExceeded();', '']],
    tests: ['test/threats-redteam.test.ts'],
  },
  {
    name: 'JPEG: a table no scan uses is allowed',
    file: 'src/verify/structure-image.ts',
    edits: [["if (unused.size + unusedTables > 0) report.problems.push('jpeg: a table no scan uses');", '']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'JPEG: a scan with data past its last MCU passes the verifier',
    file: 'src/verify/structure-image.ts',
    edits: [['        report.problems.push(scanTailProblem);\n', '']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'JPEG: the stripper copies scans whole even when asked to walk and cut them',
    file: 'src/steps/strip-jpeg.ts',
    edits: [['if (!walkAll && !walked(item)) return [input.subarray(item.from, item.rawEnd)];', 'if (process.pid > 0) return [input.subarray(item.from, item.rawEnd)];']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'JPEG: no work budget for the scans of a frame',
    file: 'src/steps/strip-jpeg.ts',
    edits: [['scanBudget!.spend(scanCost(frame!.frame, header));', '']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'JPEG: a lossless frame goes on to the verifier instead of being refused as a structure no decoder here reads',
    file: 'src/steps/strip-jpeg.ts',
    edits: [["if (header.coding === 'lossless') throw", "if (process.pid < 0 && header.coding === 'lossless') throw"]],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'JPEG: a 12-bit frame goes on to the verifier instead of being refused as a structure no decoder here reads',
    file: 'src/steps/strip-jpeg.ts',
    edits: [['if (header.precision !== 8) throw', 'if (process.pid < 0 && header.precision !== 8) throw']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'JPEG: without a preview, the decode is skipped even where the walk proved nothing',
    file: 'src/verify/structure-image.ts',
    edits: [['report.codedDataProven = entropy && frameProven && scans > 0 && report.problems.length === 0;', 'report.codedDataProven = true;']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'ICC: a profile scrubline did not write passes the verifier',
    file: 'src/verify/structure-image.ts',
    edits: [["if (profile === undefined || !isCanonicalIcc(profile)) report.problems.push('icc: profile not written from its fields');", '']],
    tests: ['test/canonical-icc.test.ts'],
  },
  {
    name: 'ICC: text tags kept in the rebuilt profile',
    file: 'src/formats/icc.ts',
    edits: [['if (!colourTags.has(signature)) continue;', 'if (!colourTags.has(signature) && process.pid < 0) continue;']],
    tests: ['test/canonical-icc.test.ts'],
  },
  {
    name: 'ICC: header maker, model and date copied',
    file: 'src/formats/icc.ts',
    edits: [['  const header = Buffer.alloc(128);\n', '  const header = Buffer.from(profile.subarray(0, 128));\n']],
    tests: ['test/canonical-icc.test.ts'],
  },
  {
    name: 'image: a lost colour profile passes the verifier',
    file: 'src/steps/verify.ts',
    edits: [["if (before.hasIcc && !after.hasIcc) problems.push('image: colour profile lost');", '']],
    tests: ['test/safeguards.test.ts'],
  },
  {
    name: 'image: a changed orientation of the same size passes the verifier',
    file: 'src/steps/verify.ts',
    edits: [["else if (before.orientation !== after.orientation) problems.push('image: orientation changed');", '']],
    tests: ['test/safeguards.test.ts'],
  },
  {
    name: 'GIF: image data past its LZW end code passes the verifier',
    file: 'src/verify/structure-image.ts',
    edits: [["report.problems.push('gif: image data runs past its end code');", '{}']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'GIF: the stripper copies image sub-blocks past the LZW end code',
    file: 'src/steps/strip-gif.ts',
    edits: [['parts.push(input.subarray(start, dataAt), data.blocks);', 'parts.push(input.subarray(start, pos));']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'PNG: image data past its zlib stream passes the verifier',
    file: 'src/verify/structure-image.ts',
    edits: [["!== stream.length) this.report.problems.push('png: image data runs past its zlib stream');", "!== stream.length && process.pid < 0) this.report.problems.push('png: image data runs past its zlib stream');"]],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'PNG: the stripper copies image data past its zlib stream',
    file: 'src/steps/strip-png.ts',
    edits: [['if (at + piece.length <= end) out.push(chunk);', 'if (at + piece.length <= end || process.pid > 0) out.push(chunk);']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'PNG: rows beyond the picture pass (the inflate is unbounded)',
    file: 'src/formats/png-data.ts',
    edits: [['maxOutputLength: Math.max(1, expected + 1)', 'maxOutputLength: 2 ** 30'], ["if (result.buffer.length !== expected) throw", "if (result.buffer.length < expected) throw"]],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'video: a record\'s parameter sets are kept unread',
    file: 'src/formats/codec-config.ts',
    edits: [['      checkParameterSet(codec, nal, context);', '      if (process.pid < 0) checkParameterSet(codec, nal, context);']],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'video: in-band parameter sets are not read by the proof',
    file: 'src/verify/picture-stream.ts',
    edits: [['function parameterSetProblem(codec: PictureCodec, unit: Buffer, context: ParameterSetContext): string | undefined {', 'function parameterSetProblem(codec: PictureCodec, unit: Buffer, context: ParameterSetContext): string | undefined {\n  if (process.pid > 0) return undefined;']],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'video: a parameter set may hold bytes after its stop bit',
    file: 'src/formats/parameter-sets.ts',
    edits: [["for (let i = this.pos >> 3; i < this.rbsp.length; i++) if (this.rbsp[i] !== 0) fail('bytes follow its fields');", '']],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'HEIF: coded items are copied with their SEI units',
    file: 'src/steps/strip-heif.ts',
    edits: [['      ? [codedItem(input, codec, Buffer.concat(pieces), propertiesOf(item.id), removed)]', '      ? pieces']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'HEIF: decoder configuration properties are copied as they came',
    file: 'src/steps/strip-heif.ts',
    edits: [['    if (configured) return box(prop.type, canonicalRecord(', '    if (configured && process.pid < 0) return box(prop.type, canonicalRecord(']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'HEIF: the verifier does not walk coded items\' units',
    file: 'src/verify/heif.ts',
    edits: [['    if (!codec || !location) continue;', '    if (!codec || !location || process.pid > 0) continue;']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'HEIF: the verifier does not check decoder configuration properties',
    file: 'src/verify/heif.ts',
    edits: [['    if (configured) problems.push(...configProblems(', '    if (configured && process.pid < 0) problems.push(...configProblems(']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'MPEG-2: user data left in the packets by the remux',
    file: 'src/steps/strip-video.ts',
    edits: [["if (video?.codec_name === 'mpeg2video') return 'filter_units=remove_types=178';", '']],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'MPEG-4: headers repeated in the packets are kept, with their user data',
    file: 'src/steps/strip-video.ts',
    edits: [["if (video?.codec_name === 'mpeg4' && (video.extradata_size ?? 0) > 0) return 'remove_extra=freq=all';", '']],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'MPEG-4: the esds is copied as it came',
    file: 'src/steps/strip-video.ts',
    edits: [["if (codec || mpegHeaderCodecs.has(video?.codec_name ?? ''))", 'if (codec)']],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'MPEG-1/2/4: the verifier does not look for user data',
    file: 'src/steps/verify.ts',
    edits: [['if (video && mpegHeaderCodecs.has(codec ??', "if (video && process.pid < 0 && mpegHeaderCodecs.has(codec ??"]],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'AV1: a sequence header may hold bytes after its fields',
    file: 'src/formats/parameter-sets.ts',
    edits: [['if (((nal[0] ?? 0) >> 3) % 16 === 1) av1SequenceHeader(nal);', '']],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'config: a misspelt SCRUBLINE_* variable is ignored',
    file: 'src/config.ts',
    edits: [['  problems.push(...unknownVariables(env));', '']],
    tests: ['test/operations.test.ts'],
  },
  {
    name: 'sweep: --at purges without --dry-run',
    file: 'src/cli/cli.ts',
    edits: [["if (values.at !== undefined && values['dry-run'] !== true) {", 'if (process.pid < 0) {']],
    tests: ['test/operations.test.ts'],
  },
  {
    name: 'shutdown: /readyz stays ready while draining',
    file: 'src/http/app.ts',
    edits: [["    if (lifecycle.draining) return void res.status(503).json({ status: 'shutting down' });", '']],
    tests: ['test/operations.test.ts'],
  },
  {
    name: 'shutdown: a stopping replica still takes new requests',
    file: 'src/http/app.ts',
    edits: [['    if (!lifecycle.refusing) return next();', '    return next();']],
    tests: ['test/operations.test.ts'],
  },
  {
    name: 'shutdown: requests in flight are never cut off',
    file: 'src/http/server.ts',
    edits: [['      if (!finished) server.closeAllConnections();', '']],
    tests: ['test/operations.test.ts'],
  },
  {
    name: 'health: a bucket outage is an opaque 500',
    file: 'src/storage/bucket.ts',
    edits: [['throw isBucketOutage(err) ? storageUnavailable(err) : err;', 'throw err;']],
    tests: ['test/bucket.test.ts'],
  },
  {
    name: 'health: /readyz does not look at the bucket',
    file: 'src/http/app.ts',
    edits: [['const bucket = deps.stores.bucket?.ping?.();', 'const bucket = process.pid < 0 ? deps.stores.bucket?.ping?.() : undefined;']],
    tests: ['test/bucket.test.ts'],
  },
  {
    name: 'metrics: the last good sweep is never recorded',
    file: 'src/http/server.ts',
    edits: [['      metrics.sweepSuccess.set(Date.now() / 1000);', '']],
    tests: ['test/operations.test.ts'],
  },
  {
    name: 'TLS: a renewed certificate is never put in use',
    file: 'src/http/server.ts',
    edits: [['      server.setSecureContext(pair);', '']],
    tests: ['test/tls.test.ts'],
  },
  {
    name: 'Dockerfile: the schemas are not copied into the image',
    file: 'Dockerfile',
    edits: [['COPY schemas ./schemas\n', '']],
    tests: ['test/dockerfile.test.ts'],
  },
  {
    name: 'Kubernetes: a grace period shorter than the shutdown\'s drain',
    file: 'deploy/kubernetes/deployment.yaml',
    edits: [['terminationGracePeriodSeconds: 35', 'terminationGracePeriodSeconds: 20']],
    tests: ['test/kubernetes.test.ts'],
  },
  {
    name: 'shutdown: the drain limit\'s timer holds the process after the requests are done',
    file: 'src/http/server.ts',
    edits: [['sleep(config.shutdownTimeoutMs, false, { ref: false }),', 'sleep(config.shutdownTimeoutMs, false),']],
    tests: ['test/operations.test.ts'],
  },
  {
    name: 'HEIF: a JPEG item is copied with its own EXIF',
    file: 'src/steps/strip-heif.ts',
    edits: [["      : item.type === 'jpeg'", "      : item.type === 'jpeg' && process.pid < 0"]],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'WebP: a frame may hold any chunk',
    file: 'src/verify/structure-image.ts',
    edits: [["if (!['ALPH', 'VP8 ', 'VP8L'].includes(inner)) report.problems.push('webp: a frame holds a chunk other than image data');", '']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'video: a unit of a type not kept passes the picture-stream proof',
    file: 'src/verify/picture-stream.ts',
    edits: [['      if (!kept.has(unit.type)) {\n        problems.push(', '      if (!kept.has(unit.type) && unit.type < 0) {\n        problems.push(']],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'video: of a range of samples larger than a read block, only the first block is proven',
    file: 'src/verify/picture-stream.ts',
    edits: [['for (let at = first.start; at < first.end; at += blockBytes) yield', 'for (let at = first.start; at < first.end; at += blockBytes) if (at === first.start || process.pid < 0) yield']],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'video: a configuration record with SEI passes',
    file: 'src/verify/picture-stream.ts',
    edits: [['if (Object.keys(rebuilt.removed).length > 0) return [', 'if (false) return [']],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'MJPEG: frames with APPn/COM pass (THREATS 45)',
    file: 'src/verify/picture-stream.ts',
    edits: [["if ((byte >= 0xe1 && byte <= 0xef) || byte === 0xfe) return void (this.problem = `holds an ${byte === 0xfe ? 'COM' : `APP${byte - 0xe0}`} segment`);", '']],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'JPEG: a coding segment longer than its fields is allowed',
    file: 'src/verify/structure-image.ts',
    edits: [["if (coding && codingExtent(marker, payload) !== payload.length) report.problems.push('jpeg: a coding segment holds more than its fields');", '']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'PNG: an iCCP under any keyword is allowed',
    file: 'src/verify/structure-image.ts',
    edits: [["if (type === 'iCCP' && out.toString('latin1', pos + 8, pos + 21) !== 'ICC Profile\\0\\0') report.problems.push('png: iCCP keyword is not the fixed one');", '']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'GIF: a graphic control extension in any form is allowed',
    file: 'src/verify/structure-image.ts',
    edits: [["if (label === 0xf9 && !(out[pos + 2] === 4 && out[pos + 7] === 0)) report.problems.push('gif: graphic control extension not in its fixed form');", '']],
    tests: ['test/canonical-image.test.ts'],
  },
  // --- the strippers ------------------------------------------------------------------------------
  {
    name: 'video: SEI and other non-picture units no longer filtered out',
    file: 'src/steps/strip-video.ts',
    edits: [
      ["return codec && container === 'matroska' ? keepUnitsFilter(codec) : undefined;", 'return undefined;'],
      ['if (codec && filter === undefined) {', 'if (codec && filter === undefined && process.pid < 0) {'],
    ],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'video: the decoder configuration record copied as it came',
    file: 'src/steps/strip-video.ts',
    edits: [["if (codec || mpegHeaderCodecs.has(video?.codec_name ?? '')) for (const [category, n] of Object.entries(await rewriteCodecConfig(output, container)))", "if (process.pid < 0) for (const [category, n] of Object.entries(await rewriteCodecConfig(output, container)))"]],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'JPEG: unused tables kept',
    file: 'src/steps/strip-jpeg.ts',
    edits: [['const used = item.tables.filter((table) => table.used);', 'const used = item.tables;']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'PNG: fixed-layout chunks copied at any length',
    file: 'src/steps/strip-png.ts',
    edits: [['parts.push(pngChunk(type, data.subarray(0, size)));', 'parts.push(chunk);']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'GIF: graphic control extensions copied with their sub-blocks',
    file: 'src/steps/strip-gif.ts',
    edits: [['parts.push(graphicControl(fields));', 'parts.push(input.subarray(start, end));']],
    tests: ['test/canonical-image.test.ts'],
  },
  {
    name: 'HEIF: a grid\'s decode not counted against the pixel limit (THREATS 49)',
    file: 'src/steps/strip-heif.ts',
    edits: [['if (decodedPixels > limits.maxInputPixels) {', 'if (false) {']],
    tests: ['test/threats-redteam.test.ts'],
  },
  // --- storage, retention, deletion ---------------------------------------------------------------
  {
    name: 'envelope: data keys wrapped under an all-zero key, not the storage key',
    file: 'src/storage/envelope.ts',
    edits: [
      ["const wrap = createCipheriv('aes-256-gcm', ring.current.key, wrapNonce);", "const wrap = createCipheriv('aes-256-gcm', Buffer.alloc(32), wrapNonce);"],
      ["const unwrapper = createDecipheriv('aes-256-gcm', key.key, wrapNonce);", "const unwrapper = createDecipheriv('aes-256-gcm', Buffer.alloc(32), wrapNonce);"],
    ],
    tests: ['test/safeguards.test.ts'],
  },
  {
    name: 'envelope: an object not bound to its name',
    file: 'src/storage/envelope.ts',
    edits: [["const wrapContext = (id: Buffer, name: string): Buffer => Buffer.concat([magic, id, Buffer.from(name, 'utf8')]);", 'const wrapContext = (id: Buffer, _name: string): Buffer => Buffer.concat([magic, id]);']],
    tests: ['test/storage.test.ts'],
  },
  {
    name: 'orphan sweep: the ledger\'s live objects no longer spared',
    file: 'src/retention/sweeper.ts',
    edits: [['if (live.has(name) || at.getTime() - modifiedMs < graceMs) continue;', 'if (at.getTime() - modifiedMs < graceMs) continue;']],
    tests: ['test/safeguards.test.ts'],
  },
  {
    name: 'orphan sweep: live objects not spared, seen by the CLI sweep on the test clock',
    file: 'src/retention/sweeper.ts',
    edits: [['if (live.has(name) || at.getTime() - modifiedMs < graceMs) continue;', 'if (at.getTime() - modifiedMs < graceMs) continue;']],
    tests: ['test/retention.test.ts'],
  },
  {
    name: 'deleted job mid-forward: stored objects kept when the ledger refuses the upload',
    file: 'src/http/app.ts',
    edits: [['await Promise.allSettled(records.map((r) => removeArtefactObjects(deps.stores, r)));', '']],
    tests: ['test/safeguards.test.ts'],
  },
  {
    name: 'deleted job: no check before forwarding (THREATS 41)',
    file: 'src/http/app.ts',
    edits: [['if (upload.jobId !== undefined && (await deps.ledger.jobDeletedAt(upload.jobId)) !== undefined) throw jobDeleted();', '']],
    tests: ['test/safeguards.test.ts'],
  },
  {
    name: 'job ids: "." and ".." accepted (THREATS 52)',
    file: 'src/ids.ts',
    edits: [["jobIdCharacters.test(value) && value !== '.' && value !== '..'", 'jobIdCharacters.test(value)']],
    tests: ['test/threats-redteam.test.ts'],
  },
  {
    name: 'a PostgreSQL outage answers 500, not 503 ledger_unavailable',
    file: 'src/storage/ledger.ts',
    edits: [['    if (!isOutage(err)) return err;\n    onOutage?.(operation);\n    return ledgerUnavailable(err);', '    return err;']],
    tests: ['test/process-faults.test.ts'],
  },
  // --- configuration and process ------------------------------------------------------------------
  {
    name: 'credentials in the upstream URL accepted (THREATS 51)',
    file: 'src/config.ts',
    edits: [["else if (upstreamUrl.username !== '' || upstreamUrl.password !== '') {", 'else if (false) {']],
    tests: ['test/threats-redteam.test.ts'],
  },
  {
    name: 'tools outlive their service (no parent-death signal)',
    file: 'src/tools/ffmpeg.ts',
    edits: [['if (tools.setpriv) command =', 'if (tools.setpriv && process.pid < 0) command =']],
    tests: ['test/process-faults.test.ts'],
  },
  {
    name: 'the ledger\'s pool errors unhandled (a PostgreSQL restart ends the process)',
    file: 'src/storage/ledger.ts',
    edits: [
      ["  pool.on('error', () => undefined);", ''],
      ["        client.on('error', () => undefined);", ''],
    ],
    tests: ['test/process-faults.test.ts'],
  },
  {
    name: 'no data-dir lock (a second process empties the live temp dir)',
    file: 'src/http/server.ts',
    edits: [['const lock = lockDataDir(config.dataDir);', 'const lock = { release: (): void => undefined };']],
    tests: ['test/process-faults.test.ts'],
  },
  {
    name: 'URL credentials logged as they are (THREATS 51)',
    file: 'src/log.ts',
    edits: [
      ['formatters: { log: (fields) => scrubbed(fields) as Record<string, unknown> },', ''],
      ["method.apply(this, args.map((arg) => (typeof arg === 'string' ? withoutUserinfo(arg) : arg)) as Parameters<typeof method>);", 'method.apply(this, args);'],
    ],
    tests: ['test/threats-redteam.test.ts'],
  },
  {
    name: '/metrics answered on the API listener even with a listener of its own (THREATS 53)',
    file: 'src/http/app.ts',
    edits: [["if (deps.serveMetrics !== false) app.get('/metrics', metrics.handler());", "app.get('/metrics', metrics.handler());"]],
    tests: ['test/threats-redteam.test.ts'],
  },
  {
    name: 'files the service writes readable by others (no umask 077)',
    file: 'src/http/server.ts',
    edits: [['  process.umask(0o077);\n', '']],
    tests: ['test/threats-redteam.test.ts'],
  },
  {
    name: 'decoder outputs written beside the file, not in a directory removed whole (THREATS 50)',
    file: 'src/http/thumbnails.ts',
    edits: [['    await rm(dir, { recursive: true, force: true });\n', '']],
    tests: ['test/threats-redteam.test.ts'],
  },
  {
    name: 'decoder children without an address-space limit (THREATS 49)',
    file: 'src/tools/ffmpeg.ts',
    edits: [['if (memoryLimitBytes !== undefined && tools.prlimit) command =', 'if (memoryLimitBytes !== undefined && tools.prlimit && process.pid < 0) command =']],
    tests: ['test/threats-redteam.test.ts'],
  },
  {
    name: 'HEIC previews decoded whole at any size',
    file: 'src/http/thumbnails.ts',
    edits: [['    if (!(pixels <= maxHeifPreviewPixels)) return undefined;\n', '']],
    tests: ['test/threats-redteam.test.ts'],
  },
  // --- resumable uploads, temp space and multipart writes (issue 29) ------------------------------
  {
    name: 'resumable: partial pieces stored as plaintext',
    file: 'src/storage/partials.ts',
    edits: [
      ['const length = sealInto(storage, name, bytes, out);', 'const length = bytes.copy(out);'],
      ['for await (const segment of segmentsOf(storage, piece.name, await store.get(piece.name))) {', 'for await (const segment of (await store.get(piece.name)) as AsyncIterable<Buffer>) {'],
    ],
    tests: ['test/resumable.test.ts'],
  },
  {
    name: 'resumable: the pieces kept after the finishing request',
    file: 'src/http/resumable.ts',
    edits: [
      ['        await deps.partials.remove(partial.id);\n', ''],
      ['        await deps.partials.remove(partial.id).catch(() => undefined);\n', ''],
    ],
    tests: ['test/resumable.test.ts'],
  },
  {
    name: 'resumable: a deleted job keeps its uploads in progress',
    file: 'src/http/app.ts',
    edits: [['const partialUploads = await removePartials(deps.ledger, deps.stores, await deps.ledger.partialIds({ jobId }));', 'const partialUploads = 0;']],
    tests: ['test/resumable.test.ts'],
  },
  {
    name: "resumable: a deleted job's new upload opened (the check under the job lock)",
    file: 'src/storage/ledger.ts',
    edits: [["        if ((await this.jobDeletedAt(upload.jobId, trx)) !== undefined) throw jobDeleted();\n      }\n      await trx\n        .insertInto('partial_uploads')", "      }\n      await trx\n        .insertInto('partial_uploads')"]],
    tests: ['test/resumable.test.ts'],
  },
  {
    name: 'resumable: expired uploads left by the sweeper',
    file: 'src/retention/sweeper.ts',
    edits: [['if (!dryRun) await removePartials(ledger, stores, expiredPartials);', 'if (!dryRun && process.pid < 0) await removePartials(ledger, stores, expiredPartials);']],
    tests: ['test/resumable.test.ts'],
  },
  {
    name: 'resumable: a piece recorded at any offset (two replicas appending at once)',
    file: 'src/storage/ledger.ts',
    edits: [[".where('received', '=', piece.start)\n", '']],
    tests: ['test/resumable.test.ts'],
  },
  {
    name: 'resumable: no limit on open uploads or declared bytes',
    file: 'src/http/resumable.ts',
    edits: [['if (totals.open >= deps.maxOpen || totals.bytes + size > deps.maxBytes) {', 'if ((totals.open >= deps.maxOpen || totals.bytes + size > deps.maxBytes) && process.pid < 0) {']],
    tests: ['test/resumable.test.ts'],
  },
  {
    name: 'temp space: uploads accepted whatever the free space',
    file: 'src/http/temp-space.ts',
    edits: [['if (free - this.reserved - this.headroomBytes < bytes) {', 'if (free - this.reserved - this.headroomBytes < bytes && process.pid < 0) {']],
    tests: ['test/resumable.test.ts', 'test/threats.test.ts'],
  },
  {
    name: 'multipart: a failed bucket upload left with its parts',
    file: 'src/storage/bucket.ts',
    edits: [['partSize: this.partBytes, queueSize: 2, leavePartsOnError: false', 'partSize: this.partBytes, queueSize: 2, leavePartsOnError: true']],
    tests: ['test/bucket.test.ts'],
  },
  // --- MP4 units dropped in the written file (issue 26's speed) ------------------------------------
  {
    name: 'in-place unit filter: the holes keep the dropped units\' bytes',
    file: 'src/steps/strip-video-units.ts',
    edits: [['        bytes.fill(0, to);\n', '']],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'verifier: an MP4\'s media-data bytes that no sample owns are not checked',
    file: 'src/steps/verify.ts',
    edits: [["checkVideoStructure(container, file.cleanPath).then(async (found) => (container === 'isobmff' ? [...found, ...(await unownedBytesProblems(file.cleanPath))] : found)),", 'checkVideoStructure(container, file.cleanPath),']],
    tests: ['test/canonical-video.test.ts'],
  },
  {
    name: 'the CLI\'s compile cache used from a folder others can write to',
    file: 'bin/scrubline.js',
    edits: [['return found.isDirectory() && ours && (found.mode & 0o022) === 0 ? dir : undefined;', 'return found.isDirectory() && ours ? dir : undefined;']],
    tests: ['test/operations.test.ts'],
  },
  // --- memory the service gives back (issue 30) -----------------------------------------------------
  {
    name: 'an idle structure thread is kept for good',
    file: 'src/verify/structure-thread.ts',
    edits: [['    if (thread.jobs.size > 0) return;', '    if (thread.jobs.size > 0 || process.pid > 0) return;']],
    tests: ['test/structure-thread.test.ts'],
  },
  {
    name: 'an idle hash thread is kept for good',
    file: 'src/hash-thread.ts',
    edits: [['    if (pending.size > 0 || worker !== started) return;', '    if (pending.size > 0 || worker !== started || process.pid > 0) return;']],
    tests: ['test/units.test.ts'],
  },
  {
    name: "node:http imported as an ES module (loads Node's bundled undici)",
    file: 'src/http/node-http.ts',
    edits: [["import { createRequire } from 'node:module';", "import { createRequire } from 'node:module';\nimport 'node:http';"]],
    tests: ['test/units.test.ts'],
  },
  {
    name: '@tus/server loaded with the service, not with the first resumable request',
    file: 'src/http/resumable.ts',
    edits: [["import type { Server as TusServer } from '@tus/server';", "import '@tus/server';\nimport type { Server as TusServer } from '@tus/server';"]],
    tests: ['test/units.test.ts'],
  },
  {
    name: 'forwarding loads the undici package again',
    file: 'src/steps/forward-http.ts',
    edits: [["import { randomBytes } from 'node:crypto';", "import 'undici';\nimport { randomBytes } from 'node:crypto';"]],
    tests: ['test/units.test.ts'],
  },
  {
    name: 'a sealed object cut silently to a buffer too short for it',
    file: 'src/storage/envelope.ts',
    edits: [["  if (out.length < sealedBytes(plaintext.length)) throw new RangeError('sealInto: the buffer is shorter than the sealed object');\n", '']],
    tests: ['test/storage.test.ts'],
  },
  {
    name: 'the forwarder refills its buffer before the request has taken the last write',
    file: 'src/steps/forward-http.ts',
    edits: [['await written(request, buffer.subarray(0, bytesRead));', 'void written(request, buffer.subarray(0, bytesRead)).catch(() => undefined);']],
    tests: ['test/http.test.ts'],
  },
  {
    name: 'a resumable upload\'s stored pieces left to V8\'s young-generation schedule',
    file: 'src/storage/partials.ts',
    edits: [['      heldBytes = 0;\n      // The piece\'s request chunks and cipher output are dead, and young (see assemble).\n      collectYoung();', '      heldBytes = 0;']],
    tests: ['test/resumable.test.ts'],
  },
  {
    name: 'a resumable upload\'s assembled pieces left to V8\'s young-generation schedule',
    file: 'src/storage/partials.ts',
    edits: [["        collectYoung();\n      }\n      await out.writeFile", '      }\n      await out.writeFile']],
    tests: ['test/resumable.test.ts'],
  },
  {
    name: 'what a resumable upload\'s PATCHes left kept through its assembly and pipeline',
    file: 'src/http/resumable.ts',
    edits: [['    collectAll();\n    try {', '    try {']],
    tests: ['test/resumable.test.ts'],
  },
  {
    name: 'image reads into memory the structure thread can only be handed as a copy',
    file: 'src/buffers.ts',
    edits: [['const shared = (bytes: number): Buffer => Buffer.from(new SharedArrayBuffer(bytes));', 'const shared = (bytes: number): Buffer => Buffer.alloc(bytes);']],
    tests: ['test/structure-thread.test.ts'],
  },
  {
    name: 'an image buffer given back to the pool keeps the upload\'s bytes for the next one',
    file: 'src/buffers.ts',
    edits: [['  zero(backing, used);', '  void used;']],
    tests: ['test/units.test.ts'],
  },
];

const { values } = scriptArgs(
  `usage: npm run mutations -- [--only <text>] [--check]
  Switches off each listed safeguard in a scratch copy and checks that its tests then fail.
  --only: run the entries whose name contains this text.
  --check: only say which entries' text no longer occurs exactly once (STALE), in seconds.`,
  { only: { type: 'string' }, check: { type: 'boolean' } },
);

const root = path.resolve(import.meta.dirname, '..');

function run(command: string, args: string[], cwd: string, timeoutMs: number): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd, env: { ...process.env, SCRUBLINE_TEST_ABORT_ROUNDS: '1' }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => process.kill(-child.pid!, 'SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? 1, output });
    });
  });
}

async function main(): Promise<number> {
  const chosen = mutations.filter((m) => values.only === undefined || m.name.includes(values.only));
  if (values.check) {
    let stale = 0;
    for (const mutation of chosen) {
      const text = await readFile(path.join(root, mutation.file), 'utf8');
      if (mutation.edits.some(([find]) => text.split(find).length !== 2)) {
        stale++;
        process.stdout.write(`STALE   ${mutation.name} (${mutation.file})\n`);
      }
    }
    process.stdout.write(`${chosen.length - stale}/${chosen.length} entries apply\n`);
    return stale > 0 ? 1 : 0;
  }
  const scratch = await mkdtemp(path.join(tmpdir(), 'scrubline-mutations-'));
  try {
    for (const part of ['src', 'test', 'fixtures', 'schemas', 'bin', 'scripts', 'package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'Dockerfile', 'docs', 'deploy']) {
      await cp(path.join(root, part), path.join(scratch, part), { recursive: true });
    }
    await symlink(path.join(root, 'node_modules'), path.join(scratch, 'node_modules'), 'dir');
    const results: Array<{ name: string; verdict: 'caught' | 'MISSED' | 'STALE' | 'BROKEN' }> = [];
    for (const mutation of chosen) {
      const file = path.join(scratch, mutation.file);
      const original = await readFile(file, 'utf8');
      let text = original;
      const stale = mutation.edits.some(([find]) => text.split(find).length !== 2);
      if (stale) {
        results.push({ name: mutation.name, verdict: 'STALE' });
        process.stdout.write(`STALE   ${mutation.name} (its text no longer occurs exactly once in ${mutation.file})\n`);
        continue;
      }
      for (const [find, replace] of mutation.edits) text = text.replace(find, () => replace);
      await writeFile(file, text);
      try {
        // The CLI and the service's process run dist/: built from the mutated source.
        // A mutation that does not compile proves nothing about the tests: the entry is fixed instead.
        const build = await run(process.execPath, [path.join(scratch, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], scratch, 300_000);
        const verdict = build.code !== 0 ? 'BROKEN' : (await run(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=2', '--test-timeout=300000', ...mutation.tests], scratch, 900_000)).code !== 0 ? 'caught' : 'MISSED';
        results.push({ name: mutation.name, verdict });
        process.stdout.write(`${verdict.padEnd(7)} ${mutation.name}  [${mutation.tests.join(' ')}]${verdict === 'BROKEN' ? ' (the mutated source does not compile)' : ''}\n`);
      } finally {
        await writeFile(file, original);
      }
    }
    const caught = results.filter((r) => r.verdict === 'caught').length;
    process.stdout.write(`\n| safeguard switched off | verdict |\n|---|---|\n${results.map((r) => `| ${r.name} | ${r.verdict} |`).join('\n')}\n\n${caught}/${results.length} safeguards caught\n`);
    return caught === results.length ? 0 : 1;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

process.exitCode = await main();
