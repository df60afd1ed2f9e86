// The shipped units under a real systemd (PID 1 of its own PID and mount
// namespaces, test/helpers/systemd-ns.ts; the network is the host's):
// - udprepeater-agent.service runs the real agent (the CLI under test) as its
//   user, with its whole sandbox (ProtectSystem=strict, ProcSubset=pid,
//   ProtectProc=invisible, PrivateTmp, the syscall filter, ...), beside a real
//   uWSGI node, against a real repeater outside;
// - it writes the fleet's ticket keys where the README tells nginx to read
//   them (its StateDirectory=), and udprepeater-nginx-reload.path reloads a
//   real nginx (run by the same systemd) when a rotation rewrites them;
// - the node's updates still reach the fleet through the sandboxed agent (it
//   reads /proc/self/net/udp to know the node's sockets), and a datagram from
//   `nobody`'s socket does not.
// Drop-ins change only what a test must: ExecStart (the CLI, not
// /usr/local/bin), ConfigurationDirectory= (none: /etc is the host's),
// DefaultDependencies=no (nothing of the host's boot), logs to files.

import assert from 'node:assert/strict';
import { chmodSync, chownSync, copyFileSync, mkdirSync, mkdtempSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { keygen, type Running, serve } from '../helpers/attack.js';
import { CLI_UNDER_TEST, type Daemon, spawnAgent } from '../helpers/daemon.js';
import { LocalUser } from '../helpers/local-user.js';
import { freePort } from '../helpers/net.js';
import { NGINX_BIN, nginxAvailability, writeNginxConfig } from '../helpers/nginx.js';
import { requirement } from '../helpers/requirement.js';
import { FileLog, SystemdNs, systemdNsAvailability } from '../helpers/systemd-ns.js';
import { makeCert, opensslAvailability } from '../helpers/tls.js';
import { agentUnitLayout, UNITS_DIR, unitUser } from '../helpers/units.js';
import { killAllUwsgi, untilValue, UwsgiNode, uwsgiAvailability } from '../helpers/uwsgi.js';

const avail = [systemdNsAvailability(), uwsgiAvailability(), nginxAvailability(), opensslAvailability()].find((a) => !a.ok) ?? { ok: true as const };
const { skip, require: requireAll } = requirement(
  'systemd as PID 1 in a namespace, uWSGI, nginx and openssl',
  'the systemd units suite (test/system/systemd.units.test.ts)',
  'The shipped units are NOT being run under systemd.',
  avail,
  'run as root with systemd, util-linux, uwsgi-core, nginx-light and openssl installed',
);

const ROTATE_S = 3;
const WAIT = 15_000;

describe('the shipped units under a real systemd', { skip, timeout: 120_000 }, () => {
  let ns: SystemdNs;
  let agentLog: FileLog;
  let nginxLog: FileLog;
  let rep: Running;
  let nodeA: UwsgiNode;
  let nodeB: UwsgiNode;
  let agentB: Daemon;
  let local: number;
  let uid: number;
  let ticketDir: string;
  const nobody = LocalUser.open(65534);

  before(async () => {
    requireAll();
    const stage = mkdtempSync(join(tmpdir(), 'udprepeater-systemd-'));
    chmodSync(stage, 0o755);
    const user = unitUser(join(stage, 'sysroot'));
    uid = user.uid;
    const layout = agentUnitLayout('udprepeater-agent.service');
    assert.ok(layout.ticketDir !== null, 'the agent unit has no StateDirectory= for the ticket keys');
    ticketDir = layout.ticketDir;

    const key = await keygen();
    const repPort = await freePort();
    rep = await serve(['--listen-sealed', `127.0.0.1:${repPort},channel=ssl,key=ssl,tickets`, '--key-file', key, '--state-dir', mkdtempSync(join(tmpdir(), 'udprepeater-systemd-state-')), '--ticket-rotate', String(ROTATE_S), '--ticket-lifetime', String(ROTATE_S)]);

    // Node A behind the agent the unit runs; node B behind an agent outside, to see what reaches the fleet.
    local = await freePort();
    nodeA = await UwsgiNode.start({ name: 'node-unit', cacheNode: `127.0.0.1:${local}`, subscribeTo: [] });
    const localB = await freePort();
    nodeB = await UwsgiNode.start({ name: 'node-b', cacheNode: `127.0.0.1:${localB}`, subscribeTo: [] });
    agentB = await spawnAgent(['--repeater', `127.0.0.1:${repPort}`, '--key-file', key, '--local', `127.0.0.1:${localB}`, '--deliver', nodeB.udpAddress, '--channel-key', 'ssl', '--subscribe-interval', '1']);

    // /run/test in the namespace: the agent's config and key (the unit user's, 0600), nginx's files.
    const run = join(stage, 'run', 'test');
    mkdirSync(join(run, 'nginx'), { recursive: true });
    chmodSync(join(stage, 'run'), 0o755);
    chmodSync(run, 0o755);
    const keyIn = join(run, 'fleet.key');
    copyFileSync(key, keyIn);
    chownSync(keyIn, user.uid, user.gid);
    chmodSync(keyIn, 0o600);
    writeFileSync(
      join(run, 'agent.conf'),
      [`repeater = 127.0.0.1:${repPort}`, 'key-file = /run/test/fleet.key', `local = 127.0.0.1:${local}`, `deliver = ${nodeA.udpAddress}`, 'channel-key = ssl', 'subscribe-interval = 1', `ticket-key-dir = ${ticketDir}`, 'log-format = json', ''].join('\n'),
      { mode: 0o644 },
    );
    const cert = makeCert();
    copyFileSync(cert.cert, join(run, 'nginx', 'cert.pem'));
    copyFileSync(cert.key, join(run, 'nginx', 'key.pem'));
    const ticketFiles = [0, 1, 2, 3].map((i) => `${ticketDir}/ticket.${i}.key`);
    writeNginxConfig(join(run, 'nginx'), await freePort(), { ...cert, cert: '/run/test/nginx/cert.pem', key: '/run/test/nginx/key.pem' }, ticketFiles, '/run/test/nginx');

    // The units as shipped, and the drop-ins a test needs.
    const units = join(stage, 'units');
    mkdirSync(units);
    for (const f of readdirSync(UNITS_DIR)) if (/\.(service|path)$/.test(f)) copyFileSync(join(UNITS_DIR, f), join(units, f));
    const dropIn = (unit: string, text: string) => {
      mkdirSync(join(units, `${unit}.d`), { recursive: true });
      writeFileSync(join(units, `${unit}.d`, 'test.conf'), text);
    };
    const logTo = (file: string) => `StandardOutput=append:/run/test/${file}\nStandardError=append:/run/test/${file}\n`;
    dropIn(
      'udprepeater-agent.service',
      `[Unit]\nDefaultDependencies=no\n[Service]\nExecStart=\nExecStart=${process.execPath} ${CLI_UNDER_TEST} agent --config /run/test/agent.conf\nConfigurationDirectory=\n${logTo('agent.log')}`,
    );
    dropIn('udprepeater-nginx-reload.path', '[Unit]\nDefaultDependencies=no\n');
    dropIn('udprepeater-nginx-reload.service', `[Unit]\nDefaultDependencies=no\n[Service]\n${logTo('reload.log')}`);
    const nginxArgs = '-p /run/test/nginx -c /run/test/nginx/nginx.conf';
    writeFileSync(
      join(units, 'nginx.service'),
      `[Unit]\nDefaultDependencies=no\n[Service]\nType=exec\nExecStart=${NGINX_BIN} ${nginxArgs} -g "daemon off;"\nExecReload=${NGINX_BIN} ${nginxArgs} -s reload\n${logTo('nginx.out')}`,
    );
    writeFileSync(join(units, 'udprepeater-test.target'), '[Unit]\nDefaultDependencies=no\nWants=udprepeater-agent.service udprepeater-nginx-reload.path\nAfter=udprepeater-agent.service udprepeater-nginx-reload.path\n');
    copyFileSync(user.passwd, join(stage, 'passwd'));
    copyFileSync(user.group, join(stage, 'group'));

    ns = await SystemdNs.boot(stage, 'udprepeater-test.target');
    agentLog = new FileLog(ns.path('/run/test/agent.log'));
    nginxLog = new FileLog(ns.path('/run/test/nginx/error.log'));
    await agentLog.log.waitFor('udprepeater agent running', {}, { ms: WAIT }).catch((err: Error) => {
      throw new Error(`${err.message}\n${ns.systemctl('status', 'udprepeater-agent.service').output}\n${agentLog.text}`);
    });
  });

  after(async () => {
    agentLog?.close();
    nginxLog?.close();
    await ns?.close();
    await Promise.all([nodeA?.kill(), nodeB?.kill()]);
    killAllUwsgi();
    await agentB?.stop();
    await rep?.stop();
    nobody.close();
  });

  test("the agent unit writes the ticket files in its StateDirectory, as its user, and the path unit reloads nginx when they change", async () => {
    await agentLog.log.waitFor('ticket key files written', {}, { ms: WAIT });
    const dir = ns.path(ticketDir);
    const st = statSync(dir);
    assert.equal(st.uid, uid, 'StateDirectory= is the unit user\'s');
    assert.equal(st.mode & 0o777, 0o700);
    for (let i = 0; i < 4; i++) {
      const f = statSync(join(dir, `ticket.${i}.key`));
      assert.equal(f.uid, uid);
      assert.equal(f.mode & 0o777, 0o600);
    }
    const started = ns.systemctl('start', 'nginx.service');
    assert.equal(started.status, 0, started.output);
    await nginxLog.log.until('nginx to start', () => (/start worker process/.test(nginxLog.text) ? true : undefined), WAIT);
    const writes = agentLog.log.matching('ticket key files written').length;
    const hups = () => (nginxLog.text.match(/signal 1 \(SIGHUP\) received/g) ?? []).length;
    const before = hups();
    // The next rotation rewrites the files; nothing but the path unit tells nginx.
    await agentLog.log.waitFor('ticket key files written', {}, { count: writes + 1, ms: WAIT });
    await nginxLog.log.until('nginx to be reloaded by udprepeater-nginx-reload.path', () => (hups() > before ? true : undefined), WAIT).catch((err: Error) => {
      throw new Error(`${err.message}\n${ns.systemctl('status', 'udprepeater-nginx-reload.path', 'udprepeater-nginx-reload.service').output}`);
    });
  });

  test("the sandboxed agent still tells the node's sockets from nobody's: the node syncs, nobody's datagram is dropped", async () => {
    await nobody.send(encodeCacheSet(Buffer.from('planted-session'), Buffer.from('attacker-chosen-master-secret')), local);
    const v = Buffer.from(`through-the-unit-${Date.now()}`);
    await nodeA.set('through-the-unit', v);
    await untilValue(nodeB, 'through-the-unit', v);
    assert.equal(await nodeB.get('planted-session'), null, 'nobody injected through the sandboxed agent');
    await agentLog.log.waitFor('datagram on --local from a socket the node does not own; dropped', {}, { ms: WAIT });
  });
});
