// --key-dir DIR: the key ring as the files of one directory, listed again on
// every SIGHUP, so daemons started with flags rotate keys by the README's
// runbook, one file operation a step:
// - what the ring is made of: every DIR/*.key opens, DIR/sealing names the
//   one that seals; refusals name the directory or file and the problem;
// - real daemons (the CLI) refuse a bad directory at start with exit 78, and
//   a reload that meets a bad file keeps the running ring;
// - the runbook end to end: a flag-started repeater and two flag-started
//   agents (each its own directory, as separate hosts) under continuous
//   traffic through all four steps; every datagram arrives, in order.

import assert from 'node:assert/strict';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { KeyRing } from '../src/crypto/keyring.js';
import { keyDirFiles } from '../src/crypto/keydir.js';
import { sodiumReady } from '../src/crypto/secretbox.js';
import { encodeCacheSet } from '../src/wire/cache.js';
import { agent, httpGet, type Running, serve } from './helpers/attack.js';
import { runCli } from './helpers/daemon.js';
import { newKeyFile } from './helpers/keys.js';
import { freePort, Receiver, Sender } from './helpers/net.js';
import { agentConfigOf, configOf } from './helpers/repeater.js';

const root = mkdtempSync(join(tmpdir(), 'udprepeater-keydir-'));
const open: Array<{ close(): unknown } | { stop(): unknown }> = [];
after(async () => {
  for (const o of open.reverse()) await ('stop' in o ? o.stop() : o.close());
  rmSync(root, { recursive: true, force: true });
});

let dirs = 0;
/** A key directory holding copies of `keys` (name -> key file), mode 0600, and DIR/sealing naming `sealing`. */
function keyDirOf(keys: Record<string, string>, sealing: string | null): string {
  const dir = join(root, `d${++dirs}`);
  mkdirSync(dir, { mode: 0o700 });
  for (const [name, file] of Object.entries(keys)) put(dir, name, file);
  if (sealing !== null) writeFileSync(join(dir, 'sealing'), `${sealing}\n`);
  return dir;
}

function put(dir: string, name: string, file: string): void {
  copyFileSync(file, join(dir, name));
  chmodSync(join(dir, name), 0o600);
}

const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from('v'), 0);

describe('--key-dir: what the ring is made of', () => {
  test('every *.key opens, DIR/sealing names the one that seals, other names and dotfiles are left alone', async () => {
    await sodiumReady();
    const a = newKeyFile();
    const b = newKeyFile();
    const dir = keyDirOf({ '2026-11.key': a, '2026-12.key': b, '.2027-01.key': newKeyFile(), 'README': a }, '2026-12.key');
    assert.deepEqual(keyDirFiles(dir), [join(dir, '2026-12.key'), join(dir, '2026-11.key')]);
    const serveCfg = configOf(['--listen-sealed', '127.0.0.1:0', '--key-dir', dir, '--metrics', 'off']);
    assert.deepEqual(serveCfg.keyFiles, [join(dir, '2026-12.key'), join(dir, '2026-11.key')]);
    const agentCfg = agentConfigOf(['--repeater', '127.0.0.1:7272', '--deliver', '127.0.0.1:4141', '--channel-key', 'ssl', '--key-dir', dir]);
    const ring = KeyRing.load(agentCfg.keyFiles);
    assert.deepEqual(
      ring.describe().map((k) => [k.file, k.seals]),
      [
        [join(dir, '2026-12.key'), true],
        [join(dir, '2026-11.key'), false],
      ],
    );
    ring.destroy();
  });

  test('refusals name the directory or the file and the problem', async () => {
    await sodiumReady();
    const k = newKeyFile();
    const cases: Array<[string, () => string, RegExp]> = [
      ['no sealing file', () => keyDirOf({ 'a.key': k }, null), /key directory .*d\d+: no .*\/sealing naming the key file that seals \(a\.key\); write it: echo a\.key > /],
      ['sealing names a key that is not there', () => keyDirOf({ 'a.key': k }, 'b.key'), /sealing file .*\/sealing: names "b\.key", not a key file in .* \(it holds a\.key\)/],
      ['sealing names a hidden file', () => keyDirOf({ 'a.key': k, '.b.key': newKeyFile() }, '.b.key'), /names "\.b\.key", not a key file/],
      ['no key at all', () => keyDirOf({}, 'a.key'), /key directory .*: holds no \*\.key file \(udprepeater keygen /],
      ['a directory others can write', () => {
        const d = keyDirOf({ 'a.key': k }, 'a.key');
        chmodSync(d, 0o777);
        return d;
      }, /key directory .*: group or others can write it \(mode 0777\); run chmod go-w /],
      ['a sealing file others can write', () => {
        const d = keyDirOf({ 'a.key': k }, 'a.key');
        chmodSync(join(d, 'sealing'), 0o666);
        return d;
      }, /sealing file .*\/sealing: group or others can write it \(mode 0666\)/],
      ['a sealing file that is a symbolic link', () => {
        const d = keyDirOf({ 'a.key': k }, null);
        writeFileSync(join(root, 'elsewhere'), 'a.key\n');
        symlinkSync(join(root, 'elsewhere'), join(d, 'sealing'));
        return d;
      }, /sealing file .*\/sealing: a symbolic link; refusing to follow it/],
      ['no such directory', () => join(root, 'missing'), /key directory .*missing: ENOENT/],
    ];
    for (const [what, make, want] of cases) {
      const dir = make();
      assert.throws(() => configOf(['--listen-sealed', '127.0.0.1:0', '--key-dir', dir, '--metrics', 'off']), want, what);
    }
    // The key files themselves: each passes the key file checks when the ring reads it.
    const loose = keyDirOf({ 'a.key': k, 'b.key': k }, 'a.key');
    chmodSync(join(loose, 'b.key'), 0o644);
    assert.throws(() => KeyRing.load(keyDirFiles(loose)), /key file .*\/b\.key: group or others can access it \(mode 0644\); run chmod 600/);
    const linked = keyDirOf({ 'a.key': k }, 'a.key');
    symlinkSync(k, join(linked, 'b.key'));
    assert.throws(() => KeyRing.load(keyDirFiles(linked)), /key file .*\/b\.key: a symbolic link; refusing to follow it/);
    // Which key seals is said in one place: the directory, or the first --key-file, never both.
    const both = keyDirOf({ 'a.key': k }, 'a.key');
    assert.throws(
      () => configOf(['--listen-sealed', '127.0.0.1:0', '--key-dir', both, '--key-file', k, '--metrics', 'off']),
      /--key-dir .* and --key-file .*: give one \(every \*\.key in the directory opens, and .*\/sealing names the one that seals\)/,
    );
  });

  test('serve and agent refuse a bad key directory at start with exit 78, naming the file; key-dir works in a config file', async () => {
    const k = newKeyFile();
    const dir = keyDirOf({ 'a.key': k, 'b.key': k }, 'c.key');
    const serveRun = await runCli(['serve', '--listen-sealed', `127.0.0.1:${await freePort()}`, '--key-dir', dir, '--metrics', 'off']);
    assert.equal(serveRun.code, 78, serveRun.stderr);
    assert.match(serveRun.stderr, /sealing file .*\/sealing: names "c\.key", not a key file/);
    const conf = join(root, 'agent.conf');
    writeFileSync(conf, ['repeater = 127.0.0.1:7272', 'deliver = 127.0.0.1:4141', 'channel-key = ssl', `key-dir = ${dir}`, ''].join('\n'));
    const agentRun = await runCli(['agent', '--config', conf]);
    assert.equal(agentRun.code, 78, agentRun.stderr);
    assert.match(agentRun.stderr, new RegExp(`${conf}:4: sealing file .*/sealing: names "c\\.key"`));
    // Both keys hold the same key: refused like two --key-file flags naming one key.
    writeFileSync(join(dir, 'sealing'), 'a.key\n');
    const same = await runCli(['agent', '--config', conf]);
    assert.equal(same.code, 78, same.stderr);
    assert.match(same.stderr, /key file .*\/b\.key: holds the same key as .*\/a\.key/);
  });
});

interface Host {
  readonly dir: string;
  readonly daemon: Running;
}

/** The ring a daemon logged last: [file, seals] pairs. */
function lastRing(h: Host): Array<[string, boolean]> {
  const all = h.daemon.d.log.matching('key ring loaded');
  const keys = all[all.length - 1]!['keys'] as Array<{ file: string; seals: boolean }>;
  return keys.map((k) => [k.file, k.seals]);
}

/** SIGHUP, then the daemon's verdict: true when it applied the reload, else the refusal's message. */
async function reload(h: Host): Promise<true | string> {
  const log = h.daemon.d.log;
  const from = log.records.length;
  h.daemon.d.signal('SIGHUP');
  await log.waitFor('SIGHUP: reloading', {}, { from });
  return log.until<true | string>('the reload to be applied or refused', () => {
    if (log.matching('config reloaded', {}, from).length > 0) return true;
    const refused = log.matching('reload refused; keeping the running config', {}, from);
    return refused.length > 0 ? String(refused[0]!['error']) : undefined;
  });
}

/**
 * A repeater and two agents, each flag-started with a key directory of its
 * own (as separate hosts) holding `old`, which seals.
 */

async function startFleet(old: string): Promise<{ rep: Host; src: Host; dst: Host; node: Receiver; local: number; sender: Sender }> {
  const dirOf = () => keyDirOf({ '2026-11.key': old }, '2026-11.key');
  const repDir = dirOf();
  const rep: Host = { dir: repDir, daemon: await serve(['--listen-sealed', '127.0.0.1:0', '--key-dir', repDir]) };
  open.push(rep.daemon);
  const port = await rep.daemon.d.portOf('127.0.0.1:0');
  const agentOf = async (deliver: string, local: number): Promise<Host> => {
    const dir = dirOf();
    const h: Host = { dir, daemon: await agent(['--repeater', `127.0.0.1:${port}`, '--local', `127.0.0.1:${local}`, '--deliver', deliver, '--channel-key', 'ssl', '--key-dir', dir]) };
    open.push(h.daemon);
    return h;
  };
  const srcNode = await Receiver.open();
  const node = await Receiver.open();
  const sender = Sender.open();
  open.push(srcNode, node, sender);
  const local = await freePort();
  const src = await agentOf(srcNode.address, local);
  const dst = await agentOf(node.address, await freePort());
  await rep.daemon.d.log.waitFor('subscribed', { form: 'sealed' }, { count: 2 });
  return { rep, src, dst, node, local, sender };
}

describe('--key-dir: the rotation runbook with flag-started daemons', () => {
  test('one file operation a step, continuous traffic, every datagram arrives in order', { timeout: 60_000 }, async () => {
    const old = newKeyFile();
    const next = newKeyFile();
    const { rep, src, dst, node, local, sender } = await startFleet(old);
    const hosts = [rep, src, dst];
    let sent = 0;
    let stop = false;
    let failure: unknown = null;
    const traffic = (async () => {
      while (!stop) {
        if (sent - node.received.length >= 32) await node.waitFor(sent - 31);
        await sender.send(set(`k${sent}`), local);
        sent++;
      }
    })().catch((err: unknown) => (failure = err));
    const flowing = async (what: string) => {
      const want = node.received.length + 150;
      await node.waitFor(want, 10_000).catch((err: unknown) => {
        throw new Error(`${what}: ${String(err)}${failure === null ? '' : ` (sender: ${String(failure)})`}`);
      });
    };
    await flowing('before the rotation');
    // 1. The new key lands in every host's directory: nothing changes until a reload.
    for (const h of hosts) put(h.dir, '2026-12.key', next);
    await flowing('step 1');
    // 2. Reload everywhere: every host opens both, all still seal with the old key.
    for (const h of hosts) assert.equal(await reload(h), true);
    for (const h of hosts) assert.deepEqual(lastRing(h), [[join(h.dir, '2026-11.key'), true], [join(h.dir, '2026-12.key'), false]]);
    await flowing('step 2');
    // 3. DIR/sealing names the new key, reload everywhere: hosts switch one by one.
    for (const h of hosts) {
      writeFileSync(join(h.dir, 'sealing'), '2026-12.key\n');
      assert.equal(await reload(h), true);
      assert.deepEqual(lastRing(h), [[join(h.dir, '2026-12.key'), true], [join(h.dir, '2026-11.key'), false]]);
      await flowing(`step 3 on ${h.dir}`);
    }
    // 4. The old key file goes, reload everywhere.
    for (const h of hosts) {
      rmSync(join(h.dir, '2026-11.key'));
      assert.equal(await reload(h), true);
      assert.deepEqual(lastRing(h), [[join(h.dir, '2026-12.key'), true]]);
      await flowing(`step 4 on ${h.dir}`);
    }
    stop = true;
    await traffic;
    assert.equal(failure, null);
    const got = await node.waitFor(sent);
    assert.ok(sent >= 1000, `only ${sent} datagrams were sent during the rotation`);
    for (let i = 0; i < sent; i++) assert.deepEqual(got[i], set(`k${i}`), `datagram ${i}`);
    const m = await rep.daemon.metrics();
    assert.equal(m.dropped('unknown_key') + m.dropped('auth_failed'), 0);
    const health = JSON.parse((await httpGet(rep.daemon.metricsPort, '/healthz')).body) as { keys: string[] };
    assert.equal(health.keys.length, 1);
  });

  test('a reload that meets a bad file keeps the running ring and names the file and the problem', { timeout: 60_000 }, async () => {
    const old = newKeyFile();
    const { rep, dst, node, local, sender } = await startFleet(old);
    const delivered = async () => {
      const n = node.received.length;
      await sender.send(set(`after-${n}`), local);
      assert.deepEqual((await node.waitFor(n + 1))[n], set(`after-${n}`));
    };
    await delivered();
    const bad: Array<[string, (dir: string) => void, (dir: string) => void, RegExp]> = [
      ['a key others can read', (d) => {
        put(d, 'loose.key', newKeyFile());
        chmodSync(join(d, 'loose.key'), 0o644);
      }, (d) => rmSync(join(d, 'loose.key')), /key file .*\/loose\.key: group or others can access it \(mode 0644\); run chmod 600/],
      ['a key that is a symbolic link', (d) => symlinkSync(newKeyFile(), join(d, 'linked.key')), (d) => rmSync(join(d, 'linked.key')), /key file .*\/linked\.key: a symbolic link; refusing to follow it/],
      ['a key file that holds no key', (d) => writeFileSync(join(d, 'short.key'), 'not a key', { mode: 0o600 }), (d) => rmSync(join(d, 'short.key')), /key file .*\/short\.key: not a 32-byte key/],
      ['sealing names a key not in the directory', (d) => writeFileSync(join(d, 'sealing'), '2027-01.key\n'), (d) => writeFileSync(join(d, 'sealing'), '2026-11.key\n'), /sealing file .*\/sealing: names "2027-01\.key", not a key file/],
    ];
    for (const h of [rep, dst]) {
      const ring = lastRing(h);
      for (const [what, breakIt, repair, want] of bad) {
        breakIt(h.dir);
        const verdict = await reload(h);
        assert.notEqual(verdict, true, `${what}: the reload was applied`);
        assert.match(verdict as string, want, what);
        assert.deepEqual(lastRing(h), ring, `${what}: the ring changed`);
        await delivered();
        repair(h.dir);
      }
      assert.equal(await reload(h), true);
      assert.deepEqual(lastRing(h), ring);
      await delivered();
    }
  });
});
