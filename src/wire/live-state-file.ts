// The live state file (proto/live-state.proto), described in
// docs/PROTOCOL.md, "The live state file". Pure codec, written by hand for
// the two messages of that file (the same bytes protobufjs writes, checked by
// test/live-state-file.test.ts): decoding garbage returns null instead of
// throwing; what the sets hold is checked by the caller, set by set, as if
// each came from the network.
//
// A file may hold millions of sets, and a repeater reads it with its
// listeners open: openLiveState() checks the whole structure in one pass that
// allocates nothing per set, and hands the sets out one at a time
// (SetCursor), so the caller can apply them in slices between which the
// event loop turns.

/** Fields of LiveStateFile and LiveChannel. */
const FILE_SAVED_AT = 1;
const FILE_CHANNEL = 2;
const CHANNEL_NAME = 1;
const CHANNEL_SET = 2;
const VARINT = 0;
const FIXED64 = 1;
const BYTES = 2;
const FIXED32 = 5;

export interface SavedChannel {
  readonly channel: string;
  /** Cache sets as the node sent them, oldest first. */
  readonly sets: readonly Buffer[];
}

export interface LiveStateFile {
  readonly savedAtMs: number;
  readonly channels: readonly SavedChannel[];
}

/** A channel of an opened file: its name and where its message lies. */
export interface ChannelRange {
  readonly channel: string;
  /** Sets it holds. */
  readonly count: number;
  readonly start: number;
  readonly end: number;
}

/** An opened file: checked whole, sets not yet read. */
export interface OpenedLiveState {
  readonly savedAtMs: number;
  readonly channels: readonly ChannelRange[];
  /** Sets in all channels. */
  readonly total: number;
}

function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

function writeVarint(out: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    out[at++] = (n % 128) | 0x80;
    n = Math.floor(n / 128);
  }
  out[at++] = n;
  return at;
}

/** Writes the file (proto3: a field at its default is left out, as protobufjs does); the result is a buffer of its own (the caller zeroes it when done: it holds secrets). */
export function encodeLiveState(f: LiveStateFile): Buffer {
  const names = f.channels.map((c) => Buffer.from(c.channel, 'utf8'));
  const bodies = f.channels.map((c, i) => {
    let n = names[i]!.length > 0 ? 1 + varintSize(names[i]!.length) + names[i]!.length : 0;
    for (const s of c.sets) n += 1 + varintSize(s.length) + s.length;
    return n;
  });
  let total = f.savedAtMs !== 0 ? 1 + varintSize(f.savedAtMs) : 0;
  for (const b of bodies) total += 1 + varintSize(b) + b;
  const out = Buffer.allocUnsafeSlow(total);
  let at = 0;
  if (f.savedAtMs !== 0) {
    out[at++] = (FILE_SAVED_AT << 3) | VARINT;
    at = writeVarint(out, at, f.savedAtMs);
  }
  f.channels.forEach((c, i) => {
    out[at++] = (FILE_CHANNEL << 3) | BYTES;
    at = writeVarint(out, at, bodies[i]!);
    const name = names[i]!;
    if (name.length > 0) {
      out[at++] = (CHANNEL_NAME << 3) | BYTES;
      at = writeVarint(out, at, name.length);
      at += name.copy(out, at);
    }
    for (const s of c.sets) {
      out[at++] = (CHANNEL_SET << 3) | BYTES;
      at = writeVarint(out, at, s.length);
      at += s.copy(out, at);
    }
  });
  return out;
}

/** Reads protobuf fields over [at, end) of `buf`; `pos` is where the next one starts, -1 once the bytes are not a message. */
class Fields {
  pos: number;
  field = 0;
  wire = 0;
  /** The varint value (VARINT), or where the bytes start (BYTES). */
  value = 0;
  /** BYTES: their length. */
  length = 0;

  constructor(
    private readonly buf: Uint8Array,
    start: number,
    private readonly end: number,
  ) {
    this.pos = start;
  }

  /** Reads the next field; false at the end, or when malformed (then pos is -1). */
  next(): boolean {
    if (this.pos < 0 || this.pos >= this.end) return false;
    const tag = this.varint();
    if (tag < 0 || tag > 0xffffffff) return this.bad();
    this.field = Math.floor(tag / 8);
    this.wire = tag % 8;
    if (this.field === 0) return this.bad();
    switch (this.wire) {
      case VARINT:
        this.value = this.varint();
        return this.value < 0 ? this.bad() : true;
      case FIXED64:
      case FIXED32: {
        const n = this.wire === FIXED64 ? 8 : 4;
        if (this.pos + n > this.end) return this.bad();
        this.pos += n;
        return true;
      }
      case BYTES: {
        const len = this.varint();
        if (len < 0 || len > this.end - this.pos) return this.bad();
        this.value = this.pos;
        this.length = len;
        this.pos += len;
        return true;
      }
      default:
        return this.bad(); // groups (never written for these messages) and unknown wire types
    }
  }

  get malformed(): boolean {
    return this.pos < 0;
  }

  private bad(): false {
    this.pos = -1;
    return false;
  }

  /** A varint of at most 10 bytes, as a number (exact up to 2^53); -1 when cut short or too long. */
  private varint(): number {
    let n = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) return -1;
      const b = this.buf[this.pos++]!;
      n += (b & 0x7f) * scale;
      if (b < 0x80) return n;
      scale *= 128;
    }
    return -1;
  }
}

/**
 * Checks the whole file and finds its channels, without reading a set;
 * null when it is not a LiveStateFile. Proto3 rules: unknown fields are
 * skipped, a repeated singular field keeps its last value.
 */
export function openLiveState(buf: Uint8Array): OpenedLiveState | null {
  const top = new Fields(buf, 0, buf.length);
  let savedAtMs = 0;
  let total = 0;
  const channels: ChannelRange[] = [];
  const text = new TextDecoder();
  while (top.next()) {
    if (top.field === FILE_SAVED_AT) {
      if (top.wire !== VARINT) return null;
      savedAtMs = top.value;
    } else if (top.field === FILE_CHANNEL) {
      if (top.wire !== BYTES) return null;
      const start = top.value;
      const end = start + top.length;
      const f = new Fields(buf, start, end);
      let channel = '';
      let count = 0;
      while (f.next()) {
        if (f.field === CHANNEL_NAME) {
          if (f.wire !== BYTES) return null;
          channel = text.decode(buf.subarray(f.value, f.value + f.length));
        } else if (f.field === CHANNEL_SET) {
          if (f.wire !== BYTES) return null;
          count++;
        }
      }
      if (f.malformed) return null;
      channels.push({ channel, count, start, end });
      total += count;
    }
  }
  if (top.malformed) return null;
  return { savedAtMs, channels, total };
}

/** Hands out the sets of one channel of an opened file, in order, each a view of the file's bytes. */
export class SetCursor {
  private readonly fields: Fields;
  /** Sets handed out so far. */
  read = 0;

  constructor(
    private readonly buf: Buffer,
    range: ChannelRange,
  ) {
    this.fields = new Fields(buf, range.start, range.end);
  }

  /** The next set, or null after the last. */
  next(): Buffer | null {
    const f = this.fields;
    while (f.next()) {
      if (f.field !== CHANNEL_SET) continue;
      this.read++;
      return this.buf.subarray(f.value, f.value + f.length);
    }
    return null;
  }
}

/** The whole file at once (small files, tests); null when it is not a LiveStateFile. */
export function decodeLiveState(buf: Uint8Array): LiveStateFile | null {
  const opened = openLiveState(buf);
  if (opened === null) return null;
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  return {
    savedAtMs: opened.savedAtMs,
    channels: opened.channels.map((c) => {
      const cursor = new SetCursor(b, c);
      const sets: Buffer[] = [];
      for (let s = cursor.next(); s !== null; s = cursor.next()) sets.push(s);
      return { channel: c.channel, sets };
    }),
  };
}
