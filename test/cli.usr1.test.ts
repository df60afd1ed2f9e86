// SIGUSR1 on the real daemons: the agent announces again as new (so the
// repeater warms its node), serve logs and ignores it, and neither opens
// Node's inspector, which Node does on a SIGUSR1 nobody handles.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Daemon, runCli } from './helpers/daemon.js';
import { freePort, Receiver } from './helpers/net.js';

const work = mkdtempSync(join(tmpdir(), 'udprepeater-usr1-'));
const open: Array<{ close?(): unknown; stop?(): unknown }> = [];
after(async () => {
  for (const o of open.reverse()) await (o.stop?.() ?? o.close?.());
  rmSync(work, { recursive: true, force: true });
});

const inspector = (d: Daemon) => d.log.records.filter((r) => /Debugger listening|inspector/i.test(r.msg));

test('serve logs SIGUSR1 and ignores it: no inspector opens, forwarding goes on', async () => {
  const d = await Daemon.serve(['--listen', '127.0.0.1:0', '--metrics', 'off']);
  open.push(d);
  d.signal('SIGUSR1');
  await d.log.waitFor('SIGUSR1: ignored');
  assert.deepEqual(inspector(d), []);
  assert.equal(d.child.exitCode, null);
});

test('the agent announces as new on SIGUSR1: the repeater sees an unsubscribe, then a subscribe', async () => {
  const key = join(work, 'k.key');
  assert.equal((await runCli(['keygen', key])).code, 0);
  const rep = await Daemon.serve(['--listen-sealed', '127.0.0.1:0', '--key-file', key, '--metrics', 'off']);
  open.push(rep);
  const port = await rep.portOf('127.0.0.1:0');
  const node = await Receiver.open();
  open.push(node);
  const bind = await freePort();
  const agent = Daemon.spawn(['agent', '--log-format', 'json', '--repeater', `127.0.0.1:${port}`, '--key-file', key, '--local', `127.0.0.1:${await freePort()}`, '--deliver', node.address, '--channel-key', 'ssl', '--bind', `127.0.0.1:${bind}`]);
  open.push(agent);
  await agent.log.waitFor('udprepeater agent running');
  const address = `127.0.0.1:${bind}`;
  await rep.log.waitFor('subscribed', { address, form: 'sealed' });
  const from = rep.log.length;
  agent.signal('SIGUSR1');
  await agent.log.waitFor('announced as new to the repeaters: the node will be warmed');
  await rep.log.waitFor('unsubscribed', { address, form: 'sealed' }, { from });
  const sub = await rep.log.waitFor('subscribed', { address, form: 'sealed' }, { from });
  assert.ok(rep.log.records.indexOf(sub) > rep.log.records.findIndex((r, i) => i >= from && r.msg === 'unsubscribed'), 'unsubscribe first, then subscribe');
  assert.deepEqual(inspector(agent), []);
  assert.equal(agent.child.exitCode, null);
});
