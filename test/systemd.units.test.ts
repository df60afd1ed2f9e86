// The shipped systemd units (systemd/) work as documented:
// - every unit passes `systemd-analyze verify`, as shipped. It checks that
//   ExecStart binaries exist. Ours name `udprepeater` bare, which systemd
//   looks up in /usr/local/bin and /usr/bin (where `npm install -g` puts it,
//   whichever the prefix); no udprepeater is installed here, so verify runs
//   in a mount namespace of its own with a stub bound over /usr/local/bin
//   (test/system/install.test.ts verifies them after a real `npm install -g`);
// - the nginx layout the README gives is one the sandboxed agent unit may
//   write (ProtectSystem=strict leaves it StateDirectory= alone), and the path
//   unit that reloads nginx watches exactly that directory's ticket.0.key;
// - the real agent (the CLI), run as the unit's user (created by
//   systemd-sysusers from systemd/udprepeater.sysusers, in a temporary root)
//   in the unit's directory layout, ownership and modes (its key in the
//   README's key directory, --key-dir), writes the ticket
//   files from a real repeater's schedule, slot 0 last.
// test/system/systemd.units.test.ts runs the same units under a real systemd.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, mkdirSync, mkdtempSync, readdirSync, statSync, watch, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { keygen, serve } from './helpers/attack.js';
import { Daemon } from './helpers/daemon.js';
import { freePort } from './helpers/net.js';
import { requirement } from './helpers/requirement.js';
import { agentUnitLayout, README, unitDirectives, UNITS_DIR, unitUser } from './helpers/units.js';

const tools = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
const sysusers = spawnSync('systemd-sysusers', ['--help'], { encoding: 'utf8' });
const unshare = spawnSync('unshare', ['--version'], { encoding: 'utf8' });
const isRoot = process.geteuid?.() === 0;
const { skip } = requirement(
  'systemd tools and root',
  'the systemd unit suite (test/systemd.units.test.ts)',
  'The shipped systemd units are NOT being checked.',
  tools.status !== 0 || sysusers.status !== 0 || unshare.status !== 0 ? { ok: false, reason: 'systemd-analyze, systemd-sysusers or unshare not found' } : isRoot ? { ok: true } : { ok: false, reason: 'not root (files are chowned to the unit user)' },
  'install with: apt-get install systemd util-linux',
);

const root = mkdtempSync(join(tmpdir(), 'udprepeater-units-'));
chmodSync(root, 0o755);
const cleanups: Array<() => unknown> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

describe('the shipped systemd units', { skip, timeout: 60_000 }, () => {
  test('every unit passes systemd-analyze verify as shipped, and the sysusers file creates the units\' user', () => {
    const bin = join(root, 'verify-bin');
    mkdirSync(bin, { recursive: true });
    writeFileSync(join(bin, 'udprepeater'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    const units = readdirSync(UNITS_DIR)
      .filter((f) => /\.(service|path|socket|timer)$/.test(f))
      .map((f) => join(UNITS_DIR, f));
    for (const u of units) {
      for (const exec of unitDirectives(u).get('ExecStart') ?? []) {
        if (/udprepeater/.test(exec.split(' ')[0]!)) assert.match(exec, /^udprepeater (serve|agent) /, `${u}: ExecStart names a path npm install -g may not use`);
      }
    }
    assert.ok(units.some((u) => u.endsWith('.path')), 'a path unit reloads nginx');
    // The namespace ends with the command: the host's /usr/local/bin is never touched.
    const r = spawnSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', 'mount --bind "$0" /usr/local/bin && exec systemd-analyze verify "$@"', bin, ...units], {
      encoding: 'utf8',
      cwd: UNITS_DIR,
      timeout: 30_000,
    });
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    assert.equal(`${r.stdout}${r.stderr}`.trim(), '', 'systemd-analyze verify warns');
    // A path unit's Unit= is not checked by verify: it must be one of ours.
    for (const u of units.filter((f) => f.endsWith('.path'))) {
      for (const target of unitDirectives(u).get('Unit') ?? []) assert.ok(readdirSync(UNITS_DIR).includes(target), `${u}: Unit=${target} is not shipped`);
    }
    const user = unitUser();
    assert.ok(user.uid > 0 && user.name === unitDirectives(join(UNITS_DIR, 'udprepeater-agent.service')).get('User')![0]);
  });

  test("the README's nginx key directory is the one the agent unit may write, and the path unit watches it", () => {
    const section = README.slice(README.indexOf('### nginx: ticket key files written by the agent'), README.indexOf('### The schedule'));
    const dir = /--ticket-key-dir (\S+)/.exec(section)?.[1];
    assert.ok(dir !== undefined, 'the README shows --ticket-key-dir');
    for (const m of section.matchAll(/ssl_session_ticket_key (\S+);/g)) assert.ok(m[1]!.startsWith(`${dir}/ticket.`), `nginx reads ${m[1]} outside ${dir}`);
    assert.doesNotMatch(section.slice(0, section.indexOf('```nginx')), /--ticket-reload-command/, 'the sandboxed agent cannot signal nginx');
    for (const unit of ['udprepeater-agent.service', 'udprepeater-agent@.service']) {
      const layout = agentUnitLayout(unit);
      assert.equal(layout.protectSystem, 'strict');
      assert.ok(layout.ticketDir !== null, `${unit}: no StateDirectory= for the ticket keys`);
      assert.equal(layout.ticketDirMode & 0o077, 0, `${unit}: StateDirectoryMode lets group or others in (the agent refuses it)`);
      assert.equal(unitDirectives(join(UNITS_DIR, unit)).get('PrivateUsers'), undefined, `${unit}: PrivateUsers= hides every other user's socket owner from the agent`);
    }
    assert.equal(agentUnitLayout('udprepeater-agent.service').ticketDir, dir, 'the README key directory is not the agent unit\'s StateDirectory');
    const watcher = unitDirectives(join(UNITS_DIR, 'udprepeater-nginx-reload.path'));
    assert.deepEqual(watcher.get('PathChanged'), [`${dir}/ticket.0.key`]);
    const reload = unitDirectives(join(UNITS_DIR, watcher.get('Unit')![0]!));
    assert.match(reload.get('ExecStart')![0]!, /^\/usr\/bin\/systemctl (try-reload-or-restart|reload) nginx\.service$/);
    assert.equal(reload.get('User'), undefined, 'the reload runs as root');
  });

  test("the agent, run as the unit's user in the unit's layout, writes the ticket files from a real repeater, ticket.0.key last", async () => {
    const user = unitUser();
    const layout = agentUnitLayout('udprepeater-agent.service');
    assert.ok(layout.ticketDir !== null);
    const ticketDir: string = layout.ticketDir;
    // The tree systemd and the README's install steps make, under a temporary root.
    const r = join(root, 'layout');
    const at = (p: string) => join(r, p);
    mkdirSync(at('/var/lib'), { recursive: true, mode: 0o755 });
    // StateDirectory=udprepeater/tickets: parents root's 0755, the directory the user's, StateDirectoryMode.
    mkdirSync(at(ticketDir), { recursive: true, mode: 0o755 });
    chownSync(at(ticketDir), user.uid, user.gid);
    chmodSync(at(ticketDir), layout.ticketDirMode);
    // ConfigurationDirectory=udprepeater (0750) and the README's keys directory, group udprepeater; the key the user's, 0600.
    const conf = at('/etc/udprepeater');
    mkdirSync(join(conf, 'keys'), { recursive: true });
    for (const d of [conf, join(conf, 'keys')]) {
      chownSync(d, 0, user.gid);
      chmodSync(d, layout.configDirMode);
    }
    // The README's key directory: the key the user's, 0600; DIR/sealing root's, as `echo NAME > DIR/sealing` leaves it.
    const fleetKey = await keygen();
    const key = join(conf, 'keys', 'fleet.key');
    copyFileSync(fleetKey, key);
    chownSync(key, user.uid, user.gid);
    chmodSync(key, 0o600);
    writeFileSync(join(conf, 'keys', 'sealing'), 'fleet.key\n', { mode: 0o644 });

    const port = await freePort();
    const state = mkdtempSync(join(tmpdir(), 'udprepeater-units-state-'));
    const rep = await serve(['--listen-sealed', `127.0.0.1:${port},channel=ssl,key=ssl,tickets`, '--key-file', fleetKey, '--state-dir', state]);
    cleanups.push(() => rep.stop());

    const agentConf = join(conf, 'agent.conf');
    writeFileSync(
      agentConf,
      [`repeater = 127.0.0.1:${port}`, `key-dir = ${join(conf, 'keys')}`, `local = 127.0.0.1:${await freePort()}`, `deliver = 127.0.0.1:${await freePort()}`, 'channel-key = ssl', `ticket-key-dir = ${at(ticketDir)}`, 'log-format = json', ''].join('\n'),
    );
    chownSync(agentConf, 0, user.gid);
    chmodSync(agentConf, 0o640);

    const renamed: string[] = [];
    const w = watch(at(ticketDir), (_event, name) => {
      if (name !== null && /^ticket\.\d+\.key$/.test(name)) renamed.push(name);
    });
    cleanups.push(() => w.close());
    const agent = Daemon.spawn(['agent', '--config', agentConf], {}, { uid: user.uid, gid: user.gid });
    cleanups.push(() => agent.stop());
    await agent.log.waitFor('ticket key files written', {}, { ms: 10_000 });
    for (let i = 0; i < 4; i++) {
      const st = statSync(join(at(ticketDir), `ticket.${i}.key`));
      assert.equal(st.uid, user.uid, `ticket.${i}.key is the unit user's`);
      assert.equal(st.mode & 0o777, 0o600);
      assert.equal(st.size, 80);
    }
    // inotify reports in order: the last slot file replaced is ticket.0.key, the path unit's trigger.
    await new Promise((resolve) => setImmediate(resolve));
    assert.ok(renamed.length >= 4, `saw ${renamed.join(', ')}`);
    assert.equal(renamed[renamed.length - 1], 'ticket.0.key', `order: ${renamed.join(', ')}`);
    assert.ok(renamed.indexOf('ticket.0.key') > renamed.lastIndexOf('ticket.3.key'), `order: ${renamed.join(', ')}`);
  });
});
