// The fleet's ticket keys by identity in real servers (issue 18): a real
// repeater and real agents (the CLI), each with its own identity and peers
// file and no shared key; two nginx 1.22 resume each other's tickets
// (`openssl s_client -sess_out`/`-sess_in`), and an HAProxy 2.6 that started
// with other keys is given the fleet's over its runtime API, never restarted.
// Skipped loudly without nginx, haproxy or openssl (required under CI).

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { haproxyTicketKey } from '../../src/agent/haproxy-keys.js';
import { nginxTicketKey, TicketKeys } from '../../src/crypto/ticket-schedule.js';
import { decodeTicketSchedule, type TicketKey } from '../../src/wire/ticket-codec.js';
import { agent, type Running, serve } from '../helpers/attack.js';
import { freePort } from '../helpers/net.js';
import { Haproxy, haproxyAvailability } from '../helpers/haproxy.js';
import { Nginx, NGINX_HINT, nginxAvailability } from '../helpers/nginx.js';
import { requirement } from '../helpers/requirement.js';
import { Scope } from '../helpers/scope.js';
import { fetchTicket } from '../helpers/tickets.js';
import { type Cert, makeCert, opensslAvailability, sClient } from '../helpers/tls.js';
import { makeIdentity, writePeers } from '../helpers/identities.js';

const openssl = opensslAvailability();
const nginxOk = openssl.ok ? nginxAvailability() : openssl;
const tools = nginxOk.ok ? haproxyAvailability() : nginxOk;
const { skip, require: requireTools } = requirement('nginx, haproxy and openssl', 'ticket keys by identity in real servers (test/system/tickets.identity.test.ts)', 'Ticket keys by identity in nginx and HAProxy are NOT being tested.', tools, NGINX_HINT);

const scope = new Scope();
const track = <T extends { close(): unknown }>(x: T): T => scope.track(x);
const root = mkdtempSync(join(tmpdir(), 'udprepeater-id-servers-'));
let n = 0;
const fresh = (name: string) => join(root, `${name}-${++n}`);

async function identity(): Promise<{ file: string; pub: string }> {
  const file = fresh('id');
  return makeIdentity(file);
}

function peersFile(lines: string[]): string {
  const file = fresh('peers');
  return writePeers(file, lines);
}

function fleetEncrypting(state: string): TicketKey {
  const keys = decodeTicketSchedule(readFileSync(join(state, 'tickets.pb')));
  assert.ok(typeof keys !== 'string');
  const held = new TicketKeys();
  held.merge(keys, Date.now());
  return held.view(Date.now()).encrypting!;
}

const slots = (dir: string) => [0, 1, 2, 3].map((i) => join(dir, `ticket.${i}.key`));

describe('ticket keys by identity in nginx and HAProxy', { skip, timeout: 120_000 }, () => {
  let cert: Cert;
  let repeaterPub: string;
  let port: number;
  let state: string;
  const agents: Array<{ file: string; pub: string }> = [];

  before(async () => {
    requireTools();
    cert = makeCert();
    const rid = await identity();
    repeaterPub = rid.pub;
    for (let i = 0; i < 3; i++) agents.push(await identity());
    port = await freePort();
    state = fresh('state');
    const r: Running = await serve(['--listen-sealed', `127.0.0.1:${port},channel=ssl,key=ssl,tickets`, '--identity', rid.file, '--peers', peersFile(agents.map((a, i) => `${a.pub} node-${i}`)), '--state-dir', state]);
    track({ close: () => r.stop() });
  });

  async function ticketAgent(i: number, dir: string, extra: string[]): Promise<Running> {
    const a = await agent([
      '--repeater', `127.0.0.1:${port}`,
      '--identity', agents[i]!.file,
      '--peers', peersFile([`${repeaterPub} repeater-a role=repeater`]),
      '--local', `127.0.0.1:${await freePort()}`,
      '--channel-key', 'ssl',
      '--ticket-key-dir', dir,
      ...extra,
    ]);
    track({ close: () => a.stop() });
    return a;
  }

  test('two nginx behind agents by identity resume each other\'s TLS 1.3 and 1.2 tickets; a third with its own key does not', async () => {
    const dirs = [fresh('keysA'), fresh('keysB')];
    const as = [await ticketAgent(0, dirs[0]!, []), await ticketAgent(1, dirs[1]!, [])];
    await Promise.all(as.map((a) => a.d.log.waitFor('ticket key files written')));
    const enc = fleetEncrypting(state);
    for (const d of dirs) assert.ok(readFileSync(slots(d)[0]!).equals(nginxTicketKey(enc, 80)), `${d}: not the fleet's encrypting key`);
    const nginx = [track(await Nginx.start(fresh('nginxA'), cert, slots(dirs[0]!))), track(await Nginx.start(fresh('nginxB'), cert, slots(dirs[1]!)))];
    const own = join(root, 'own.key');
    writeFileSync(own, randomBytes(80), { mode: 0o600 });
    const outsider = track(await Nginx.start(fresh('nginxC'), cert, [own]));
    for (const v of ['1.3', '1.2'] as const) {
      const file = fresh(`t${v}`);
      const first = await sClient(nginx[0]!.port, { version: v, sessOut: file });
      assert.equal(first.reused, false);
      const again = await sClient(nginx[1]!.port, { version: v, sessIn: file });
      assert.equal(again.reused, true, `TLS ${v} ticket from nginx A resumes on nginx B:\n${again.output}`);
      assert.equal((await sClient(outsider.port, { version: v, sessIn: file })).reused, false, 'control: another key');
    }
  });

  test('an HAProxy started with other keys is given the fleet\'s over its runtime API by an agent by identity, without a restart', async () => {
    const dir = fresh('keysH');
    mkdirSync(dir, { mode: 0o700 });
    const keysFile = join(dir, 'haproxy.keys');
    writeFileSync(keysFile, [0, 1, 2].map(() => randomBytes(80).toString('base64')).join('\n') + '\n', { mode: 0o600 });
    const h = track(await Haproxy.start(fresh('haproxy'), cert, keysFile));
    const pid = h.pid;
    const a = await ticketAgent(2, dir, ['--haproxy-socket', h.socket, '--haproxy-check-interval', '1', '--haproxy-timeout', '2']);
    await a.d.log.waitFor('haproxy ticket keys pushed', { socket: h.socket });
    const enc = fleetEncrypting(state);
    const fileLines = () => readFileSync(keysFile, 'utf8').split('\n').filter((l) => l !== '');
    assert.equal(fileLines()[1], haproxyTicketKey(enc, 80).toString('base64'), 'the middle line of haproxy.keys is the fleet key that encrypts');
    // Pushes and checks are logged: waited on, never slept for.
    const deadline = Date.now() + 15_000;
    while (JSON.stringify(await h.ring()) !== JSON.stringify(fileLines())) {
      assert.ok(Date.now() < deadline, `HAProxy holds ${JSON.stringify(await h.ring())}, the file ${JSON.stringify(fileLines())}`);
      const seen = a.d.log.length;
      await a.d.log.until('another push or check', () => (a.d.log.records.slice(seen).some((r) => r.msg === 'haproxy ticket keys pushed' || r.msg === 'haproxy holds the ticket keys') ? true : undefined), 5000).catch(() => undefined);
    }
    const t = await fetchTicket(h.port, 'TLSv1.3');
    assert.equal(t.subarray(0, 16).toString('hex'), enc.secret.subarray(0, 16).toString('hex'), 'HAProxy\'s ticket names the fleet key that encrypts');
    assert.equal(h.pid, pid);
    assert.ok(h.running);
  });
});
