// The key ring, with nginx ticket-key semantics: the first key seals, every
// listed key opens. A frame names its key by id, so opening never needs trial
// decryption. Rotation: add the new key everywhere (second), make it first
// everywhere, then remove the old one; SIGHUP reloads the ring.

import { createHash, randomBytes } from 'node:crypto';
import { closeSync, fchmodSync, openSync, writeSync } from 'node:fs';
import { ConfigError, describe } from '../base/errors.js';
import { readTrusted } from '../base/trust.js';
import { BoxKey, KEY_BYTES } from './secretbox.js';

export interface RingKey {
  readonly id: number;
  readonly file: string;
  readonly box: BoxKey;
}

/** Public, stable identifier of a key: 4 bytes of SHA-256 over a label and the key. */
export function keyIdOf(key: Uint8Array): number {
  return createHash('sha256').update('udprepeater key id\0').update(key).digest().readUInt32LE(0);
}

export function formatKeyId(id: number): string {
  return id.toString(16).padStart(8, '0');
}

/** Parses key file contents: 32 raw bytes, or the key in base64 or hex text. */
export function parseKey(data: Buffer): Uint8Array | null {
  if (data.length === KEY_BYTES) return new Uint8Array(data);
  const text = data.toString('latin1').trim();
  if (/^[A-Za-z0-9+/]{43}=$/.test(text)) return new Uint8Array(Buffer.from(text, 'base64'));
  if (/^[0-9a-fA-F]{64}$/.test(text)) return new Uint8Array(Buffer.from(text, 'hex'));
  return null;
}

/**
 * Reads one key file. Refuses, naming the file, anything that is not a
 * private regular file of ours (base/trust.ts) holding exactly one key.
 */
export function readKeyFile(file: string): Uint8Array {
  let data: Buffer | null;
  try {
    data = readTrusted(file, 'key file', { secret: true });
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`key file ${file}: ${describe(err)}`);
  }
  if (data === null) throw new ConfigError(`key file ${file}: ENOENT: no such file or directory`);
  const key = parseKey(data);
  data.fill(0);
  if (key === null) throw new ConfigError(`key file ${file}: not a ${KEY_BYTES}-byte key (want ${KEY_BYTES} raw bytes, or base64 or hex text)`);
  return key;
}

/** What a session seals and opens with: a ring, or the identity bus's table of sending keys (cluster/bus-identity.ts). */
export type KeyLookup = Pick<KeyRing, 'sealing' | 'get'>;

export class KeyRing {
  private readonly byId: Map<number, RingKey>;

  private constructor(readonly keys: readonly RingKey[]) {
    this.byId = new Map(keys.map((k) => [k.id, k]));
  }

  /** The key that seals. */
  get sealing(): RingKey {
    return this.keys[0]!;
  }

  get(id: number): RingKey | undefined {
    return this.byId.get(id);
  }

  /** No key at all: identity mode, where every frame goes under a link's keys (never asked to seal or open). */
  static empty(): KeyRing {
    return new KeyRing([]);
  }

  static load(files: readonly string[]): KeyRing {
    if (files.length === 0) throw new ConfigError('secure mode needs at least one --key-file');
    const raw = files.map((file) => ({ file, key: readKeyFile(file) }));
    const seen = new Map<number, string>();
    for (const { file, key } of raw) {
      const id = keyIdOf(key);
      const other = seen.get(id);
      if (other !== undefined) throw new ConfigError(`key file ${file}: holds the same key as ${other} (key id ${formatKeyId(id)})`);
      seen.set(id, file);
    }
    const keys = raw.map(({ file, key }) => {
      const ring = { id: keyIdOf(key), file, box: new BoxKey(key) };
      key.fill(0);
      return ring;
    });
    return new KeyRing(keys);
  }

  /** Zeroes the keys in memory; the ring must not be used afterwards. */
  destroy(): void {
    for (const k of this.keys) k.box.destroy();
  }

  describe(): Array<{ id: string; file: string; seals: boolean }> {
    return this.keys.map((k, i) => ({ id: formatKeyId(k.id), file: k.file, seals: i === 0 }));
  }
}

/**
 * `udprepeater keygen FILE`: a new random key, written as exactly 32 raw
 * bytes with mode 0600. Never overwrites an existing file.
 */
export function generateKeyFile(file: string): { id: string } {
  const key = randomBytes(KEY_BYTES);
  let fd: number;
  try {
    fd = openSync(file, 'wx', 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new ConfigError(`${file} already exists; refusing to overwrite a key`);
    throw new ConfigError(`cannot create ${file}: ${describe(err)}`);
  }
  try {
    fchmodSync(fd, 0o600);
    writeSync(fd, key);
  } finally {
    closeSync(fd);
  }
  const id = formatKeyId(keyIdOf(key));
  key.fill(0);
  return { id };
}
