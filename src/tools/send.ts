// `udprepeater send ADDR set KEY VALUE` / `send ADDR del KEY`: the cache
// updates a uWSGI node would send, for poking a repeater by hand.

import { encodeCacheDelete, encodeCacheSet } from '../wire/cache.js';
import type { Endpoint } from '../wire/address.js';
import { emit } from './emit.js';

export interface SendOptions {
  /** Lifetime in seconds; uWSGI sends the absolute time now + lifetime (0 = never). */
  expires?: number;
  /** Append the empty length field uWSGI needs to apply a delete. */
  padded?: boolean;
  now?: number;
}

export function buildCacheUpdate(op: 'set' | 'del', key: string, value: string | undefined, opts: SendOptions): { buf: Buffer; what: string } {
  const k = Buffer.from(key, 'utf8');
  if (op === 'set') {
    const v = Buffer.from(value ?? '', 'utf8');
    const life = opts.expires ?? 0;
    const abs = life > 0 ? Math.floor((opts.now ?? Date.now()) / 1000) + life : 0;
    return { buf: encodeCacheSet(k, v, abs), what: `cache set key=${JSON.stringify(key)} value=${v.length} bytes expires=${abs}` };
  }
  return {
    buf: encodeCacheDelete(k, opts.padded === true),
    what: `cache delete key=${JSON.stringify(key)}${opts.padded ? ' (padded)' : ' (as uWSGI sends it)'}`,
  };
}

export async function sendCommand(to: Endpoint, op: 'set' | 'del', key: string, value: string | undefined, opts: SendOptions): Promise<void> {
  const { buf, what } = buildCacheUpdate(op, key, value, opts);
  await emit(to, buf, what);
}
