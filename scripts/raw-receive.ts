/**
 * The upload baseline of `npm run bench`: the least a server can do with an upload, an express 5
 * app receiving one multipart file with multer to a temp file, then removing it and answering
 * 201. Started as its own process, as `scrubline serve` is, on the port in RAW_RECEIVE_PORT.
 */
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import express from 'express';
import multer from 'multer';

const upload = multer({ dest: tmpdir(), limits: { files: 1 } });
const app = express();
app.post('/v1/uploads', upload.single('file'), async (req, res) => {
  const bytes = req.file?.size ?? 0;
  if (req.file) await rm(req.file.path, { force: true });
  res.status(201).json({ bytes });
});
app.get('/healthz', (_req, res) => void res.json({ ok: true }));
app.listen(Number(process.env.RAW_RECEIVE_PORT), '127.0.0.1');
