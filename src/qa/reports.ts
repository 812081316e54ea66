/**
 * The QA run as JUnit XML (one test case per file, for CI systems) and as one self-contained HTML
 * page for people: verdict counts, a filter for failures, and per file the verdict, format,
 * categories removed (counts, no values), geometry before/after, fingerprint id, time and a small
 * preview of the cleaned output only. No external assets, no scripts beyond the filter.
 */
import type { FileResult } from './run.js';
import { displayed, type Geometry } from './judge.js';

const xml = (s: string): string => s.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`).replace(/[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd]/gu, '');
const html = xml;

export interface Summary {
  total: number;
  passed: number;
  failed: number;
  cleaned: number;
  rejected: number;
  errors: number;
  dirty: number;
  ms: number;
}

export function summarise(results: FileResult[], ms: number): Summary {
  return {
    total: results.length,
    passed: results.filter((r) => r.pass).length,
    failed: results.filter((r) => !r.pass).length,
    cleaned: results.filter((r) => r.seen.outcome === 'clean').length,
    rejected: results.filter((r) => r.seen.outcome === 'reject').length,
    errors: results.filter((r) => r.seen.outcome === 'error').length,
    dirty: results.filter((r) => (r.seen.dirty?.length ?? 0) > 0).length,
    ms,
  };
}

const outcomeText = (r: FileResult): string => (r.seen.outcome === 'clean' ? 'clean' : `${r.seen.outcome} (${r.seen.code ?? '?'})`);

export function junitXml(suiteName: string, results: FileResult[], summary: Summary): string {
  const cases = results.map((r) => {
    const head = `  <testcase classname="${xml(suiteName)}" name="${xml(r.file)}" time="${(r.seen.ms / 1000).toFixed(3)}"`;
    if (r.pass) return `${head}><system-out>${xml(outcomeText(r))}</system-out></testcase>`;
    return `${head}>\n    <failure message="${xml(r.problems.join('; '))}" type="expectation">${xml(`${outcomeText(r)}\n${r.problems.join('\n')}`)}</failure>\n  </testcase>`;
  });
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<testsuites name="scrubline qa" tests="${summary.total}" failures="${summary.failed}" time="${(summary.ms / 1000).toFixed(3)}">`,
    `<testsuite name="${xml(suiteName)}" tests="${summary.total}" failures="${summary.failed}" errors="0" skipped="0" time="${(summary.ms / 1000).toFixed(3)}">`,
    ...cases,
    '</testsuite>',
    '</testsuites>',
    '',
  ].join('\n');
}

function geometry(g: Geometry | undefined): string {
  if (!g || g.width === undefined) return '–';
  const { width, height } = displayed(g);
  const turn = g.rotation ? `, rotated ${g.rotation}°` : g.orientation && g.orientation !== 1 ? `, orientation ${g.orientation}` : '';
  return `${width}×${height}${turn}`;
}

export function htmlReport(suiteName: string, results: FileResult[], summary: Summary, generatedAt: string): string {
  const rows = results.map((r) => {
    const removed = Object.entries(r.seen.removed ?? {})
      .map(([category, n]) => `<li>${html(category)} <span class="n">×${n}</span></li>`)
      .join('');
    const fingerprintId = typeof r.seen.fingerprint?.id === 'string' ? r.seen.fingerprint.id : '–';
    return `<tr class="${r.pass ? 'pass' : 'fail'}" data-verdict="${r.pass ? 'pass' : 'fail'}">
  <td class="verdict">${r.pass ? 'PASS' : 'FAIL'}</td>
  <td class="file"><code>${html(r.file)}</code>${r.expect ? '' : '<div class="muted">default: clean or rejected, never dirty</div>'}${
      r.problems.length ? `<ul class="problems">${r.problems.map((p) => `<li>${html(p)}</li>`).join('')}</ul>` : ''
    }</td>
  <td>${html(outcomeText(r))}</td>
  <td>${html(r.seen.mime ?? '–')}</td>
  <td><ul class="removed">${removed || '<li class="muted">none</li>'}</ul></td>
  <td>${html(geometry(r.seen.before))}</td>
  <td>${html(geometry(r.seen.after))}</td>
  <td><code>${html(fingerprintId)}</code></td>
  <td class="num">${r.seen.ms}&nbsp;ms</td>
  <td>${r.seen.preview ? `<img alt="cleaned output preview" src="${r.seen.preview}">` : '<span class="muted">–</span>'}</td>
</tr>`;
  });
  const count = (id: string, label: string, value: number): string => `<div class="count ${id}"><b data-testid="count-${id}">${value}</b><span>${label}</span></div>`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>scrubline QA — ${html(suiteName)}</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d1d1f; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  .muted { color: #6e6e73; font-size: 12px; }
  .counts { display: flex; gap: 12px; margin: 16px 0; flex-wrap: wrap; }
  .count { border: 1px solid #d2d2d7; border-radius: 8px; padding: 8px 14px; min-width: 80px; }
  .count b { display: block; font-size: 22px; }
  .count.failed b { color: ${summary.failed ? '#c9252d' : '#1d1d1f'}; }
  .count.passed b { color: #1a7f37; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; vertical-align: top; padding: 6px 8px; border-bottom: 1px solid #e5e5ea; }
  th { position: sticky; top: 0; background: #f5f5f7; }
  tr.fail { background: #fff1f0; }
  td.verdict { font-weight: 600; }
  tr.pass td.verdict { color: #1a7f37; }
  tr.fail td.verdict { color: #c9252d; }
  ul { margin: 0; padding-left: 16px; }
  .problems { color: #c9252d; }
  .n { color: #6e6e73; }
  td.num { white-space: nowrap; text-align: right; }
  img { max-width: 96px; max-height: 96px; border: 1px solid #d2d2d7; }
  body.only-failures tr.pass { display: none; }
</style>
</head>
<body>
<h1>scrubline QA — ${html(suiteName)}</h1>
<div class="muted">${html(generatedAt)} · ${summary.total} files in ${(summary.ms / 1000).toFixed(1)} s · previews show the cleaned output only</div>
<div class="counts">
${count('total', 'files', summary.total)}
${count('passed', 'passed', summary.passed)}
${count('failed', 'failed', summary.failed)}
${count('cleaned', 'cleaned', summary.cleaned)}
${count('rejected', 'rejected', summary.rejected)}
${count('dirty', 'dirty', summary.dirty)}
</div>
<label><input type="checkbox" id="only-failures"> show failures only</label>
<table>
<thead><tr><th>verdict</th><th>file</th><th>outcome</th><th>format</th><th>removed</th><th>before</th><th>after</th><th>fingerprint</th><th>time</th><th>preview</th></tr></thead>
<tbody>
${rows.join('\n')}
</tbody>
</table>
<script>
  document.getElementById('only-failures').addEventListener('change', (e) => document.body.classList.toggle('only-failures', e.target.checked));
</script>
</body>
</html>
`;
}
