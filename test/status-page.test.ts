// The status page (GET / on the status port), rendered by a real headless
// Chromium against real daemons started through the CLI: it shows a live
// subscriber, and markup that came from the network (a subscription key, a
// refused subscription's address, a peer's name) as text, never as elements.
// Its answers carry a CSP that allows no inline or foreign script.

import assert from 'node:assert/strict';
import { createServer, request } from 'node:http';
import { type AddressInfo } from 'node:net';
import { describe, test } from 'node:test';
import { STATUS_PAGE } from '../src/daemon/status-page.js';
import { encodeCacheSet } from '../src/wire/cache.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { agent, freeAddress, keygen, type Running, serve } from './helpers/attack.js';
import { cells, CHROMIUM_HINT, chromiumAvailability, elementNames, renderDom } from './helpers/chromium.js';
import { freePort } from './helpers/net.js';
import { REQUIRED, requirement } from './helpers/requirement.js';
import { Scope } from './helpers/scope.js';

const chromium = requirement('chromium', 'the status page suite', 'The status page is not rendered in a browser.', chromiumAvailability(), CHROMIUM_HINT);
const scope = new Scope();
const { sender } = scope;
const MARKUP_KEY = '<img src=x onerror=alert(1)>';
const MARKUP_ADDRESS = '<svg onload=alert(2)>';

/** A daemon stopped after the file's tests. */
async function up(started: Promise<Running>): Promise<Running> {
  const r = await started;
  scope.track({ close: () => r.stop() });
  return r;
}

function head(port: number, path: string): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.setTimeout(5000, () => req.destroy(new Error(`GET ${path} timed out`)));
    req.on('error', reject);
    req.end();
  });
}

/**
 * A status port that serves the page as the daemon does and fixed JSON, and
 * counts the requests for data and how many were in flight at once.
 */
async function fakeStatus(views: Record<string, unknown>, metrics: string, failing = false) {
  const counts = new Map<string, number>();
  let inFlight = 0;
  let maxInFlight = 0;
  const srv = createServer((req, res) => {
    const path = req.url ?? '/';
    const page = STATUS_PAGE.get(path);
    if (page !== undefined) return void res.writeHead(200, page.headers).end(page.body);
    counts.set(path, (counts.get(path) ?? 0) + 1);
    maxInFlight = Math.max(maxInFlight, ++inFlight);
    // Answered a little later, so overlapping requests would be seen overlapping.
    setTimeout(() => {
      inFlight--;
      if (failing) res.writeHead(500).end();
      else if (path === '/metrics') res.writeHead(200, { 'content-type': 'text/plain' }).end(metrics);
      else if (views[path] !== undefined) res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(views[path]));
      else res.writeHead(404).end();
    }, 20);
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  scope.track({ close: () => new Promise((resolve) => srv.close(resolve)) });
  return { port: (srv.address() as AddressInfo).port, counts, maxInFlight: () => maxInFlight };
}

describe('the status page in a real Chromium', { skip: chromium.skip }, () => {
  if (REQUIRED) chromium.require();

  test('a repeater: the live subscriber is shown, and markup in a key and in a refused address is shown as text', async () => {
    const listen = await freePort();
    const r = await up(serve(['--listen', `127.0.0.1:${listen}`]));
    const live = await scope.receiver();
    const marked = await scope.receiver();
    await sender.send(encodeSubscription({ key: 'ssl', address: live.address }), listen);
    await r.d.log.waitFor('subscribed', { address: live.address });
    await sender.send(encodeSubscription({ key: MARKUP_KEY, address: marked.address }), listen);
    await r.d.log.waitFor('subscribed', { address: marked.address });
    await sender.send(encodeSubscription({ key: 'ssl', address: MARKUP_ADDRESS }), listen);
    await r.d.log.waitFor('subscription refused', { reason: 'bad_address' });
    await sender.send(encodeCacheSet(Buffer.from('k'), Buffer.from('v'), 0), listen);
    await live.waitFor(1);

    const dom = await renderDom(`http://127.0.0.1:${r.metricsPort}/`);
    assert.match(dom, /<body[^>]*data-state="ok"/, `the page did not load its data:\n${dom}`);
    assert.match(dom, /<span id="kind">repeater<\/span>/);
    const td = cells(dom);
    assert.ok(td.includes(live.address), `the live subscriber ${live.address} is not shown:\n${dom}`);
    assert.ok(td.includes(marked.address));
    assert.ok(td.includes(MARKUP_KEY), 'the key with markup is not shown as text');
    assert.ok(td.includes(MARKUP_ADDRESS), 'the refused address with markup is not shown as text');
    assert.ok(td.includes('bad_address'), 'drops by reason are not shown');
    assert.doesNotMatch(dom, /<th>identity<\/th>/, 'an identity column without identities');
    const elements = elementNames(dom);
    assert.ok(!elements.has('img') && !elements.has('svg'), `markup from the network became elements: ${[...elements].join(' ')}`);
  });

  test('an agent: its repeater link and key id are shown', async () => {
    const key = await keygen();
    const rep = await up(serve(['--listen-sealed', `${await freeAddress()},key=ssl`, '--key-file', key]));
    const sealed = String((await rep.d.log.waitFor('listening', { sealed: true }))['bound']);
    const a = await up(agent(['--repeater', sealed, '--key-file', key, '--local', await freeAddress(), '--deliver', await freeAddress(), '--channel-key', 'ssl']));
    const dom = await renderDom(`http://127.0.0.1:${a.metricsPort}/`);
    assert.match(dom, /<body[^>]*data-state="ok"/, `the page did not load its data:\n${dom}`);
    assert.match(dom, /<span id="kind">agent<\/span>/);
    assert.ok(cells(dom).includes(sealed), `the repeater link ${sealed} is not shown`);
    const keyId = String((JSON.parse((await head(a.metricsPort, '/healthz')).body) as { keys: string[] }).keys[0]);
    assert.match(dom, new RegExp(`key ids: ${keyId}<`));
  });

  test('fields the views may carry later (identity) and cluster peers render as text, and only when present', async () => {
    // The page as the daemon serves it, with JSON a cluster member with identities would answer.
    const health = {
      status: 'ok', version: '9.9.9', uptimeSeconds: 3, channels: 1, keys: ['ab12cd34'],
      listeners: [
        { address: '127.0.0.1:7171', bound: '127.0.0.1:7171', channel: 'ssl', sealed: false, recvBuffer: 1 },
        { address: '127.0.0.1:7273', bound: '127.0.0.1:7273', channel: 'ssl', sealed: true, identity: true, recvBuffer: 1 },
      ],
      identity: { publicKey: 'urid1self', peersFingerprint: 'f00d', links: 1, peers: [{ name: '<em>node-a</em>', role: 'node', key: 'urid1abcdefghijklmnopq', allow: [], linked: true, lastSeen: null, refused: { '<s>replay</s>': 2 } }] },
      ticketKeys: [{ id: 'feedface', notBefore: '2026-01-01T00:00:00.000Z', notAfter: '2026-01-01T02:00:00.000Z', encrypting: true }],
      cluster: { name: 'prod', id: '1', node: 'a', connected: true, server: 'nats://x', degraded: false, ownedSubscribers: 1, stateFetch: { phase: 'done', result: 'complete' },
        peers: [{ id: '2', name: '<b>peer</b>', lastHeardMs: 100, subscribers: 0, identity: '<i>node-b</i>' }] },
    };
    const subscribers = [{ channel: 'ssl', address: '127.0.0.1:9', key: 'ssl', form: 'sealed', identity: '<script>x()</script>', servedBy: 'a (this repeater)', warmJoin: null }];
    const fake = await fakeStatus({ '/healthz': health, '/subscribers': subscribers, '/refusals': [] }, 'udprepeater_datagrams_dropped_total{channel="ssl",reason="<u>x</u>"} 4\n');
    const dom = await renderDom(`http://127.0.0.1:${fake.port}/`);
    assert.match(dom, /<body[^>]*data-state="ok"/, dom);
    const td = cells(dom);
    for (const text of ['<b>peer</b>', '<i>node-b</i>', '<script>x()</script>', '<u>x</u>', 'a (this repeater)', 'feedface', '<em>node-a</em>', '<s>replay</s> 2', 'linked', 'sealed, by identity', 'urid1abcdefghijk\u2026']) assert.ok(td.includes(text), `${text} is not shown as text`);
    assert.match(dom, /<h2[^>]*>Identities<\/h2>/);
    assert.match(dom, /<th>identity<\/th>/);
    const elements = elementNames(dom);
    for (const tag of ['b', 'i', 'u', 'em', 's']) assert.ok(!elements.has(tag), `<${tag}> from the network became an element`);
    assert.equal(dom.match(/<script\b/g)?.length, 1, 'only the page\'s own script element exists');
  });

  test('an open tab is bounded: a refresh every 5 s, one request at a time, backing off while the daemon fails', async () => {
    const health = { status: 'ok', version: '1', listeners: [], keys: [] };
    const ok = await fakeStatus({ '/healthz': health, '/subscribers': [], '/refusals': [] }, '');
    // 30 s of the page's time: refreshes at 0, 5, ..., 30 s.
    assert.match(await renderDom(`http://127.0.0.1:${ok.port}/`, 30_000), /data-state="ok"/);
    const refreshes = ok.counts.get('/healthz') ?? 0;
    console.log(JSON.stringify({ virtualSeconds: 30, refreshes, requests: Object.fromEntries(ok.counts), maxInFlight: ok.maxInFlight() }));
    assert.ok(refreshes >= 4 && refreshes <= 7, `${refreshes} refreshes in 30 s`);
    for (const path of ['/subscribers', '/refusals', '/metrics']) assert.equal(ok.counts.get(path), refreshes, path);
    assert.equal(ok.maxInFlight(), 1, 'the page sent requests in parallel');
    const failing = await fakeStatus({}, '', true);
    // Failing: tries at 0, 10 and 30 s (the wait doubles from 5 s).
    assert.match(await renderDom(`http://127.0.0.1:${failing.port}/`, 30_000), /data-state="error"/);
    const tries = failing.counts.get('/healthz') ?? 0;
    assert.ok(tries >= 2 && tries <= 3, `${tries} tries in 30 s against a failing daemon`);
    assert.deepEqual([...failing.counts.keys()], ['/healthz']);
  });
});

test('the page and its script are served with a CSP that allows no inline or foreign script, and nosniff', async () => {
  const r = await up(serve(['--listen', await freeAddress()]));
  const page = await head(r.metricsPort, '/');
  assert.equal(page.status, 200);
  assert.match(String(page.headers['content-type']), /^text\/html/);
  const csp = String(page.headers['content-security-policy']);
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*/);
  assert.equal(page.headers['x-content-type-options'], 'nosniff');
  assert.doesNotMatch(page.body, /<script>|<style>|https?:\/\//, 'the page has inline code or an external asset');
  const js = await head(r.metricsPort, '/status.js');
  assert.equal(js.status, 200);
  assert.match(String(js.headers['content-type']), /^text\/javascript/);
  assert.doesNotMatch(js.body, /innerHTML|outerHTML|insertAdjacentHTML|document\.write/, 'the script writes markup');
  assert.equal((await head(r.metricsPort, '/status.css')).status, 200);
  // The JSON views are marked too, so no browser sniffs them into a page.
  assert.equal((await head(r.metricsPort, '/subscribers')).headers['x-content-type-options'], 'nosniff');
});
