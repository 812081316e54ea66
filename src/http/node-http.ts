/**
 * node:http, loaded with require rather than imported. An ES import of node:http makes Node build
 * the module's ES namespace, which reads every export, the lazy `WebSocket`, `CloseEvent` and
 * `MessageEvent` among them, and so loads and compiles Node's bundled undici: on Node 26, +2.6 MiB
 * of heap and +16 MiB of RSS in a process that never opens a WebSocket (issue 30: the service's
 * RSS under load). Type-only imports of node:http cost nothing and stay as they are.
 */
import { createRequire } from 'node:module';

export const http: typeof import('node:http') = createRequire(import.meta.url)('node:http');
