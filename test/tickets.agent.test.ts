// The agent's ticket files, black box (the real CLI on loopback), for the
// operator who follows the README: an agent on a host with nginx or HAProxy
// and no node runs without --deliver, and an agent started before its
// server does not fail its first reload (the write that creates the files
// runs none; a later change does).

import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { encodeCacheSet } from '../src/wire/cache.js';
import { agent, keygen, type Running, serve } from './helpers/attack.js';
import { freePort } from './helpers/net.js';
import { Scope } from './helpers/scope.js';

const root = mkdtempSync(join(tmpdir(), 'udprepeater-ticket-agent-'));
const scope = new Scope();
let n = 0;
const fresh = (name: string) => join(root, `${name}-${++n}`);

describe('the agent writes ticket files for a server', { timeout: 60_000 }, () => {
  let key: string;
  before(async () => {
    key = await keygen();
  });

  async function repeater(): Promise<{ r: Running; plain: number; sealed: number }> {
    const [plain, sealed] = [await freePort(), await freePort()];
    const r = await serve(['--listen', `127.0.0.1:${plain},channel=ssl,key=ssl`, '--listen-sealed', `127.0.0.1:${sealed},channel=ssl,key=ssl,tickets`, '--key-file', key, '--state-dir', fresh('state')]);
    scope.track({ close: () => r.stop() });
    return { r, plain, sealed };
  }

  async function ticketAgent(sealed: number, dir: string, extra: string[]): Promise<Running> {
    const a = await agent(['--repeater', `127.0.0.1:${sealed}`, '--key-file', key, '--local', `127.0.0.1:${await freePort()}`, '--channel-key', 'ssl', '--ticket-key-dir', dir, ...extra]);
    scope.track({ close: () => a.stop() });
    return a;
  }

  test('without --deliver: ticket keys only; cache updates on the channel are dropped, counted', async () => {
    const { plain, sealed } = await repeater();
    const a = await ticketAgent(sealed, fresh('keys'), []);
    await a.d.log.waitFor('ticket key files written');
    await a.d.log.waitFor('haproxy ticket key file written');
    await scope.sender.send(encodeCacheSet(Buffer.from('k'), Buffer.from('v'), 0), plain);
    // A counter has no event to await: polled, bounded.
    const deadline = Date.now() + 5000;
    while ((await a.metrics()).value('udprepeater_agent_datagrams_dropped_total', { channel: 'to_node', reason: 'no_subscribers' }) < 1) {
      assert.ok(Date.now() < deadline, 'the update reached the agent and was dropped');
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal((await a.metrics()).value('udprepeater_agent_datagrams_forwarded_total', { channel: 'to_node' }), 0);
  });

  test('started before its server: the write that creates the files runs no reload; a change to existing files does', async () => {
    const dir = fresh('keys');
    const marker = join(root, 'reloads');
    // What a reload of a server that does not run yet looks like: it fails.
    const reload = ['--deliver', `127.0.0.1:${await freePort()}`, '--ticket-reload-command', `echo ran >> ${marker}; exit 1`];
    const first = await ticketAgent((await repeater()).sealed, dir, reload);
    const created = await first.d.log.waitFor('ticket key files written');
    assert.equal(created['created'], true);
    await first.d.log.waitFor('ticket key files created: the reload command is not run, no server can be using them yet');
    await first.stop();
    assert.equal(first.d.log.matching('ticket reload command failed').length, 0);
    assert.equal(existsSync(marker), false, 'the reload command never ran');

    // The files exist now: another schedule (a new repeater) rewrites them and reloads.
    const second = await ticketAgent((await repeater()).sealed, dir, reload);
    const rewritten = await second.d.log.waitFor('ticket key files written');
    assert.equal(rewritten['created'], undefined);
    await second.d.log.waitFor('ticket reload command failed');
    assert.equal(readFileSync(marker, 'utf8'), 'ran\n');
    assert.equal((await second.metrics()).value('udprepeater_agent_ticket_reloads_total', { result: 'failed' }), 1);
  });
});
