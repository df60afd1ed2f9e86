// Identities and peers files as an operator makes them: keys written by the
// real CLI (`keygen --identity`, `pubkey`), peers files as plain text.

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { runCli } from './daemon.js';

/** A new identity at `file`, written by the CLI, and its public key as `pubkey` prints it. */
export async function makeIdentity(file: string): Promise<{ file: string; pub: string }> {
  const k = await runCli(['keygen', '--identity', file]);
  assert.equal(k.code, 0, k.stderr);
  const p = await runCli(['pubkey', file]);
  assert.equal(p.code, 0, p.stderr);
  return { file, pub: p.stdout.trim() };
}

/** Writes a peers file (one line per identity) at `file`; returns its path. */
export function writePeers(file: string, lines: readonly string[]): string {
  writeFileSync(file, lines.join('\n') + '\n', { mode: 0o644 });
  return file;
}
