/**
 * node:http, loaded with require rather than imported. An ES import of node:http makes Node build
 * the module's ES namespace, which reads every export, the lazy `WebSocket`, `CloseEvent` and
 * `MessageEvent` among them, and so loads and compiles Node's bundled undici: on Node 26, +2.6 MiB
 * of heap and +16 MiB of RSS in a process that never opens a WebSocket (issue 30: the service's
 * RSS under load). node:https is loaded the same way, beside it. Type-only imports of node:http
 * cost nothing and stay as they are.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

export const http: typeof import('node:http') = require('node:http');
export const https: typeof import('node:https') = require('node:https');
