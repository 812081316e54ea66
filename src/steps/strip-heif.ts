/**
 * HEIC/HEIF/AVIF need ISOBMFF item surgery (removing Exif/XMP items and thumbnails and
 * rewriting iinf/iloc/iref/ipma). Until that rebuilder exists they are refused, never passed
 * through: sharp's prebuilt libvips cannot even decode HEVC HEIC.
 */
import { ScrubError } from '../errors.js';
import type { ImageStripResult } from './strip-image.js';

export function stripHeif(): ImageStripResult {
  throw new ScrubError(
    'unsupported_type',
    'HEIC/HEIF/AVIF images are not supported yet: scrubline cannot yet remove their metadata without re-encoding. Convert to JPEG or PNG and retry.',
  );
}
