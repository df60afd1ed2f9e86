// The validated settings of the live state and warm joins (README.md, "Warm
// join"); their flags are in options.ts with every other flag.

import { ConfigError } from '../base/errors.js';
import { bool, num } from './checks.js';
import type { RawOptions } from './options.js';

export interface WarmConfig {
  /** Warm joins are sent and the live state is kept (false also when maxBytes is 0). */
  readonly enabled: boolean;
  /** Warm-join datagrams per second, all joins together. */
  readonly rate: number;
  /** Warm-join bytes per second, all joins together. */
  readonly byteRate: number;
  /** A plain destination (channel and IP) gets one full join per this long; 0: every join is full. */
  readonly cooldownMs: number;
  /** Bound of each channel's live state, in bytes as LiveState counts them. */
  readonly maxBytes: number;
  /** Persist the live state in the state directory across restarts. */
  readonly save: boolean;
}

export function buildWarmConfig(raw: RawOptions, stateDir: string | null): WarmConfig {
  const maxBytes = num(raw, 'state-max-bytes', 0, Number.MAX_SAFE_INTEGER);
  const rate = num(raw, 'warm-rate', 0, 10_000_000, true);
  // At least one largest datagram per second: below that a join would crawl.
  const byteRate = num(raw, 'warm-byte-rate', 65_536, 1e12);
  const cooldownMs = num(raw, 'warm-cooldown', 0, 86_400) * 1000;
  const save = bool(raw, 'save-live-state');
  if (save && stateDir === null) throw new ConfigError('--save-live-state needs --state-dir (the live state is written there)', 'save-live-state');
  return { enabled: raw['warm-join'] !== false && maxBytes > 0, rate, byteRate, cooldownMs, maxBytes, save };
}
