// The fleet's ticket keys in real nginx (Debian nginx-light 1.22): a real
// repeater (the CLI) generates the schedule, real agents (the CLI) write the
// `ssl_session_ticket_key` files and run `nginx -s reload`, and real
// `openssl s_client` clients resume on one nginx a ticket another one issued:
// before a rotation, after it, and no longer once the key expired.
//
// The byte layout is proven, not assumed: nginx's own tickets (and Node's)
// are decrypted here with the key material read as documented (name, HMAC,
// AES; nginx's 48-byte files swap the last two). Two nginx that read the
// same file would agree even with the halves swapped; this would not.
// Skipped loudly without nginx or openssl (required under CI).

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { randomBytes } from 'node:crypto';
import { nginxTicketKey, nodeTicketKey, TicketKeys } from '../../src/crypto/ticket-schedule.js';
import { decodeTicketSchedule } from '../../src/wire/ticket-codec.js';
import { agent, keygen, type Running, serve } from '../helpers/attack.js';
import { freePort } from '../helpers/net.js';
import { Nginx, NGINX_HINT, nginxAvailability } from '../helpers/nginx.js';
import { requirement } from '../helpers/requirement.js';
import { Scope } from '../helpers/scope.js';
import { fetchTicket, opensTicket } from '../helpers/tickets.js';
import { type Cert, makeCert, opensslAvailability, sClient } from '../helpers/tls.js';

const openssl = opensslAvailability();
const tools = openssl.ok ? nginxAvailability() : openssl;
const { skip, require: requireTools } = requirement('nginx and openssl', 'the nginx ticket-key suite (test/system/tls.nginx.test.ts)', 'Ticket keys in nginx (files, layout, rotation, expiry) are NOT being tested.', tools, NGINX_HINT);

const scope = new Scope();
const track = <T extends { close(): unknown }>(x: T): T => scope.track(x);

const root = mkdtempSync(join(tmpdir(), 'udprepeater-nginx-'));
let n = 0;
const fresh = (name: string) => join(root, `${name}-${++n}`);

/** A repeater distributing ticket keys on a sealed listener. */
async function ticketRepeater(key: string, extra: string[] = []): Promise<{ r: Running; port: number; state: string }> {
  const port = await freePort();
  const state = fresh('state');
  const r = await serve(['--listen-sealed', `127.0.0.1:${port},channel=ssl,key=ssl,tickets`, '--key-file', key, '--state-dir', state, ...extra]);
  track({ close: () => r.stop() });
  return { r, port, state };
}

/** An agent writing nginx key files, with `reload` as its reload command. */
async function ticketAgent(key: string, repeaterPort: number, dir: string, size: 48 | 80, reload: string | null): Promise<Running> {
  const a = await agent([
    '--repeater', `127.0.0.1:${repeaterPort}`,
    '--key-file', key,
    '--local', `127.0.0.1:${await freePort()}`,
    '--deliver', `127.0.0.1:${await freePort()}`,
    '--channel-key', 'ssl',
    '--ticket-key-dir', dir,
    '--ticket-key-size', String(size),
    ...(reload === null ? [] : ['--ticket-reload-command', reload]),
  ]);
  track({ close: () => a.stop() });
  return a;
}

const slots = (dir: string) => [0, 1, 2, 3].map((i) => join(dir, `ticket.${i}.key`));

describe('ticket keys in nginx, written by agents', { skip, timeout: 90_000 }, () => {
  let cert: Cert;
  let key: string;

  before(async () => {
    requireTools();
    cert = makeCert();
    key = await keygen();
  });

  test('the files are the layout nginx 1.22 reads (80 and 48 bytes), and Node reads its own 48 bytes differently', async () => {
    const { port, state } = await ticketRepeater(key);
    const d80 = fresh('keys80');
    const d48 = fresh('keys48');
    const [a80, a48] = [await ticketAgent(key, port, d80, 80, null), await ticketAgent(key, port, d48, 48, null)];
    await Promise.all([a80.d.log.waitFor('ticket key files written'), a48.d.log.waitFor('ticket key files written')]);
    for (const f of [...slots(d80), ...slots(d48)]) assert.equal(statSync(f).mode & 0o777, 0o600, f);
    const f80 = readFileSync(slots(d80)[0]!);
    const f48 = readFileSync(slots(d48)[0]!);
    assert.equal(f80.length, 80);
    assert.equal(f48.length, 48);

    const n80 = track(await Nginx.start(fresh('nginx80'), cert, slots(d80)));
    const n48 = track(await Nginx.start(fresh('nginx48'), cert, slots(d48)));
    for (const v of ['TLSv1.2', 'TLSv1.3'] as const) {
      const t80 = await fetchTicket(n80.port, v);
      assert.ok(opensTicket(t80, f80.subarray(0, 16), f80.subarray(16, 48), f80.subarray(48, 80)), `nginx 80-byte file read as name, HMAC, AES (${v})`);
      const t48 = await fetchTicket(n48.port, v);
      assert.ok(opensTicket(t48, f48.subarray(0, 16), f48.subarray(32, 48), f48.subarray(16, 32)), `nginx 48-byte file read as name, AES, HMAC (${v})`);
      // The control: the other order does not open it.
      assert.equal(opensTicket(t48, f48.subarray(0, 16), f48.subarray(16, 32), f48.subarray(32, 48)), false);
    }

    // Node, loaded as the session cache loads it, from the schedule the repeater saved.
    const keys = decodeTicketSchedule(readFileSync(join(state, 'tickets.pb')));
    assert.ok(typeof keys !== 'string');
    const held = new TicketKeys();
    held.merge(keys, Date.now());
    const enc = held.view(Date.now()).encrypting!;
    assert.ok(nginxTicketKey(enc, 80).equals(f80), 'the 80-byte file is the secret');
    assert.ok(nginxTicketKey(enc, 48).equals(f48));
    const node48 = nodeTicketKey(enc);
    assert.ok(Buffer.concat([node48.subarray(0, 16), node48.subarray(32, 48), node48.subarray(16, 32)]).equals(f48), "the same 48 bytes as nginx's, halves swapped");
    const server = createServer({ cert: readFileSync(cert.cert), key: readFileSync(cert.key) }, (_q, s) => s.end('ok'));
    server.setTicketKeys(node48);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    track({ close: () => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))) });
    const tn = await fetchTicket((server.address() as AddressInfo).port, 'TLSv1.3');
    assert.ok(opensTicket(tn, node48.subarray(0, 16), node48.subarray(16, 32), node48.subarray(32, 48)), 'Node reads name, HMAC, AES');
  });

  test('tickets resume across two nginx, across a rotation, and not once their key expired', async () => {
    // A key encrypts for 6 s and decrypts 4 s more.
    const { port } = await ticketRepeater(key, ['--ticket-rotate', '6', '--ticket-lifetime', '4']);
    const dirs = [fresh('keysA'), fresh('keysB')];
    const ndirs = [fresh('nginxA'), fresh('nginxB')];
    const reloadOf = (i: number) => `/usr/sbin/nginx -p ${ndirs[i]} -c ${join(ndirs[i]!, 'nginx.conf')} -s reload`;
    const agents = [await ticketAgent(key, port, dirs[0]!, 80, reloadOf(0)), await ticketAgent(key, port, dirs[1]!, 80, reloadOf(1))];
    await Promise.all(agents.map((a) => a.d.log.waitFor('ticket key files written')));
    const nginx = [track(await Nginx.start(ndirs[0]!, cert, slots(dirs[0]!))), track(await Nginx.start(ndirs[1]!, cert, slots(dirs[1]!)))];
    // On a slow machine a schedule change can come before nginx runs: that write's reload fails, rightly (no nginx yet).
    const failedBeforeNginx = await Promise.all(agents.map(async (a) => (await a.metrics()).value('udprepeater_agent_ticket_reloads_total', { result: 'failed' })));
    const writesBeforeNginx = agents.map((a) => a.d.log.matching('ticket key files written').filter((r) => r['created'] !== true).length);
    // A control with a key of its own.
    const own = join(root, 'own.key');
    writeFileSync(own, randomBytes(80), { mode: 0o600 });
    const outsider = track(await Nginx.start(fresh('nginxC'), cert, [own]));

    const lastWrite = (a: Running) => a.d.log.matching('ticket key files written').at(-1)!;
    /** Every write of both agents has been followed by a reload, and nginx finished each. */
    const settled = async () => {
      for (const [i, a] of agents.entries()) {
        await a.d.log.until('the reload after the last write', () => {
          const recs = a.d.log.records;
          const w = recs.lastIndexOf(lastWrite(a));
          // The write that created the files runs no reload (nginx started after it).
          return recs.slice(w).some((r) => r.msg === 'ticket reload command finished') || lastWrite(a)['created'] === true ? true : undefined;
        }, 10_000);
        const ok = a.d.log.matching('ticket reload command finished').length;
        await nginx[i]!.reloaded(ok);
      }
    };
    /** Waits for both agents to write files whose encrypting key passes `accept`. */
    const untilWritten = (accept: (r: Record<string, unknown>) => boolean) =>
      Promise.all(agents.map((a) => a.d.log.until('a ticket key file write', () => (accept(lastWrite(a)) ? true : undefined), 15_000)));

    // The first checks need the key to stay current: with less than 4.5 s left
    // of this period (keys start on a 6 s grid since 1970), start after the rotation.
    const e0 = String(lastWrite(agents[0]!)['encrypting']);
    if (6000 - (Date.now() % 6000) < 4500) await untilWritten((r) => r['encrypting'] !== e0);
    await settled();
    const k1 = String(lastWrite(agents[0]!)['encrypting']);
    assert.equal(lastWrite(agents[1]!)['encrypting'], k1, 'both agents switch to the same key');

    const files = { '1.3': join(root, 'n13'), '1.2': join(root, 'n12') };
    for (const v of ['1.3', '1.2'] as const) {
      const first = await sClient(nginx[0]!.port, { version: v, sessOut: files[v] });
      assert.equal(first.reused, false);
      const other = await sClient(nginx[1]!.port, { version: v, sessIn: files[v] });
      assert.equal(other.reused, true, `TLS ${v} ticket from nginx A resumes on nginx B:\n${other.output}`);
      assert.equal((await sClient(outsider.port, { version: v, sessIn: files[v] })).reused, false, 'control: another key');
    }

    // The next rotation: a new key encrypts, the old one still decrypts.
    await untilWritten((r) => r['encrypting'] !== k1);
    await settled();
    assert.ok((lastWrite(agents[1]!)['slots'] as string[]).includes(k1));
    for (const v of ['1.3', '1.2'] as const) {
      const r = await sClient(nginx[1]!.port, { version: v, sessIn: files[v] });
      assert.equal(r.reused, true, `TLS ${v} ticket still resumes after the rotation:\n${r.output}`);
    }

    // Its key expires: erased from every file, and the ticket no longer resumes anywhere.
    await untilWritten((r) => !(r['slots'] as string[]).includes(k1));
    await settled();
    // Erased because it expired, not pushed out of the slots by newer keys: with a
    // lifetime shorter than a rotation, only the current and the next key remain
    // (slot 0 repeated in the unused slots).
    const held = lastWrite(agents[0]!)['slots'] as string[];
    assert.deepEqual([new Set(held).size, held[2], held[3]], [2, held[0], held[0]], held.join(' '));
    for (const f of slots(dirs[0]!)) assert.ok(readFileSync(f).length === 80);
    for (const v of ['1.3', '1.2'] as const) {
      for (const ng of nginx) assert.equal((await sClient(ng.port, { version: v, sessIn: files[v] })).reused, false, `TLS ${v} ticket after its key expired`);
    }
    const m = await agents[0]!.metrics();
    assert.ok(m.value('udprepeater_agent_ticket_reloads_total', { result: 'ok' }) >= 2);
    // Started before nginx, as the README says: the write that created the files ran no reload, so none failed
    // but those of later writes before nginx ran; none failed once it ran.
    for (const [i, a] of agents.entries()) {
      assert.ok(failedBeforeNginx[i]! <= writesBeforeNginx[i]!, `the creating write ran a reload (${failedBeforeNginx[i]} failed, ${writesBeforeNginx[i]} later writes before nginx)`);
      assert.equal((await a.metrics()).value('udprepeater_agent_ticket_reloads_total', { result: 'failed' }), failedBeforeNginx[i], 'a reload failed while nginx ran');
      assert.equal(a.d.log.matching('ticket reload command failed').length, failedBeforeNginx[i]);
    }
    assert.ok(m.value('udprepeater_agent_ticket_key_writes_total', { result: 'ok' }) >= 3);
  });
});
