// The status page: GET / on the status port of a repeater or an agent. One
// self-contained page (this HTML, /status.css, /status.js from
// status-script.ts), no external assets and nothing to build, that renders
// what /healthz, /subscribers, /refusals and /metrics say.
//
// Invariants:
// - Static: the daemon serves fixed bytes; all data is fetched by the page
//   from the JSON views, so the page costs the daemon no more than those do.
// - The Content-Security-Policy allows scripts, styles and fetches from this
//   origin only, no inline script and no frames: markup that came from the
//   network and slipped into the DOM still could not run.
// - Relative URLs only, so the page also works behind a proxy under a path.

import { STATUS_JS } from './status-script.js';

const HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>udprepeater status</title>
<link rel="stylesheet" href="status.css">
<script src="status.js" defer></script>
</head>
<body data-state="loading">
<header>
<h1>udprepeater <span id="kind"></span></h1>
<p class="controls"><button id="pause" type="button" aria-pressed="false">Pause</button>
<button id="now" type="button">Refresh now</button>
<span id="updated">loading&hellip;</span>
<span id="error" role="alert"></span></p>
</header>
<main id="sections"><noscript>This page needs JavaScript. The same facts are at
<a href="healthz">healthz</a>, <a href="subscribers">subscribers</a>, <a href="refusals">refusals</a> and <a href="metrics">metrics</a>.</noscript></main>
</body>
</html>
`;

const CSS = `:root { color-scheme: light dark; font: 14px/1.4 system-ui, sans-serif; }
body { margin: 0 1.5em 2em; }
header { position: sticky; top: 0; background: Canvas; padding: .5em 0; border-bottom: 1px solid GrayText; z-index: 1; }
h1 { font-size: 1.3em; margin: .2em 0; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
h3 { font-size: 1em; margin: 1em 0 .3em; }
.controls { margin: .2em 0; display: flex; gap: .8em; align-items: center; flex-wrap: wrap; }
#error { color: #c62828; font-weight: 600; }
body[data-state="error"] #updated { opacity: .6; }
dl { display: grid; grid-template-columns: max-content auto; gap: .1em 1em; margin: 0; }
dt { color: GrayText; }
dd { margin: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; }
th, td { padding: .15em .7em .15em 0; text-align: left; vertical-align: top; white-space: nowrap; }
td { font-family: ui-monospace, monospace; max-width: 40em; overflow: hidden; text-overflow: ellipsis; }
th { border-bottom: 1px solid GrayText; font-weight: 600; }
td.n, th.n { text-align: right; }
.empty, .note { color: GrayText; margin: .2em 0; }
`;

/** Headers of every answer of the status server. */
export const COMMON_HEADERS: Readonly<Record<string, string>> = {
  'x-content-type-options': 'nosniff',
  'cache-control': 'no-store',
};

const PAGE_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};

export interface StaticAsset {
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
}

function asset(type: string, text: string): StaticAsset {
  return { headers: { ...COMMON_HEADERS, ...PAGE_HEADERS, 'content-type': type }, body: Buffer.from(text, 'utf8') };
}

/** The page's fixed answers, by path. */
export const STATUS_PAGE: ReadonlyMap<string, StaticAsset> = new Map([
  ['/', asset('text/html; charset=utf-8', HTML)],
  ['/status.js', asset('text/javascript; charset=utf-8', STATUS_JS)],
  ['/status.css', asset('text/css; charset=utf-8', CSS)],
]);
