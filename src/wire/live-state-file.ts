// The live state file (proto/live-state.proto), described in
// docs/PROTOCOL.md, "The live state file". Pure codec: decoding garbage
// returns null instead of throwing; what the sets hold is checked by the
// caller, set by set, as if each came from the network.

import protobuf from 'protobufjs';
import { type LongLike, longToNumber } from './envelope.js';
import { LIVE_STATE_PROTO } from './schema.js';

const root = protobuf.parse(LIVE_STATE_PROTO).root.resolveAll();
const FileType = root.lookupType('udprepeater.LiveStateFile');

export interface SavedChannel {
  readonly channel: string;
  /** Cache sets as the node sent them, oldest first. */
  readonly sets: readonly Buffer[];
}

export interface LiveStateFile {
  readonly savedAtMs: number;
  readonly channels: readonly SavedChannel[];
}

export function encodeLiveState(f: LiveStateFile): Uint8Array {
  return FileType.encode({ savedAtMs: f.savedAtMs, channels: f.channels.map((c) => ({ channel: c.channel, sets: c.sets })) }).finish();
}

export function decodeLiveState(buf: Uint8Array): LiveStateFile | null {
  let m: Record<string, unknown>;
  try {
    m = FileType.decode(buf) as unknown as Record<string, unknown>;
  } catch {
    return null;
  }
  const channels = (m['channels'] as Array<Record<string, unknown>> | undefined) ?? [];
  return {
    savedAtMs: longToNumber(m['savedAtMs'] as LongLike),
    channels: channels.map((c) => ({
      channel: String(c['channel'] ?? ''),
      sets: ((c['sets'] as Uint8Array[] | undefined) ?? []).map((b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength)),
    })),
  };
}
