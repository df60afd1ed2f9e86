// protobufjs hands 64-bit fields over as {low, high} pairs (or numbers):
// conversions both ways, exact for what the wire formats allow.

export type LongLike = { low: number; high: number; unsigned: boolean } | number;

export function longToBigint(v: LongLike | null | undefined): bigint {
  if (v === null || v === undefined) return 0n;
  if (typeof v === 'number') return BigInt(v);
  return (BigInt(v.high >>> 0) << 32n) | BigInt(v.low >>> 0);
}

export function longToNumber(v: LongLike | null | undefined): number {
  if (v === null || v === undefined) return 0;
  if (typeof v === 'number') return v;
  return (v.high >>> 0) * 0x1_0000_0000 + (v.low >>> 0);
}

/** protobufjs writes 64-bit fields from any {low, high} pair. */
export function bigintToLong(v: bigint): { low: number; high: number; unsigned: boolean } {
  return { low: Number(v & 0xffffffffn) | 0, high: Number((v >> 32n) & 0xffffffffn) | 0, unsigned: true };
}
