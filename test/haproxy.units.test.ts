// The agent's HAProxy side without HAProxy: the key layout, the ring wanted
// from the fleet's view, HAProxy 2.6.12's own answers (recorded from the
// real binary) parsed strictly, the push plan checked against a model of
// HAProxy's ring, the runtime API client against misbehaving UNIX sockets
// (silent, endless, absent), and the flags. The real HAProxy is in
// test/system/tls.haproxy.test.ts.

import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import { haproxyCommand, MAX_ANSWER_BYTES } from '../src/agent/haproxy-cli.js';
import { base64Bytes, haproxyKeyLine, haproxyKeysFile, haproxyTicketKey, parseRing, planPushes, pushAccepted, wantedRing } from '../src/agent/haproxy-keys.js';
import { HaproxySocket } from '../src/agent/haproxy-socket.js';
import { newTicketKey, nginxTicketKey, TicketKeys } from '../src/crypto/ticket-schedule.js';
import { LogTap } from './helpers/logtap.js';
import { agentConfigOf } from './helpers/repeater.js';

const H = 3_600_000;
const NOW = 1_796_000_000_000;
const root = mkdtempSync(join(tmpdir(), 'udprepeater-haproxy-units-'));

describe('key layout and the ring wanted', () => {
  test("48 bytes are nginx's (name, AES, HMAC); 80 bytes are name, AES, HMAC, where nginx's are name, HMAC, AES", () => {
    const k = newTicketKey(NOW, NOW + 2 * H, NOW);
    assert.ok(haproxyTicketKey(k, 48).equals(nginxTicketKey(k, 48)));
    const h = haproxyTicketKey(k, 80);
    const ng = nginxTicketKey(k, 80);
    assert.equal(h.length, 80);
    assert.ok(h.subarray(0, 16).equals(ng.subarray(0, 16)), 'name');
    assert.ok(h.subarray(16, 48).equals(ng.subarray(48, 80)), 'AES');
    assert.ok(h.subarray(48, 80).equals(ng.subarray(16, 48)), 'HMAC');
    assert.equal(haproxyKeyLine(k, 80).toString(), h.toString('base64'));
  });

  test('base64 written into a Buffer is standard padded base64', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 100 }), (u) => base64Bytes(u).toString('latin1') === Buffer.from(u).toString('base64')));
  });

  test('the ring is [previous, encrypting, next], a missing one repeating the encrypting key', () => {
    const t = new TicketKeys();
    const [k0, k1, k2] = [0, 1, 2].map((i) => newTicketKey(NOW + i * H, NOW + (i + 2) * H, NOW - 3 * H + i));
    const ids = (r: ReturnType<typeof wantedRing>) => r?.map((k) => k.notBeforeMs - NOW);
    assert.equal(wantedRing(t.view(NOW)), null, 'nothing before a key encrypts');
    t.merge([k0!], NOW);
    assert.deepEqual(ids(wantedRing(t.view(NOW))), [0, 0, 0]);
    t.merge([k1!], NOW);
    assert.deepEqual(ids(wantedRing(t.view(NOW))), [0, 0, H], 'a fresh schedule: no previous key yet');
    assert.deepEqual(ids(wantedRing(t.view(NOW + H))), [0, H, H], 'at the rotation, before the next key arrives');
    t.merge([k2!], NOW + H);
    assert.deepEqual(ids(wantedRing(t.view(NOW + H))), [0, H, 2 * H]);
    assert.equal(haproxyKeysFile([Buffer.from('a'), Buffer.from('b'), Buffer.from('c')]).toString(), 'a\nb\nc\n');
  });
});

// HAProxy 2.6.12's answers, as its runtime API sent them.
const A = 'YMt+Da15xHkVMM+Subw6mGJL3Gmh41QTGkMztzNiVpRHgl9AFkqgC81l5FSZYM9KsVg5VFTJq7EJ07fUda3S6GCbtaefDTVg8DpQqoqtcoE=';
const B = 'R0NxgMpBDayJ+WbZfe4EwbWRinPL2eHX7aEi0Et5K7ypwrlX57CNjnt5oUmmZQ6+Ig7VeU8b/WtoxjdRGsa/+x/IZeJcKPpqqBN4x/ZtGFM=';
const C = 'ixf57ZUyor74AVSFE6VrB0VQhElquX1iUfOso8dzNvuXgeV/dUJLPsascoPtXDUPvM0efg23ZINorvIdPH0daK+AY/mh0qsNW4jhhsP0BM8=';
const SHOWN = `# id secret\n# 0 (/tmp/hx/t.keys)\n0.0 ${A}\n0.1 ${B}\n0.2 ${C}\n\n`;

describe("HAProxy's answers", () => {
  test('show tls-keys FILE: the ring in order; anything else is its answer, as one bounded line', () => {
    assert.deepEqual((parseRing(Buffer.from(SHOWN)) as Buffer[]).map(String), [A, B, C]);
    assert.equal(parseRing(Buffer.from("'show tls-keys' unable to locate referenced filename\n\n")), "'show tls-keys' unable to locate referenced filename");
    assert.equal(parseRing(Buffer.from('Permission denied\n\n')), 'Permission denied');
    assert.equal(parseRing(Buffer.alloc(0)), 'empty answer');
    assert.match(parseRing(Buffer.from(`# id secret\n# 0 (/f)\n0.0 ${A}\n0.1 ${B}\n\n`)) as string, /holds 2 ticket keys for the file, not 3/);
    assert.match(parseRing(Buffer.from(`# id secret\n0.0 ${A}\n0.1 not base64!\n0.2 ${C}\n`)) as string, /^unexpected answer/);
    // The list of files (show tls-keys without a file) is not a ring.
    assert.equal(parseRing(Buffer.from('# id (file)\n0 (/tmp/hx/t.keys)\n\n')), '# id (file) 0 (/tmp/hx/t.keys)');
    const long = parseRing(Buffer.from(`\x01${'x.'.repeat(5000)}\n`)) as string;
    assert.ok(long.length <= 200 && !/[\x00-\x1f]/.test(long));
    // Whatever HAProxy (or something at its path) answers, no key reaches a log line.
    for (const bad of [`0.0 ${A}\n0.1 ${B}\n0.2 ${C}\n`, `# id secret\n0.0 ${A}\n0.1 ${B}!\n0.2 ${C}\n`, `error: ${A}\n`]) {
      const text = parseRing(Buffer.from(bad)) as string;
      assert.equal(typeof text, 'string');
      for (const k of [A, B, C]) assert.ok(!text.includes(k.slice(0, 40)), text);
    }
  });

  test('set ssl tls-key: only "TLS ticket key updated!" is success', () => {
    assert.equal(pushAccepted(Buffer.from('TLS ticket key updated!\n\n')), true);
    for (const no of ["'set ssl tls-key' received a key of wrong size.\n\n", "'set ssl tls-key' received invalid base64 encoded TLS key.\n\n", "'set ssl tls-key' unable to locate referenced filename\n\n", '']) {
      assert.equal(pushAccepted(Buffer.from(no)), false, no);
    }
  });
});

describe('the push plan', () => {
  /** HAProxy's `set ssl tls-key`: the previous key goes, the new one is appended. */
  const push = (ring: string[], k: string) => [ring[1]!, ring[2]!, k];
  const bufs = (xs: readonly string[]) => xs.map((x) => Buffer.from(x));

  test('a rotation is one push; an unknown or foreign ring is three; a current one none', () => {
    const plan = (cur: string[] | null, want: string[]) => planPushes(cur === null ? null : bufs(cur), bufs(want)).map(String);
    assert.deepEqual(plan(['k0', 'k1', 'k2'], ['k1', 'k2', 'k3']), ['k3']);
    assert.deepEqual(plan(['k0', 'k1', 'k2'], ['k0', 'k1', 'k2']), []);
    assert.deepEqual(plan(null, ['k1', 'k2', 'k3']), ['k1', 'k2', 'k3']);
    assert.deepEqual(plan(['x', 'y', 'z'], ['k1', 'k2', 'k3']), ['k1', 'k2', 'k3']);
    // At the rotation before the next key arrived, then when it does.
    assert.deepEqual(plan(['k0', 'k1', 'k2'], ['k1', 'k2', 'k2']), ['k2']);
    assert.deepEqual(plan(['k1', 'k2', 'k2'], ['k1', 'k2', 'k3']), ['k1', 'k2', 'k3']);
  });

  test('applied to any ring, the plan yields the ring wanted, with the fewest pushes', () => {
    const key = fc.constantFrom('a', 'b', 'c', 'd');
    const ring = fc.tuple(key, key, key);
    fc.assert(
      fc.property(fc.option(ring, { nil: null }), ring, (cur, want) => {
        const plan = planPushes(cur === null ? null : bufs(cur), bufs(want)).map(String);
        let r: string[] = cur ?? ['?', '?', '?'];
        for (const k of plan) r = push(r, k);
        assert.deepEqual(r, want);
        // j pushes keep the last 3 - j keys of the ring in front: none fewer could have done.
        for (let j = 0; j < plan.length && cur !== null; j++) assert.notDeepEqual(cur.slice(j), want.slice(0, 3 - j));
      }),
    );
  });
});

describe('the runtime API client against bad peers', () => {
  const servers: Server[] = [];
  after(() => {
    for (const s of servers) s.close();
  });
  let i = 0;
  async function peer(onConn: (c: Socket) => void): Promise<string> {
    const path = join(root, `peer-${++i}.sock`);
    const s = createServer(onConn);
    servers.push(s);
    await new Promise<void>((r) => s.listen(path, r));
    return path;
  }
  const held: Socket[] = [];
  after(() => {
    for (const c of held) c.destroy();
  });

  test('a peer that never answers times out; one that never stops is cut off; no socket is refused', async () => {
    const silent = await peer((c) => held.push(c));
    const endless = await peer((c) => {
      held.push(c);
      c.write(Buffer.alloc(MAX_ANSWER_BYTES + 1, 0x41));
    });
    const closes = await peer((c) => c.end());
    const t0 = Date.now();
    assert.deepEqual(await haproxyCommand(silent, Buffer.from('show tls-keys x\n'), 200), { failure: 'timeout', error: 'no answer within 200 ms' });
    assert.ok(Date.now() - t0 < 2000);
    assert.equal(((await haproxyCommand(endless, Buffer.from('x\n'), 2000)) as { failure: string }).failure, 'rejected');
    assert.deepEqual(await haproxyCommand(join(root, 'absent.sock'), Buffer.from('x\n'), 2000), { failure: 'refused', error: 'ENOENT' });
    const regular = join(root, 'regular');
    writeFileSync(regular, '');
    assert.equal(((await haproxyCommand(regular, Buffer.from('x\n'), 2000)) as { failure: string }).failure, 'refused');
    assert.deepEqual(await haproxyCommand(closes, Buffer.from('x\n'), 2000), { answer: Buffer.alloc(0) });
  });

  test('a socket is counted by result, shown, logged once per minute, and never throws', async () => {
    const tap = new LogTap();
    const log = tap.logger();
    const silent = await peer((c) => held.push(c));
    const wrongRing = await peer((c) => c.end(`# id secret\n# 0 (/f)\n0.0 ${A}\n\n`));
    // The silent peer must time out; the one that answers must be given the time to answer on a loaded machine.
    const socks = [silent, wrongRing, join(root, 'none.sock')].map((p, i) => new HaproxySocket(p, { keysFile: '/f', checkMs: 50, timeoutMs: i === 0 ? 100 : 5000 }, log));
    after(() => socks.forEach((s) => s.close()));
    for (const s of socks) s.want([Buffer.from(A), Buffer.from(B), Buffer.from(C)], 'id');
    // Counters have no event to await: polled, bounded.
    const deadline = Date.now() + 20_000;
    while (!socks.every((s) => s.checks.timeout + s.checks.rejected + s.checks.refused >= 3)) {
      assert.ok(Date.now() < deadline, JSON.stringify(socks.map((s) => s.checks)));
      await new Promise((r) => setTimeout(r, 20));
    }
    const [a, b, c] = socks;
    assert.ok(a!.checks.timeout >= 1 && b!.checks.rejected >= 1 && c!.checks.refused >= 1, JSON.stringify(socks.map((s) => s.checks)));
    for (const s of socks) {
      assert.equal(s.inSync, false);
      assert.equal(s.pushes.ok, 0);
      assert.equal(s.status().socket, s.path);
    }
    assert.match(b!.status().lastError!, /check rejected: HAProxy holds 1 ticket keys/);
    assert.match(c!.status().lastError!, /check refused: ENOENT/);
    // Throttled: one line per socket however many checks failed.
    assert.equal(tap.matching('cannot reach haproxy to hand it the ticket keys', { socket: c!.path }).length, 1);
    assert.equal(tap.matching('haproxy refused the ticket keys', { socket: b!.path }).length, 1);
    assert.ok(!JSON.stringify(tap.records).includes(A.slice(0, 20)), 'no key in a log line');
  });
});

describe('agent flags for HAProxy and a ticket-keys-only agent', () => {
  const base = ['--repeater', '10.0.0.1:7272', '--channel-key', 'ssl', '--key-file', '/k'];
  const dir = join(root, 'tickets');

  test('without --deliver the agent needs --ticket-key-dir; with it, it delivers nothing', () => {
    assert.throws(() => agentConfigOf(base), /agent needs --deliver \(or, on a host without a node, --ticket-key-dir/);
    const c = agentConfigOf([...base, '--ticket-key-dir', dir]);
    assert.equal(c.deliver, null);
    assert.equal(c.ticketFiles!.haproxy.keysFile, join(dir, 'haproxy.keys'));
    assert.deepEqual(c.ticketFiles!.haproxy.sockets, []);
    assert.equal(c.ticketFiles!.haproxy.checkMs, 10_000);
    assert.equal(c.ticketFiles!.haproxy.timeoutMs, 5_000);
  });

  test('sockets that do not exist yet are accepted', () => {
    const c = agentConfigOf([...base, '--ticket-key-dir', dir, '--haproxy-socket', '/run/haproxy/a.sock', '--haproxy-socket', '/run/haproxy/b.sock', '--haproxy-check-interval', '2.5']);
    assert.deepEqual(c.ticketFiles!.haproxy.sockets, ['/run/haproxy/a.sock', '/run/haproxy/b.sock']);
    assert.equal(c.ticketFiles!.haproxy.checkMs, 2500);
  });

  const regular = join(root, 'not-a-socket');
  writeFileSync(regular, '');
  const withDir = (...args: string[]) => [...base, '--ticket-key-dir', dir, ...args];
  const refusals: Array<[string, string[], RegExp]> = [
    ['--haproxy-socket without --ticket-key-dir', [...base, '--deliver', '127.0.0.1:4141', '--haproxy-socket', '/run/h.sock'], /--haproxy-socket needs --ticket-key-dir/],
    ['a path that is not a socket', withDir('--haproxy-socket', regular), /exists and is not a UNIX socket/],
    ['a path given twice', withDir('--haproxy-socket', '/run/h.sock', '--haproxy-socket', '/run/../run/h.sock'), /given twice/],
    ['a path no socket can have', withDir('--haproxy-socket', `/run/${'x'.repeat(120)}`), /longer than 107 bytes/],
    ['a keys file HAProxy would misread', [...base, '--haproxy-socket', '/run/h.sock', '--ticket-key-dir', join(root, 'a b;c')], /has a space, a control character, ';' or a backslash/],
    ['a check interval of 0', withDir('--haproxy-check-interval', '0'), /--haproxy-check-interval must be above 0/],
  ];
  for (const [name, args, why] of refusals) {
    test(`refuses ${name}`, () => assert.throws(() => agentConfigOf(args), why));
  }
});
