// `udprepeater keygen --identity FILE` and `udprepeater pubkey FILE`, through
// the real CLI (UDPREPEATER_CLI may point at another build: today's main
// has neither and fails here).

import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { runCli } from './helpers/daemon.js';

const dir = mkdtempSync(join(tmpdir(), 'udprepeater-cli-identity-'));
chmodSync(dir, 0o700);
const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const PUBLIC = /^urid1[a-z2-7]{58}$/;

describe('keygen --identity and pubkey', () => {
  test('keygen --identity writes a private file (0600); pubkey prints its public key as exactly one line, every time', async () => {
    const file = join(dir, 'node-1.id');
    const made = await runCli(['keygen', '--identity', file]);
    assert.equal(made.code, 0, made.stderr);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const printed = made.stdout.trim().split('\n').pop()!;
    assert.match(printed, PUBLIC);

    const shown = await runCli(['pubkey', file]);
    assert.equal(shown.code, 0, shown.stderr);
    assert.equal(shown.stderr, '');
    assert.match(shown.stdout, /^urid1[a-z2-7]{58}\n$/, 'one line, nothing else');
    assert.equal(shown.stdout, `${printed}\n`);
    assert.equal((await runCli(['pubkey', file])).stdout, shown.stdout);
    // The private key is not what pubkey prints, and is in the file only.
    assert.ok(!shown.stdout.includes('ursk1'));
    assert.match(readFileSync(file, 'utf8'), /^ursk1/m);
  });

  test('keygen --identity refuses to overwrite, and refuses a missing folder without creating it', async () => {
    const file = join(dir, 'existing.id');
    writeFileSync(file, 'keep me\n', { mode: 0o600 });
    const r = await runCli(['keygen', '--identity', file]);
    assert.equal(r.code, 78, r.stderr);
    assert.match(r.stderr, new RegExp(`${esc(file)} already exists; refusing to overwrite`));
    assert.equal(readFileSync(file, 'utf8'), 'keep me\n');

    const folder = join(dir, 'etc', 'udprepeater');
    const missing = await runCli(['keygen', '--identity', join(folder, 'node.id')]);
    assert.equal(missing.code, 78, missing.stderr);
    assert.match(missing.stderr, new RegExp(`the folder ${esc(folder)} does not exist.*install -d -m 0750`));
    assert.equal(existsSync(join(dir, 'etc')), false);
  });

  test('keygen takes a FILE or --identity FILE, not both and not neither', async () => {
    for (const args of [['keygen'], ['keygen', join(dir, 'a.key'), '--identity', join(dir, 'b.id')]]) {
      const r = await runCli(args);
      assert.equal(r.code, 64, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /keygen FILE writes a secretbox key, keygen --identity FILE an identity: give one of them/);
    }
    assert.equal(existsSync(join(dir, 'a.key')) || existsSync(join(dir, 'b.id')), false);
  });

  test('pubkey refuses what it cannot vouch for: a file others can read, a secretbox key, a missing file', async () => {
    const file = join(dir, 'open.id');
    assert.equal((await runCli(['keygen', '--identity', file])).code, 0);
    chmodSync(file, 0o644);
    const open = await runCli(['pubkey', file]);
    assert.equal(open.code, 78, open.stderr);
    assert.equal(open.stdout, '');
    assert.match(open.stderr, new RegExp(`identity file ${esc(file)}: group or others can access the identity \\(mode 0644\\); run chmod 600`));

    const key = join(dir, 'secretbox.key');
    assert.equal((await runCli(['keygen', key])).code, 0);
    writeFileSync(join(dir, 'b64.key'), `${readFileSync(key).toString('base64')}\n`, { mode: 0o600 });
    const notIdentity = await runCli(['pubkey', join(dir, 'b64.key')]);
    assert.equal(notIdentity.code, 78);
    assert.match(notIdentity.stderr, /:1: not an identity \(an identity line starts with "ursk1"; udprepeater keygen --identity FILE writes one\)/);

    const missing = await runCli(['pubkey', join(dir, 'nope.id')]);
    assert.equal(missing.code, 78);
    assert.match(missing.stderr, /nope\.id: no such file; udprepeater keygen --identity/);
  });
});
