// What this repeater publishes on the bus from its own listeners, batched:
// the datagrams one turn of the event loop accepted for a channel go out as
// one message (a `datagram` alone, else a `batch`), sealed once.
//
// Invariants: a batch holds at most MAX_BATCH datagrams and about
// BATCH_BYTES, so its sealed frame stays under 64 KiB (a larger datagram
// alone still goes); datagrams keep the order they were accepted in, and
// `flush` publishes everything queued, so a control message sent after a
// flush follows every datagram accepted before it.

import type { Channel } from '../path/channel.js';
import { type BusBody, type BusDatagram, MAX_BATCH } from '../wire/bus.js';
import type { TraceFields } from '../wire/trace.js';
import type { ClusterCounters } from './counters.js';

/** A batch holds at most this many bytes of datagrams (one datagram alone may hold more): its sealed frame stays under 64 KiB. */
const BATCH_BYTES = 32 * 1024;
/** What an item adds to a batch beyond its datagram: channel, trace, origin, framing. */
const BATCH_ITEM_OVERHEAD = 48;

export class Outbox {
  private readonly queues = new Map<string, { items: BusDatagram[]; bytes: number }>();
  private pending: NodeJS.Immediate | null = null;

  /** `send` publishes a body on a channel's data subject; false when it could not. */
  constructor(
    private readonly send: (body: BusBody, channel: string) => boolean,
    private readonly counters: ClusterCounters,
  ) {}

  add(ch: Channel, datagram: Buffer, stable: boolean, trace: TraceFields | null, origin: bigint | null, opaque: boolean): void {
    let q = this.queues.get(ch.name);
    // A batch must fit one sealed frame: what is queued goes first when this one would pass BATCH_BYTES
    // (a large datagram after small ones would otherwise make the batch unsealable, and lose them all).
    if (q !== undefined && q.items.length > 0 && q.bytes + datagram.length + BATCH_ITEM_OVERHEAD > BATCH_BYTES) {
      this.flushChannel(ch.name);
      q = undefined;
    }
    if (q === undefined) this.queues.set(ch.name, (q = { items: [], bytes: 0 }));
    // Queued past this turn of the event loop: a view into a reused receive buffer must be copied.
    q.items.push({ type: 'datagram', channel: ch.name, datagram: stable ? datagram : Buffer.from(datagram), trace, origin: origin ?? 0n, opaque });
    q.bytes += datagram.length + BATCH_ITEM_OVERHEAD;
    if (q.items.length >= MAX_BATCH || q.bytes >= BATCH_BYTES) this.flushChannel(ch.name);
    else if (this.pending === null) this.pending = setImmediate(() => this.flush());
  }

  /** Publishes what this turn of the event loop accepted: one message (and one seal) per channel. */
  flush(): void {
    if (this.pending !== null) clearImmediate(this.pending);
    this.pending = null;
    for (const name of this.queues.keys()) this.flushChannel(name);
  }

  private flushChannel(name: string): void {
    const q = this.queues.get(name);
    if (q === undefined || q.items.length === 0) return;
    this.queues.delete(name);
    const body: BusBody = q.items.length === 1 ? q.items[0]! : { type: 'batch', datagrams: q.items };
    if (this.send(body, name)) this.counters.datagramsPublished += q.items.length;
    else this.counters.publishSkipped += q.items.length;
  }
}
