// The peers file (src/config/peers-file.ts): its grammar, every refusal
// naming file:line and the problem, the trusted-file checks, and what a
// reload changes (added, removed = revoked, changed role, allow or name).

import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { ConfigError } from '../src/base/errors.js';
import { diffPeers, loadPeersFile, parsePeers, type PeerTable, reloadPeers } from '../src/config/peers-file.js';
import { Identity } from '../src/crypto/identity.js';
import { sodiumReady } from '../src/crypto/secretbox.js';

const dir = mkdtempSync(join(tmpdir(), 'udprepeater-peers-'));
chmodSync(dir, 0o700);
let n = 0;
const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const refused = (re: RegExp) => (e: unknown) => e instanceof ConfigError && re.test(e.message);

let keys: string[] = [];
before(async () => {
  await sodiumReady();
  keys = Array.from({ length: 6 }, (_, i) => Identity.fromSeed(new Uint8Array(32).fill(i + 1)).publicText);
});

function file(text: string, mode = 0o644): string {
  const f = join(dir, `peers-${++n}`);
  writeFileSync(f, text, { mode });
  chmodSync(f, mode);
  return f;
}

describe('grammar', () => {
  test('keys, names, roles and allow-lists; comments, blank lines, CRLF; lookups by key, name and id', () => {
    const [a, b, c] = keys;
    const t = parsePeers(
      [
        '# the fleet',
        '',
        `${a} node-1`,
        `  ${b}\trepeater-a  role=repeater allow=10.0.0.0/24 allow=fd00::/64   # the first repeater`,
        `${c!.toUpperCase()} node-2 role=node allow=10.0.1.7 allow=::ffff:10.0.2.0/120 allow=10.0.1.7/32\r`,
        '   # indented comment',
      ].join('\n'),
      'peers',
    );
    assert.equal(t.size, 3);
    assert.deepEqual(
      t.list().map((p) => [p.name, p.role, p.allow, p.line]),
      [
        ['node-1', 'node', [], 3],
        ['repeater-a', 'repeater', ['10.0.0.0/24', 'fd00::/64'], 4],
        // A bare IP is one host, an IPv4-mapped prefix the IPv4 prefix it covers; a repeated CIDR counts once.
        ['node-2', 'node', ['10.0.1.7/32', '10.0.2.0/24'], 5],
      ],
    );
    const r = t.byName('repeater-a')!;
    assert.equal(r.key.text, b);
    assert.equal(t.get(r.key.publicKey), r);
    assert.equal(t.get(r.key.hex), r);
    assert.equal(t.byId(r.key.idHex), r);
    assert.equal(t.byName('node-2')!.key.text, c, 'upper case reads as the same key, kept in its canonical form');
    assert.deepEqual(t.withRole('repeater').map((p) => p.name), ['repeater-a']);
    // Immutable: the table and its peers cannot be changed by whoever holds them.
    assert.throws(() => ((r as { role: string }).role = 'node'), TypeError);
    assert.throws(() => (r.allow as string[]).push('0.0.0.0/0'), TypeError);
    assert.throws(() => ((t as unknown as { fingerprint: string }).fingerprint = 'x'), TypeError);
  });

  test('an empty file trusts nobody', () => {
    assert.equal(parsePeers('# nobody yet\n', 'peers').size, 0);
  });

  test('every problem is refused with file:line and what is wrong', () => {
    const [a, b] = keys;
    const secret = 'ursk1' + 'a'.repeat(58);
    const cases: Array<[string, string, RegExp]> = [
      ['truncated key', `${a!.slice(0, -2)} n1`, /^peers:2: the key urid1\S+ has 56 characters after "urid1" where a key has 58: truncated/],
      ['mistyped key', `${a!.slice(0, 9)}${a![9] === 'q' ? 'r' : 'q'}${a!.slice(10)} n1`, /^peers:2: the key \S+ the checksum does not match: a character was mistyped or changed/],
      ['private key', `${secret} n1`, /^peers:2: the key ursk1\S+ is a private key/],
      ['not a key', 'ssh-ed25519 n1', /^peers:2: the key ssh-ed25519 is not an identity public key/],
      ['no name', `${a}`, /^peers:2: no name after the key/],
      ['bad name', `${a} n/1`, /^peers:2: the name n\/1 is not a name/],
      ['control character in a name', `${a} n\u0007`, /^peers:2: the name "n\\u0007" is not a name/],
      ['unknown role', `${a} n1 role=admin`, /^peers:2: role=admin: the role is node or repeater/],
      ['role twice', `${a} n1 role=node role=repeater`, /^peers:2: role= is given twice/],
      ['bad allow', `${a} n1 allow=10.0.0.300/24`, /^peers:2: allow=10.0.0.300\/24 is not an IP address or CIDR/],
      ['long prefix', `${a} n1 allow=10.0.0.0/33`, /^peers:2: allow=10.0.0.0\/33: the prefix must be 0-32/],
      ['empty allow', `${a} n1 allow=`, /^peers:2: allow= needs a CIDR/],
      ['unknown option', `${a} n1 weight=3`, /^peers:2: unknown option weight=3/],
      ['a bare word', `${a} n1 repeater`, /^peers:2: unknown option repeater/],
    ];
    for (const [what, line, re] of cases) {
      assert.throws(() => parsePeers(`# first line\n${line}\n${b} fine\n`, 'peers'), refused(re), what);
    }
    // Duplicates name both lines.
    assert.throws(() => parsePeers(`${a} n1\n\n${b} n2\n${a} n3\n`, 'peers'), refused(/^peers:4: the key of n3 is already listed at line 1 \(n1\): one line per identity/));
    assert.throws(() => parsePeers(`${a} n1\n${b} n1\n`, 'peers'), refused(/^peers:2: the name n1 is already used at line 1: names are unique/));
    // The same key in the other case is the same key.
    assert.throws(() => parsePeers(`${a} n1\n${a!.toUpperCase()} n2\n`, 'peers'), refused(/^peers:2: the key of n2 is already listed at line 1/));
  });
});

describe('the file', () => {
  test('loaded through the trusted-file checks: not writable by others, no symbolic link, named when missing', () => {
    const text = `${keys[0]} n1\n`;
    assert.equal(loadPeersFile(file(text, 0o644)).size, 1, 'readable by others is fine: it holds no secret');
    const writable = file(text, 0o664);
    assert.throws(() => loadPeersFile(writable), refused(new RegExp(`^--peers ${esc(writable)}: group or others can write it \\(mode 0664\\)`)));
    const target = file(text);
    const link = join(dir, `link-${++n}`);
    symlinkSync(target, link);
    assert.throws(() => loadPeersFile(link), refused(new RegExp(`^--peers ${esc(link)}: a symbolic link`)));
    const missing = join(dir, 'missing');
    assert.throws(() => loadPeersFile(missing), refused(new RegExp(`^--peers ${esc(missing)}: no such file`)));
    // Errors in the content name the path and line.
    const bad = file(`${keys[0]} n1\n${keys[1]}\n`);
    assert.throws(() => loadPeersFile(bad), refused(new RegExp(`^${esc(bad)}:2: no name after the key`)));
  });

  test('the fingerprint ignores order, comments and spelling, and changes with any entry', () => {
    const [a, b] = keys;
    const one = parsePeers(`${a} n1 allow=10.0.0.0/24 allow=10.0.1.0/24\n${b} r1 role=repeater\n`, 'x');
    const same = parsePeers(`# reordered\n${b!.toUpperCase()} r1 role=repeater\n${a} n1 role=node allow=10.0.1.0/24 allow=10.0.0.0/24 # a comment\n`, 'y');
    assert.equal(one.fingerprint, same.fingerprint);
    for (const other of [
      `${a} n1 allow=10.0.0.0/24\n${b} r1 role=repeater\n`,
      `${a} n1 allow=10.0.0.0/24 allow=10.0.1.0/24\n${b} r1\n`,
      `${a} n2 allow=10.0.0.0/24 allow=10.0.1.0/24\n${b} r1 role=repeater\n`,
      `${a} n1 allow=10.0.0.0/24 allow=10.0.1.0/24\n`,
    ]) {
      assert.notEqual(parsePeers(other, 'z').fingerprint, one.fingerprint, other);
    }
  });
});

describe('reload', () => {
  const names = (ps: readonly { name: string }[]) => ps.map((p) => p.name).sort();

  test('says who was added, who was removed (revoked) and whose name, role or allow-list changed', () => {
    const [a, b, c, d, e] = keys;
    const prev = parsePeers([`${a} node-1`, `${b} node-2 allow=10.0.0.2`, `${c} node-3`, `${d} rep-1 role=repeater`].join('\n'), 'p');
    const next = parsePeers([`${a} node-1`, `${b} node-2 allow=10.0.0.22`, `${d} rep-one role=node`, `${e} node-4`].join('\n'), 'p');
    const diff = diffPeers(prev, next);
    assert.deepEqual(names(diff.added), ['node-4']);
    assert.deepEqual(names(diff.removed), ['node-3']);
    assert.deepEqual(
      diff.changed.map((ch) => [ch.before.name, ch.after.name, ch.what]),
      [
        ['node-2', 'node-2', ['allow']],
        ['rep-1', 'rep-one', ['name', 'role']],
      ],
    );
    assert.equal(diff.unchanged, 1);
    // Nothing changed: an empty diff, the same fingerprint.
    const again = diffPeers(prev, parsePeers([`${d} rep-1 role=repeater`, `${c} node-3`, `${b} node-2 allow=10.0.0.2/32`, `${a} node-1`].join('\n'), 'p'));
    assert.deepEqual([again.added.length, again.removed.length, again.changed.length, again.unchanged], [0, 0, 0, 4]);
  });

  test('a key replaced under the same name is the old key revoked and a new one added', () => {
    const [a, b] = keys;
    const diff = diffPeers(parsePeers(`${a} node-1\n`, 'p'), parsePeers(`${b} node-1\n`, 'p'));
    assert.deepEqual([names(diff.removed), names(diff.added), diff.changed.length], [['node-1'], ['node-1'], 0]);
    assert.equal(diff.removed[0]!.key.text, a);
  });

  test('a bad file is refused naming file and line; the running table is what the caller keeps', () => {
    const [a, b] = keys;
    const f = file(`${a} node-1\n${b} node-2\n`);
    const running: PeerTable = loadPeersFile(f);
    writeFileSync(f, `${a} node-1\n${b} node-2 role=nobody\n`);
    assert.throws(() => reloadPeers(f, running), refused(new RegExp(`^${esc(f)}:2: role=nobody`)));
    assert.equal(running.size, 2);
    writeFileSync(f, `${a} node-1\n`);
    const { table, diff } = reloadPeers(f, running);
    assert.equal(table.size, 1);
    assert.deepEqual(names(diff.removed), ['node-2']);
  });
});
