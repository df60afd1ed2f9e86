// The subscriber registry file (registry.pb): proto RegistryState, described in
// docs/PROTOCOL.md, "The state file". Pure codec: decoding garbage returns
// null instead of throwing.

import { bigintToLong, type LongLike, longToBigint, longToNumber } from './longs.js';
import { protoRoot } from './proto.js';

const RegistryType = protoRoot.lookupType('udprepeater.RegistryState');

export interface SavedSubscriber {
  readonly channel: string;
  readonly address: string;
  readonly key: string;
  readonly sealed: boolean;
  readonly firstSeenMs: number;
  readonly lastSeenMs: number;
  readonly deadlineMs: number;
  readonly source: string;
  readonly origin: bigint;
}

export interface RegistryFile {
  readonly savedAtMs: number;
  readonly subscribers: readonly SavedSubscriber[];
}

export function encodeRegistry(s: RegistryFile): Uint8Array {
  return RegistryType.encode({
    savedAtMs: s.savedAtMs,
    subscribers: s.subscribers.map((e) => ({ ...e, origin: bigintToLong(e.origin) })),
  }).finish();
}

export function decodeRegistry(buf: Uint8Array): RegistryFile | null {
  let m: Record<string, unknown>;
  try {
    m = RegistryType.decode(buf) as unknown as Record<string, unknown>;
  } catch {
    return null;
  }
  const subs = (m['subscribers'] as Array<Record<string, unknown>> | undefined) ?? [];
  return {
    savedAtMs: longToNumber(m['savedAtMs'] as LongLike),
    subscribers: subs.map((e) => ({
      channel: String(e['channel'] ?? ''),
      address: String(e['address'] ?? ''),
      key: String(e['key'] ?? ''),
      sealed: e['sealed'] === true,
      firstSeenMs: longToNumber(e['firstSeenMs'] as LongLike),
      lastSeenMs: longToNumber(e['lastSeenMs'] as LongLike),
      deadlineMs: longToNumber(e['deadlineMs'] as LongLike),
      source: String(e['source'] ?? ''),
      origin: longToBigint(e['origin'] as LongLike),
    })),
  };
}
