// Files the daemons trust must be ours (SECURITY.md, "Key handling"), black
// box: the real CLI (UDPREPEATER_CLI may point at another build), real files
// owned by another user (uid 65534, chowned: the suite runs as root).
//
// The attack: with a 0777 state directory, `nobody` planted a
// tickets.pb (0600, its own) that the repeater (root) loaded, and its key
// became the fleet's encrypting key. Here every such directory or file is
// refused at start with exit 78 and a message naming the path, the problem
// and the fix; a symbolic link in place of a state file is refused, not
// followed; on SIGHUP the running config is kept.

import assert from 'node:assert/strict';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { encodeCacheSet } from '../src/wire/cache.js';
import { encodeLiveState } from '../src/wire/live-state-file.js';
import { encodeTicketSchedule } from '../src/wire/ticket-codec.js';
import { keygen } from './helpers/attack.js';
import { Daemon } from './helpers/daemon.js';
import { freePort } from './helpers/net.js';
import { requirement } from './helpers/requirement.js';

const NOBODY = 65534;
const isRoot = process.geteuid?.() === 0;
const { skip } = requirement('root', 'the trusted-files suite (test/safety.trust.test.ts)', 'Refusal of files other users own is NOT being tested.', isRoot ? { ok: true } : { ok: false, reason: 'not running as root (files must be chowned to another user)' }, 'run the tests as root');

const root = mkdtempSync(join(tmpdir(), 'udprepeater-trust-'));
let n = 0;
/** A fresh directory, mode 0700, owned by us. */
const fresh = (name: string) => {
  const d = join(root, `${name}-${++n}`);
  mkdirSync(d, { mode: 0o700 });
  return d;
};
const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** A schedule as the repeater saves it, with a key an attacker chose (and dated early, so it would win the merge). */
function plantedSchedule(): Uint8Array {
  const now = Date.now();
  return encodeTicketSchedule([{ id: 0x4141n, notBeforeMs: now - 60_000, notAfterMs: now + 3_600_000, createdMs: 1, secret: Buffer.alloc(80, 0x41) }]);
}

type Outcome = { refused: true; code: number | null; stderr: string } | { refused: false; log: string };

/** Starts a daemon; reports the refusal (exit and message) or that it ran (then stops it). */
async function outcome(args: string[], ready: string): Promise<Outcome> {
  const d = Daemon.spawn([...args, '--log-format', 'json', '--metrics', 'off']);
  let stderr = '';
  d.child.stderr!.on('data', (b: Buffer | string) => (stderr += String(b)));
  const exited = d.exited.then((e) => ({ refused: true as const, code: e.code, stderr }));
  const ran = d.log.waitFor(ready, {}, { ms: 10_000 }).then(() => ({ refused: false as const, log: d.log.records.map((r) => JSON.stringify(r)).join('\n') }));
  let r: Outcome;
  try {
    r = await Promise.race([exited, ran]);
  } catch (err) {
    d.child.kill('SIGKILL');
    throw err;
  }
  if (!r.refused) await d.stop();
  return r;
}

function assertRefused(r: Outcome, message: RegExp): void {
  assert.ok(r.refused, `started, but should have been refused (${message}):\n${r.refused ? '' : r.log}`);
  assert.equal(r.code, 78, r.stderr);
  assert.match(r.stderr, message);
}

describe('files the daemons trust must be ours', { skip, timeout: 120_000 }, () => {
  let key: string;
  const serveArgs = async (state: string, extra: string[] = []) => ['serve', '--listen-sealed', `127.0.0.1:${await freePort()},channel=ssl,key=ssl,tickets`, '--key-file', key, '--state-dir', state, ...extra];
  const agentArgs = async (extra: string[]) => [
    'agent',
    '--repeater', `127.0.0.1:${await freePort()}`,
    '--local', `127.0.0.1:${await freePort()}`,
    '--deliver', `127.0.0.1:${await freePort()}`,
    '--channel-key', 'ssl',
    ...extra,
  ];

  before(async () => {
    key = await keygen();
  });

  test("the issue's attack: a 0777 state directory with a tickets.pb planted by uid 65534 refuses the start, and so does the file alone", async () => {
    const state = fresh('state');
    chmodSync(state, 0o777);
    const planted = join(state, 'tickets.pb');
    writeFileSync(planted, plantedSchedule(), { mode: 0o600 });
    chownSync(planted, NOBODY, NOBODY);
    assertRefused(await outcome(await serveArgs(state), 'udprepeater started'), new RegExp(`--state-dir ${esc(state)}: group or others can write it \\(mode 0777\\); run chmod go-w ${esc(state)}`));
    chmodSync(state, 0o700);
    assertRefused(await outcome(await serveArgs(state), 'udprepeater started'), new RegExp(`${esc(planted)}: owned by uid ${NOBODY}, not by this process's user \\(uid 0\\) or root.*chown 0 ${esc(planted)}, else remove it`));
    // The control: without the planted file the same directory is used.
    unlinkSync(planted);
    const ok = await outcome(await serveArgs(state), 'udprepeater started');
    assert.equal(ok.refused, false, ok.refused ? ok.stderr : '');
  });

  test('a state directory owned by another user, or inside a directory others can write, is refused; a sticky one like /tmp is not', async () => {
    const owned = fresh('state');
    chownSync(owned, NOBODY, NOBODY);
    assertRefused(await outcome(await serveArgs(owned), 'udprepeater started'), new RegExp(`--state-dir ${esc(owned)}: owned by uid ${NOBODY}`));
    const open = fresh('open');
    chmodSync(open, 0o777);
    const inside = join(open, 'state');
    assertRefused(await outcome(await serveArgs(inside), 'udprepeater started'), new RegExp(`--state-dir ${esc(inside)}: group or others can write the enclosing directory ${esc(open)} \\(mode 0777\\)`));
    chmodSync(open, 0o1777);
    const ok = await outcome(await serveArgs(inside), 'udprepeater started');
    assert.equal(ok.refused, false, ok.refused ? ok.stderr : '');
  });

  test('a symlinked live-state.pb is refused and not followed: its target is neither read nor removed', async () => {
    const state = fresh('state');
    const elsewhere = fresh('elsewhere');
    const port = await freePort();
    const target = join(elsewhere, 'precious');
    const content = Buffer.from(encodeLiveState({ savedAtMs: Date.now(), channels: [{ channel: `127.0.0.1:${port}`, sets: [encodeCacheSet(Buffer.from('planted-session'), Buffer.from('attacker-chosen-master-secret'))] }] }));
    writeFileSync(target, content, { mode: 0o600 });
    const link = join(state, 'live-state.pb');
    symlinkSync(target, link);
    const r = await outcome(['serve', '--listen', `127.0.0.1:${port}`, '--state-dir', state, '--save-live-state'], 'udprepeater started');
    assertRefused(r, new RegExp(`${esc(link)}: a symbolic link; refusing to follow it`));
    assert.ok(existsSync(link), 'the link is left for the operator');
    assert.deepEqual(readFileSync(target), content, 'the target is untouched');
  });

  test('a registry.pb another user owns or can write is refused', async () => {
    const state = fresh('state');
    const file = join(state, 'registry.pb');
    writeFileSync(file, Buffer.alloc(0), { mode: 0o666 });
    chmodSync(file, 0o666);
    assertRefused(await outcome(await serveArgs(state), 'udprepeater started'), new RegExp(`${esc(file)}: group or others can write it \\(mode 0666\\); run chmod go-w ${esc(file)}`));
    chmodSync(file, 0o600);
    chownSync(file, NOBODY, NOBODY);
    assertRefused(await outcome(await serveArgs(state), 'udprepeater started'), new RegExp(`${esc(file)}: owned by uid ${NOBODY}`));
  });

  test('a key file another user owns, or a symbolic link to a key, is refused by serve and by agent', async () => {
    const mine = await keygen();
    const theirs = join(fresh('keys'), 'theirs.key');
    writeFileSync(theirs, readFileSync(mine), { mode: 0o600 });
    chownSync(theirs, NOBODY, NOBODY);
    const why = new RegExp(`key file ${esc(theirs)}: owned by uid ${NOBODY}`);
    assertRefused(await outcome(['serve', '--listen-sealed', `127.0.0.1:${await freePort()}`, '--key-file', theirs], 'udprepeater started'), why);
    assertRefused(await outcome([...(await agentArgs(['--key-file', theirs]))], 'udprepeater agent running'), why);
    const link = join(fresh('keys'), 'link.key');
    symlinkSync(mine, link);
    assertRefused(await outcome([...(await agentArgs(['--key-file', link]))], 'udprepeater agent running'), new RegExp(`key file ${esc(link)}: a symbolic link`));
  });

  test('a --ticket-key-dir group or others can read or write, another user owns, or holding a key file not ours, is refused', async () => {
    const open = fresh('tickets');
    chmodSync(open, 0o755);
    assertRefused(
      await outcome(await agentArgs(['--key-file', key, '--ticket-key-dir', open]), 'udprepeater agent running'),
      new RegExp(`--ticket-key-dir ${esc(open)}: group or others can read or write the ticket keys \\(mode 0755\\); run chmod 700 ${esc(open)}`),
    );
    const owned = fresh('tickets');
    chownSync(owned, NOBODY, NOBODY);
    assertRefused(await outcome(await agentArgs(['--key-file', key, '--ticket-key-dir', owned]), 'udprepeater agent running'), new RegExp(`--ticket-key-dir ${esc(owned)}: owned by uid ${NOBODY}`));
    const planted = fresh('tickets');
    const slot = join(planted, 'ticket.1.key');
    writeFileSync(slot, Buffer.alloc(80, 0x41), { mode: 0o600 });
    chownSync(slot, NOBODY, NOBODY);
    assertRefused(await outcome(await agentArgs(['--key-file', key, '--ticket-key-dir', planted]), 'udprepeater agent running'), new RegExp(`${esc(slot)}: owned by uid ${NOBODY}`));
    unlinkSync(slot);
    symlinkSync('/etc/hostname', join(planted, 'ticket.0.key'));
    assertRefused(await outcome(await agentArgs(['--key-file', key, '--ticket-key-dir', planted]), 'udprepeater agent running'), new RegExp(`ticket\\.0\\.key: a symbolic link`));
  });

  test('a --subscriptions-sign-check directory others can write, or another user owns, is refused: a key planted there would sign subscriptions', async () => {
    const open = fresh('pubkeys');
    chmodSync(open, 0o777);
    const args = async (dir: string) => ['serve', '--listen', `127.0.0.1:${await freePort()}`, '--subscriptions-sign-check', `SHA256:${dir}`];
    assertRefused(await outcome(await args(open), 'udprepeater started'), new RegExp(`--subscriptions-sign-check ${esc(open)}: group or others can write it`));
    const theirs = fresh('pubkeys');
    chownSync(theirs, NOBODY, NOBODY);
    assertRefused(await outcome(await args(theirs), 'udprepeater started'), new RegExp(`--subscriptions-sign-check ${esc(theirs)}: owned by uid ${NOBODY}`));
    // The control: a directory of ours starts.
    assert.equal((await outcome(await args(fresh('pubkeys')), 'udprepeater started')).refused, false);
  });

  test('on SIGHUP a directory or key file no longer ours is refused and the running config is kept', async () => {
    const state = fresh('state');
    const serve = Daemon.spawn([...(await serveArgs(state)), '--log-format', 'json', '--metrics', 'off']);
    try {
      await serve.log.waitFor('udprepeater started', {}, { ms: 10_000 });
      chmodSync(state, 0o777);
      serve.signal('SIGHUP');
      const r = await serve.log.waitFor('reload refused; keeping the running config');
      assert.match(String(r['error']), new RegExp(`--state-dir ${esc(state)}: group or others can write it`));
    } finally {
      await serve.stop();
    }

    const tickets = fresh('tickets');
    const k = await keygen();
    const agent = Daemon.spawn([...(await agentArgs(['--key-file', k, '--ticket-key-dir', tickets])), '--log-format', 'json', '--metrics', 'off']);
    try {
      await agent.log.waitFor('udprepeater agent running', {}, { ms: 10_000 });
      chmodSync(tickets, 0o750);
      agent.signal('SIGHUP');
      const r1 = await agent.log.waitFor('reload refused; keeping the running config');
      assert.match(String(r1['error']), new RegExp(`--ticket-key-dir ${esc(tickets)}: group or others can read or write the ticket keys \\(mode 0750\\)`));
      chmodSync(tickets, 0o700);
      chownSync(k, NOBODY, NOBODY);
      agent.signal('SIGHUP');
      const r2 = await agent.log.waitFor('reload refused; keeping the running config', {}, { count: 2 });
      assert.match(String(r2['error']), new RegExp(`key file ${esc(k)}: owned by uid ${NOBODY}`));
      // The control: once fixed, the same reload is applied.
      chownSync(k, 0, 0);
      agent.signal('SIGHUP');
      await agent.log.waitFor('config applied');
    } finally {
      await agent.stop();
    }
  });
});
