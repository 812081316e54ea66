/**
 * scrubline as a library: the Express middleware, the error handler, the app builder, the
 * pipeline and its types.
 */
export { scrubline, type FieldRule, type ScrublineOptions, type ScrublineRequest, type ScrublineUpload } from './middleware.js';
export { errorHandler } from './http/errors.js';
export { buildApp, type AppDeps } from './http/app.js';
export { startServer, type RunningServer } from './http/server.js';
export { loadConfig, ConfigError, type Config } from './config.js';
export { ScrubError, type ErrorCode } from './errors.js';
export { cleanFile, publicReport, type CleanFile, type PipelineDeps } from './pipeline.js';
export type { Fingerprint, ImageFingerprint, VideoFingerprint, StreamFingerprint } from './steps/fingerprint.js';
export type { Forwarder, ForwardResult, UploadFields } from './steps/forward.js';
export { HttpForwarder } from './steps/forward-http.js';
export { StoreSink } from './steps/forward-store.js';
export { LocalStore, type ObjectStore } from './storage/objects.js';
export { Ledger } from './storage/ledger.js';
export { removedCategories, type Removed, type RemovedCategory, type Retention } from './context.js';
export type { Clock } from './steps/tag-expiry.js';
