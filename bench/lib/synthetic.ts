// Synthetic uWSGI cache-update streams: key and value sizes drawn from a
// distribution, a set/delete mix, absolute expiry times as uWSGI writes them.
// Built with the repeater's own encoders (src/wire/cache.ts), so the bytes
// are exactly what a uWSGI node sends (deletes unpadded, as uWSGI does).

import { encodeCacheDelete, encodeCacheSet } from '../../src/wire/cache.js';
import { BenchError } from './procs.js';
import { type PoolRecord, STAMP_LEN, stampOffset } from './pool.js';

export interface SizeDist {
  readonly text: string;
  sample(rand: () => number): number;
  readonly min: number;
  readonly max: number;
}

/**
 * Parses a size distribution:
 *   `200`        every one 200 bytes
 *   `200-4096`   uniform between the two
 *   `tls`        TLS-session-like: 70% 200-400 B (no client certificate),
 *                20% 1-2 KiB, 10% 3-4 KiB (sessions carrying a peer chain)
 */
export function parseSize(what: string, text: string): SizeDist {
  if (text === 'tls') {
    return {
      text,
      min: 200,
      max: 4000,
      sample(rand) {
        const u = rand();
        if (u < 0.7) return 200 + Math.floor(rand() * 201);
        if (u < 0.9) return 1024 + Math.floor(rand() * 1025);
        return 3072 + Math.floor(rand() * 929);
      },
    };
  }
  const m = /^(\d+)(?:-(\d+))?$/.exec(text);
  if (m === null) throw new BenchError(`--${what} "${text}": want N, MIN-MAX or tls`);
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  if (hi < lo || hi > 60000) throw new BenchError(`--${what} "${text}": want MIN <= MAX <= 60000`);
  return { text, min: lo, max: hi, sample: (rand) => lo + Math.floor(rand() * (hi - lo + 1)) };
}

export interface SyntheticSpec {
  readonly keySize: SizeDist;
  readonly valueSize: SizeDist;
  /** Fraction of deletes (0..1). */
  readonly deletes: number;
  /** Lifetime of a set in seconds (sent as absolute unix time, as uWSGI does); 0 = never. */
  readonly lifetime: number;
  /** Distinct datagrams in the pool; the generator cycles through them. */
  readonly poolSize: number;
  readonly seed: number;
}

export function describeSynthetic(s: SyntheticSpec): string {
  const del = s.deletes > 0 ? `, ${Math.round(s.deletes * 100)}% deletes` : '';
  return `sets of ${s.valueSize.text} B values, ${s.keySize.text} B keys${del}`;
}

/** A small deterministic PRNG (mulberry32): the same seed gives the same pool. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function bytes(rand: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rand() * 256);
  return b;
}

export function syntheticPool(s: SyntheticSpec, nowMs = Date.now()): PoolRecord[] {
  // The stamp lives in the value of a set and in the key of a delete.
  if (s.valueSize.min < STAMP_LEN) throw new BenchError(`--value-size must be at least ${STAMP_LEN} bytes (the stamp lives there)`);
  if (s.deletes > 0 && s.keySize.min < STAMP_LEN) throw new BenchError(`with deletes, --key-size must be at least ${STAMP_LEN} bytes (a delete carries the stamp in its key)`);
  if (s.keySize.min < 1) throw new BenchError('--key-size must be at least 1');
  const rand = prng(s.seed);
  const expires = s.lifetime > 0 ? Math.floor(nowMs / 1000) + s.lifetime : 0;
  const out: PoolRecord[] = [];
  for (let i = 0; i < s.poolSize; i++) {
    const key = bytes(rand, s.keySize.sample(rand));
    const data = rand() < s.deletes ? encodeCacheDelete(key, false) : encodeCacheSet(key, bytes(rand, s.valueSize.sample(rand)), expires);
    out.push({ t: 0, data, stamp: stampOffset(data) });
  }
  return out;
}
