// The trace a forwarder appends to a cache datagram: docs/PROTOCOL.md, "Trace".
// It is shaped like one more uwsgi var, so uWSGI, which ignores whatever
// follows a set's expires field or a padded delete, stores exactly what it
// would have stored without it:
//
//   offset size
//   0      2    u16 LE 4
//   2      4    "urtr"
//   6      2    u16 LE 18
//   8      1    version (1)
//   9      1    hops
//   10     8    ingress, u64 LE (48 bits used)
//   18     8    sequence, u64 LE (53 bits used)

export const TRACE_BYTES = 26;
const TAG = [0x75, 0x72, 0x74, 0x72]; // "urtr"
const VERSION = 1;

export interface TraceFields {
  readonly ingress: number;
  readonly sequence: number;
  readonly hops: number;
}

/** True when `buf[at..]` is exactly one trace. */
export function isTraceAt(buf: Uint8Array, at: number): boolean {
  if (buf.length - at !== TRACE_BYTES) return false;
  return (
    buf[at] === 4 &&
    buf[at + 1] === 0 &&
    buf[at + 2] === TAG[0] &&
    buf[at + 3] === TAG[1] &&
    buf[at + 4] === TAG[2] &&
    buf[at + 5] === TAG[3] &&
    buf[at + 6] === 18 &&
    buf[at + 7] === 0 &&
    buf[at + 8] === VERSION
  );
}

/** Reads a trace checked by isTraceAt; null when a field is out of range. */
export function readTrace(buf: Buffer, at: number): TraceFields | null {
  const hops = buf[at + 9]!;
  // A forwarded datagram has passed at least its first forwarder.
  if (hops < 1 || buf.readUInt16LE(at + 16) !== 0) return null;
  const ingress = buf.readUIntLE(at + 10, 6);
  const hi = buf.readUInt32LE(at + 22);
  if (hi > 0x1fffff || ingress === 0) return null;
  const sequence = hi * 0x1_0000_0000 + buf.readUInt32LE(at + 18);
  if (sequence < 1) return null;
  return { ingress, sequence, hops };
}

export function writeTrace(out: Buffer, at: number, t: TraceFields): void {
  out[at] = 4;
  out[at + 1] = 0;
  out.set(TAG, at + 2);
  out[at + 6] = 18;
  out[at + 7] = 0;
  out[at + 8] = VERSION;
  out[at + 9] = Math.min(t.hops, 255);
  out.writeUIntLE(t.ingress, at + 10, 6);
  out.writeUInt16LE(0, at + 16);
  out.writeUInt32LE(t.sequence % 0x1_0000_0000, at + 18);
  out.writeUInt32LE(Math.floor(t.sequence / 0x1_0000_0000), at + 22);
}
