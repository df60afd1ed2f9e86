// Warm joins with real uWSGI 2.0 nodes and the real CLI: two nodes take 500
// sets (4 KiB binary values among them, some deleted, some expiring within
// two seconds, some overwritten through the other node); a node started
// afterwards must hold exactly the live entries, with their values, and none
// of the deleted or expired ones. The same behind agents in secure mode; a
// key updated during the warm join; a node whose cache is smaller than the
// live state.
//
// Skipped loudly when uWSGI or its python3 plugin is missing, unless
// UDPREPEATER_REQUIRE_UWSGI=1 (CI), where a missing uWSGI fails the run.

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Daemon, runCli, spawnAgent } from './helpers/daemon.js';
import { eventually, freePort } from './helpers/net.js';
import { requirement } from './helpers/requirement.js';
import { INSTALL_HINT, killAllUwsgi, sessionBytes, sessionId, UwsgiNode, untilValue, uwsgiAvailability } from './helpers/uwsgi.js';

const BLOCKSIZE = 4096;
const SETS = 500;
/** Bound on a node being warm once it runs (the join itself takes about 25 ms here). */
const WARM_MS = 10_000;
const PROCESS_MS = 10_000;
/**
 * The receive buffer the joining nodes get. uWSGI reads its cache-udp-server
 * with the kernel's default (net.core.rmem_default, 208 KiB here: about a
 * hundred of these datagrams) and has no option to change it. On this shared
 * two-CPU machine its thread stalls for tens of milliseconds at times, and a
 * warm join at the default 20,000/s then overflows the buffer: the kernel
 * drops datagrams that nobody can see (measured here: up to a fifth of them).
 * README.md, "Warm join", tells operators to raise the nodes' buffer; the
 * joining nodes here get what it recommends.
 */
const NODE_RCVBUF = 4 << 20;

const { skip, require: requireUwsgi } = requirement(
  'real uWSGI interop',
  'the warm-join real-uWSGI suite (test/interop.warm.test.ts)',
  'Warm joins with real uWSGI nodes are NOT being tested.',
  uwsgiAvailability(),
  INSTALL_HINT,
);
const opts = { skip, timeout: 60_000 };
const HOOK = { timeout: 60_000 };

after(() => killAllUwsgi());

// ---- the repeater's view ----

async function scrape(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(3000) });
  assert.equal(res.status, 200);
  return res.text();
}

/** A metric summed over its label sets, optionally only those whose labels contain `match`. */
async function metric(port: number, name: string, match = ''): Promise<number> {
  let n = 0;
  for (const m of (await scrape(port)).matchAll(new RegExp(`^${name}(\\{[^}]*\\})? (\\S+)$`, 'gm'))) if ((m[1] ?? '').includes(match)) n += Number(m[2]);
  return n;
}

type SubscriberView = { address: string; warmJoin: { sent: number; total: number } | null };
async function subscribers(port: number): Promise<SubscriberView[]> {
  const res = await fetch(`http://127.0.0.1:${port}/subscribers`, { signal: AbortSignal.timeout(3000) });
  return (await res.json()) as SubscriberView[];
}

// ---- the workload ----

interface Workload {
  /** Key (hex) -> value of every entry that must be live. */
  readonly live: Map<string, Buffer>;
  readonly deleted: string[];
  readonly expired: string[];
  /**
   * The workload's final operations again (every live set, every delete as a
   * set then a delete): a datagram a loaded machine dropped on its way to the
   * repeater is the fixture's loss, not the warm join's.
   */
  readonly redo: Array<() => Promise<unknown>>;
}

/** Runs `jobs` with at most `n` in flight. */
async function pool<T>(n: number, jobs: Array<() => Promise<T>>): Promise<T[]> {
  const out: T[] = new Array(jobs.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < jobs.length) {
        const i = next++;
        out[i] = await jobs[i]!();
      }
    }),
  );
  return out;
}

/**
 * 500 sets through `a` and `b` in turn: every 7th a 4 KiB binary value, one
 * in ten expiring in a second, one in ten deleted afterwards and one in ten
 * overwritten afterwards, both through the other node. Returns what must be
 * live once the short-lived entries have expired.
 */
async function workload(a: UwsgiNode, b: UwsgiNode): Promise<Workload> {
  const keys = Array.from({ length: SETS }, () => sessionId());
  const values = keys.map((_, i) => sessionBytes(i % 7 === 0 ? BLOCKSIZE : 64 + ((i * 37) % 1500)));
  const via = (i: number) => (i % 2 === 0 ? a : b);
  const other = (i: number) => (i % 2 === 0 ? b : a);
  const expires = (i: number) => (i % 10 === 3 ? 1 : i % 2 === 0 ? 300 : 0);
  await pool(8, keys.map((k, i) => () => via(i).set(k, values[i]!, expires(i))));
  const live = new Map<string, Buffer>();
  const deleted: string[] = [];
  const expired: string[] = [];
  const later: Array<() => Promise<unknown>> = [];
  const redo: Array<() => Promise<unknown>> = [];
  keys.forEach((k, i) => {
    const hex = k.toString('hex');
    if (i % 10 === 3) expired.push(hex);
    else if (i % 10 === 5) {
      deleted.push(hex);
      later.push(() => other(i).del(k));
      redo.push(() => other(i).set(k, values[i]!, 300).then(() => other(i).del(k)));
    } else if (i % 10 === 7) {
      const v = sessionBytes(i % 3 === 0 ? BLOCKSIZE : 200);
      live.set(hex, v);
      later.push(() => other(i).set(k, v, 300));
      redo.push(() => other(i).set(k, v, 300));
    } else {
      live.set(hex, values[i]!);
      redo.push(() => via(i).set(k, values[i]!, expires(i)));
    }
  });
  await pool(8, later);
  return { live, deleted, expired, redo };
}

/**
 * Waits until the repeater's live state holds exactly the live entries (the
 * short-lived ones swept); when it has not within 5 s, the workload's final
 * operations are done once more (w.redo) and it waits again.
 */
async function untilStateSettled(metricsPort: number, w: Workload): Promise<void> {
  let last = '';
  const settled = (ms: number) =>
    eventually(
      `the live state to hold ${w.live.size} entries, ${w.expired.length} expired`,
      async () => {
        const entries = await metric(metricsPort, 'udprepeater_live_state_entries');
        const expired = await metric(metricsPort, 'udprepeater_live_state_expired_total');
        last = `${entries} entries, ${expired} expired, ${await metric(metricsPort, 'udprepeater_datagrams_accepted_total')} accepted`;
        return entries === w.live.size && expired === w.expired.length ? true : undefined;
      },
      ms,
    );
  try {
    await settled(5_000);
  } catch {
    await pool(8, w.redo);
    try {
      await settled(10_000);
    } catch (err) {
      throw new Error(`${(err as Error).message} (the workload done twice): ${last}`);
    }
  }
}

/** Datagrams the kernel dropped at a node's cache-udp-server socket (its receive buffer was full), from /proc/net/udp. */
function socketDrops(node: UwsgiNode): number | null {
  const port = Number(node.udpAddress.split(':')[1]).toString(16).toUpperCase().padStart(4, '0');
  try {
    for (const line of readFileSync('/proc/net/udp', 'utf8').split('\n')) {
      const f = line.trim().split(/\s+/);
      if (f[1] === `0100007F:${port}`) return Number(f[f.length - 1]);
    }
  } catch {
    // not Linux
  }
  return null;
}

/**
 * Waits until `node` holds exactly the live entries: the same keys with the
 * same values, and nothing else (no deleted, no expired key). A node whose
 * receive buffer could not be raised (see NODE_RCVBUF) is allowed one thing
 * only: a key missing because its own kernel dropped the datagram at the full
 * buffer, which /proc/net/udp counts; every missing key must be matched by
 * such a drop, so one the repeater failed to send still fails the test.
 * Returns the drops it allowed.
 */
async function untilExactly(node: UwsgiNode, w: Workload, raised: boolean): Promise<number> {
  let last = '';
  let allowed = 0;
  try {
    await eventually(
      `${node.name} to hold exactly the ${w.live.size} live entries`,
      async () => {
        const drops = socketDrops(node) ?? 0;
        const got = await node.dump();
        const missing = [...w.live.keys()].filter((k) => !got.has(k));
        const wrong = [...w.live].filter(([k, v]) => got.has(k) && !got.get(k)!.equals(v));
        const extra = [...got.keys()].filter((k) => !w.live.has(k));
        last =
          `missing ${missing.length}, wrong value ${wrong.length}, extra ${extra.length} ` +
          `(deleted ${extra.filter((k) => w.deleted.includes(k)).length}, expired ${extra.filter((k) => w.expired.includes(k)).length}); ` +
          `its kernel dropped ${drops} datagrams at its full receive buffer (${raised ? 'raised' : 'the default'})`;
        allowed = missing.length;
        return missing.length === (raised ? 0 : drops) && wrong.length === 0 && extra.length === 0 ? true : undefined;
      },
      WARM_MS,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}: ${last}`);
  }
  return allowed;
}

/** Raises a joining node's receive buffer (NODE_RCVBUF); says so, or why not, in the test's diagnostics. */
function raise(node: UwsgiNode, t: { diagnostic(s: string): void }): boolean {
  const got = node.raiseReceiveBuffer(NODE_RCVBUF);
  t.diagnostic(got === null ? `${node.name}: its receive buffer could not be raised here; kernel drops are accounted for instead` : `${node.name}: receive buffer ${got} bytes`);
  return got !== null;
}


async function startAll<T>(starts: Array<Promise<T>>, stop: (t: T) => Promise<unknown>): Promise<T[]> {
  const r = await Promise.allSettled(starts);
  const failed = r.find((x): x is PromiseRejectedResult => x.status === 'rejected');
  if (failed !== undefined) {
    for (const x of r) if (x.status === 'fulfilled') await stop(x.value);
    throw failed.reason;
  }
  return r.map((x) => (x as PromiseFulfilledResult<T>).value);
}

describe('warm join: plain uWSGI nodes', () => {
  let rep: Daemon;
  let address: string;
  let metricsPort: number;
  let a: UwsgiNode, b: UwsgiNode;
  const nodes: UwsgiNode[] = [];
  let w: Workload;

  before(async () => {
    if (skip) return;
    requireUwsgi();
    // Every node here runs on 127.0.0.1, and one address gets one live state per --warm-cooldown
    // (README.md, "Warm join": several nodes on one host): 0 gives each node its own.
    rep = await Daemon.serve(['--listen', '127.0.0.1:0', '--tolerance', '5', '--metrics', '127.0.0.1:0', '--warm-cooldown', '0']);
    address = `127.0.0.1:${await rep.portOf('127.0.0.1:0')}`;
    metricsPort = await rep.metricsPort();
    [a, b] = await startAll(
      ['node-a', 'node-b'].map((name) => UwsgiNode.start({ repeater: address, name, blocksize: BLOCKSIZE })),
      (n) => n.kill(),
    );
    nodes.push(a!, b!);
    await Promise.all(nodes.map((n) => rep.log.waitFor('subscribed', { address: n.udpAddress }, { ms: PROCESS_MS })));
    w = await workload(a!, b!);
    await untilStateSettled(metricsPort, w);
  }, HOOK);

  after(async () => {
    await Promise.all(nodes.map((n) => n.kill()));
    if (rep !== undefined) await rep.stop();
  }, HOOK);

  test('a node started afterwards holds exactly the live entries, with their values, none deleted or expired', opts, async (t) => {
    // It announces once its buffer is raised (uWSGI's --start-unsubscribed, then "S" to its master FIFO).
    const c = await UwsgiNode.start({ repeater: address, name: 'node-c', blocksize: BLOCKSIZE, startUnsubscribed: true });
    nodes.push(c);
    const raised = raise(c, t);
    const t0 = Date.now();
    c.enableSubscriptions();
    await rep.log.waitFor('subscribed', { address: c.udpAddress }, { ms: PROCESS_MS });
    const done = await rep.log.waitFor('warm join completed', { address: c.udpAddress }, { ms: WARM_MS });
    assert.equal(done['sent'], w.live.size);
    const dropped = await untilExactly(c, w, raised);
    t.diagnostic(`node-c warm ${Date.now() - t0} ms after it was told to announce (${w.live.size} entries, warm join ${done['ms']} ms from its subscription; ${dropped} dropped by its kernel)`);
    assert.equal(await metric(metricsPort, 'udprepeater_warm_datagrams_total'), w.live.size);
    // The nodes that wrote still hold the expired entries until their own sweeper runs; the new node never got them.
    assert.doesNotMatch(c.output, /unable to update cache/, 'every warm datagram was applied');
  });

  test('a node whose cache is smaller than the live state keeps working; the repeater cannot know what it refused', opts, async (t) => {
    const items = 101; // uWSGI keeps one item slot for itself: 100 keys
    const d = await UwsgiNode.start({ repeater: address, name: 'node-small', blocksize: BLOCKSIZE, items, startUnsubscribed: true });
    nodes.push(d);
    raise(d, t);
    d.enableSubscriptions();
    const done = await rep.log.waitFor('warm join completed', { address: d.udpAddress }, { ms: WARM_MS });
    // The repeater sent everything and saw no error: UDP carries no acknowledgement, and uWSGI answers nothing.
    assert.equal(done['sent'], w.live.size);
    assert.equal(done['dropped'], 0);
    // Every datagram that reached it was stored or refused (less any its own kernel dropped: see untilExactly).
    const refusals = () => d.output.split('unable to update cache').length - 1;
    const refused = () => w.live.size - (items - 1) - (socketDrops(d) ?? 0);
    await eventually(`the node's log to refuse what it could not take`, () => (refusals() === refused() ? true : undefined), WARM_MS);
    const held = await d.dump();
    assert.equal(held.size, items - 1);
    for (const [k, v] of held) assert.ok(w.live.get(k)?.equals(v), 'what it holds is live, with its value');
    assert.match(d.output, /DANGER cache "ssl" is FULL/);
    // It keeps serving and syncing: an update of a key it holds reaches it.
    const [key] = held.keys();
    const renewed = sessionBytes(300);
    await a.set(Buffer.from(key!, 'hex'), renewed, 300);
    await untilValue(d, Buffer.from(key!, 'hex'), renewed);
    assert.equal(d.running, true);
  });
});

describe('warm join: a key updated while the join runs', () => {
  let rep: Daemon;
  let metricsPort: number;
  const nodes: UwsgiNode[] = [];

  after(async () => {
    await Promise.all(nodes.map((n) => n.kill()));
    if (rep !== undefined) await rep.stop();
  }, HOOK);

  test('ends with the new value on the joining node, whether the join had sent the key yet or not', opts, async (t) => {
    requireUwsgi();
    // 200 datagrams/s: the 200 entries take a second, time enough to update two keys meanwhile.
    rep = await Daemon.serve(['--listen', '127.0.0.1:0', '--warm-rate', '200', '--metrics', '127.0.0.1:0']);
    const address = `127.0.0.1:${await rep.portOf('127.0.0.1:0')}`;
    metricsPort = await rep.metricsPort();
    const writer = await UwsgiNode.start({ repeater: address, name: 'writer', blocksize: BLOCKSIZE });
    nodes.push(writer);
    await rep.log.waitFor('subscribed', { address: writer.udpAddress });
    // One at a time: the live state walks them in this order.
    const keys = Array.from({ length: 200 }, () => sessionId());
    const old = sessionBytes(500);
    for (const k of keys) await writer.set(k, old, 300);
    await eventually('200 entries in the live state', async () => ((await metric(metricsPort, 'udprepeater_live_state_entries')) === 200 ? true : undefined));

    const joiner = await UwsgiNode.start({ repeater: address, name: 'joiner', blocksize: BLOCKSIZE, startUnsubscribed: true });
    nodes.push(joiner);
    raise(joiner, t);
    joiner.enableSubscriptions();
    await rep.log.waitFor('warm join started', { address: joiner.udpAddress });
    await eventually('the join to be under way', async () => {
      const j = (await subscribers(metricsPort)).find((s) => s.address === joiner.udpAddress)?.warmJoin;
      return j !== null && j !== undefined && j.sent >= 20 ? true : undefined;
    });
    const first = keys[0]!; // sent already
    const lastKey = keys[199]!; // not yet: last in the walk
    const fresh = [sessionBytes(700), sessionBytes(800)];
    await writer.set(first, fresh[0]!, 300);
    await writer.set(lastKey, fresh[1]!, 300);
    const j = (await subscribers(metricsPort)).find((s) => s.address === joiner.udpAddress)?.warmJoin;
    assert.ok(j !== null && j !== undefined && j.sent < 199, `the join was still running when the updates were made (${JSON.stringify(j)})`);
    const done = await rep.log.waitFor('warm join completed', { address: joiner.udpAddress }, { ms: WARM_MS });
    const held = await joiner.dump();
    assert.equal(held.size, 200);
    assert.deepEqual(held.get(first.toString('hex')), fresh[0], 'the key the join had already sent');
    assert.deepEqual(held.get(lastKey.toString('hex')), fresh[1], 'the key the join had not sent yet: an older value must never overwrite the newer one');
    assert.ok(Number(done['skipped']) >= 1, 'the join skipped the key the live path had delivered');
  });
});

describe('warm join: uWSGI nodes behind agents, secure mode', () => {
  let work: string;
  let rep: Daemon;
  let repPort: number;
  let metricsPort: number;
  let key: string;
  const nodes: UwsgiNode[] = [];
  const agents: Daemon[] = [];
  let w: Workload;

  /** A node whose cache-udp-node is its agent, and the agent (real CLI), started in that order. */
  async function site(name: string, t?: { diagnostic(s: string): void }): Promise<{ node: UwsgiNode; agent: Daemon; bind: string; raised: boolean }> {
    const local = await freePort();
    const bind = await freePort();
    const node = await UwsgiNode.start({ name, cacheNode: `127.0.0.1:${local}`, subscribeTo: [], blocksize: BLOCKSIZE });
    nodes.push(node);
    // A joining node gets its buffer raised before its agent subscribes for it.
    const raised = t !== undefined && raise(node, t);
    const agent = await spawnAgent([
      '--repeater', `127.0.0.1:${repPort}`,
      '--key-file', key,
      '--local', `127.0.0.1:${local}`,
      '--deliver', node.udpAddress,
      '--channel-key', 'ssl',
      '--bind', `127.0.0.1:${bind}`,
      '--subscribe-interval', '1',
    ]);
    agents.push(agent);
    return { node, agent, bind: `127.0.0.1:${bind}`, raised };
  }

  before(async () => {
    if (skip) return;
    requireUwsgi();
    work = mkdtempSync(join(tmpdir(), 'udprepeater-warm-'));
    key = join(work, 'cluster.key');
    assert.equal((await runCli(['keygen', key])).code, 0);
    rep = await Daemon.serve(['--listen-sealed', '127.0.0.1:0,key=ssl', '--key-file', key, '--tolerance', '5', '--metrics', '127.0.0.1:0']);
    repPort = await rep.portOf('127.0.0.1:0');
    metricsPort = await rep.metricsPort();
    const [sa, sb] = await Promise.all([site('agent-node-a'), site('agent-node-b')]);
    await Promise.all([sa!, sb!].map((s) => rep.log.waitFor('subscribed', { address: s.bind, form: 'sealed' }, { ms: PROCESS_MS })));
    w = await workload(sa!.node, sb!.node);
    await untilStateSettled(metricsPort, w);
  }, HOOK);

  after(async () => {
    await Promise.all(nodes.map((n) => n.kill()));
    await Promise.all(agents.map((a) => a.stop()));
    if (rep !== undefined) await rep.stop();
    if (work !== undefined) rmSync(work, { recursive: true, force: true });
  }, HOOK);

  test('a node started afterwards behind its agent holds exactly the live entries', opts, async (t) => {
    const t0 = Date.now();
    const c = await site('agent-node-c', t);
    const done = await rep.log.waitFor('warm join completed', { address: c.bind, form: 'sealed' }, { ms: WARM_MS });
    assert.equal(done['sent'], w.live.size);
    const dropped = await untilExactly(c.node, w, c.raised);
    t.diagnostic(`node and agent started and warm in ${Date.now() - t0} ms (${w.live.size} entries, warm join ${done['ms']} ms; ${dropped} dropped by its kernel)`);

    // The node restarts (a crash), its agent does not: SIGUSR1 to the agent warms the new node.
    await c.node.kill();
    const again = await UwsgiNode.start({ name: 'agent-node-c-again', udp: c.node.udpAddress, cacheNode: c.node.cacheNode, subscribeTo: [], blocksize: BLOCKSIZE });
    nodes.push(again);
    const raised = raise(again, t);
    assert.equal((await again.dump()).size, 0, 'a restarted node starts empty');
    const from = rep.log.length;
    c.agent.signal('SIGUSR1');
    await c.agent.log.waitFor('announced as new to the repeaters: the node will be warmed');
    await rep.log.waitFor('unsubscribed', { address: c.bind, form: 'sealed' }, { from });
    await rep.log.waitFor('subscribed', { address: c.bind, form: 'sealed' }, { from });
    await rep.log.waitFor('warm join completed', { address: c.bind, form: 'sealed' }, { from, ms: WARM_MS });
    t.diagnostic(`the restarted node, warmed by SIGUSR1: ${await untilExactly(again, w, raised)} dropped by its kernel`);
  });
});
