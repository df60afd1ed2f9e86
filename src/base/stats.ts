// Plain numeric counters for the datagram path. Label sets are fixed arrays;
// the hot path increments `counts[INDEX]` and metrics read them on scrape, so
// no label lookup ever happens per datagram.

/** What arrived, judged by the header alone. */
export const KINDS = ['set', 'delete', 'subscribe', 'unsubscribe', 'sealed', 'other'] as const;
export type Kind = (typeof KINDS)[number];
export const KindSlot = indexOf(KINDS);

/** Why a datagram (or one output copy, for queue_full and send_error) was not forwarded. */
export const DROP_REASONS = [
  // decoding
  'too_short',
  'too_large',
  'size_mismatch',
  'malformed',
  'empty_key',
  'bad_expires',
  'unknown_command',
  'unknown_type',
  'too_many_vars',
  // policy
  'not_allowed',
  'no_subscribers',
  'not_node',
  // loop freedom (a datagram that already passed here, or too many forwarders)
  'loop',
  'duplicate',
  // cluster mode: read after this process was stopped long enough for its peers to take over
  'stalled',
  // subscriptions
  'rate_limited',
  'key_mismatch',
  'bad_address',
  'address_not_allowed',
  'form_conflict',
  'registry_full',
  'no_socket',
  'not_subscribed',
  'foreign_unsubscribe',
  'bad_signature',
  'stale_signature',
  // sealed frames
  'unsealed',
  'bad_version',
  'unknown_key',
  'auth_failed',
  'stale',
  'replay',
  'bad_payload',
  'own_origin',
  'wrong_role',
  'before_start',
  'wrong_receiver',
  'before_join',
  // identities and links (docs/PROTOCOL.md, "Identities and links")
  'unknown_peer',
  'revoked',
  'unknown_link',
  'no_link',
  'owner_conflict',
  // output copies
  'queue_full',
  'send_error',
  'sealed_too_large',
  // a bug caught at the listener: logged with its stack, never fanned out
  'internal_error',
] as const;
export type DropReason = (typeof DROP_REASONS)[number];
export const DropSlot = indexOf(DROP_REASONS);

export const EVENTS = ['subscribe', 'refresh', 'unsubscribe', 'expire', 'reject', 'evict', 'suspend', 'resume'] as const;
export type SubscriptionEvent = (typeof EVENTS)[number];
export const EventSlot = indexOf(EVENTS);

function indexOf<T extends string>(names: readonly T[]): Readonly<Record<T, number>> {
  const out = {} as Record<T, number>;
  names.forEach((n, i) => (out[n] = i));
  return Object.freeze(out);
}

export class ChannelStats {
  readonly received = new Float64Array(KINDS.length);
  readonly dropped = new Float64Array(DROP_REASONS.length);
  readonly events = new Float64Array(EVENTS.length);
  bytesReceived = 0;
  /** Input datagrams that passed every check and were handed to the fan-out. */
  accepted = 0;
  /** Output datagrams handed to the kernel (one per subscriber per input). */
  forwarded = 0;
  bytesForwarded = 0;
}

/**
 * A Prometheus histogram kept as plain bucket counts. `observe` is a short
 * loop over a handful of bounds; the metrics layer publishes it on scrape.
 */
export class FastHistogram {
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length);
  }

  /** Records `n` observations of `v` (a batch of datagrams that took the same time). */
  observe(v: number, n = 1): void {
    const b = this.bounds;
    for (let i = 0; i < b.length; i++) {
      if (v <= b[i]!) {
        this.counts[i] += n;
        break;
      }
    }
    this.sum += v * n;
    this.count += n;
  }
}

/** Receive-to-last-send buckets, in seconds. */
export const FANOUT_BUCKETS = [5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1];
