// The histogram of garbage-collection pauses that gc-preload.ts keeps in a
// repeater under test and gcstats.ts reads: log-linear, 16 sub-buckets per
// power of two of microseconds (about 6% resolution), so that the largest
// pause of a window is known to within 6% without a list of every pause.
// Pure: shared by the preload (inside the repeater) and the bench.

export const GC_SUB_BITS = 4;
export const GC_BUCKETS = 16 + (32 - GC_SUB_BITS) * 16;

/** The histogram bucket of a pause of `us` microseconds (whole µs). */
export function gcBucket(us: number): number {
  const v = Math.max(0, Math.floor(us));
  const sub = 1 << GC_SUB_BITS;
  if (v < sub) return v;
  const e = 31 - Math.clz32(v);
  const mant = (v >>> (e - GC_SUB_BITS)) & (sub - 1);
  return Math.min(GC_BUCKETS - 1, sub + (e - GC_SUB_BITS) * sub + mant);
}

/** The upper edge (µs) of a bucket: a window's largest pause is at most this. */
export function gcBucketTop(b: number): number {
  const sub = 1 << GC_SUB_BITS;
  if (b < sub) return b + 1;
  const e = Math.floor((b - sub) / sub) + GC_SUB_BITS;
  const mant = (b - sub) % sub;
  return ((sub + mant + 1) * 2 ** (e - GC_SUB_BITS));
}
