// What the repeater tells a cluster (cluster mode) and asks of it. Defined
// here, implemented in cluster/, so the repeater never imports upward.

import type { TraceFields } from '../wire/trace.js';
import type { Channel, Subscriber } from './channel.js';
import type { EntryChange } from './registry.js';
import type { TicketService } from './ticket-service.js';

export interface ClusterPort {
  /**
   * A datagram this repeater accepted from one of its own listeners and
   * forwarded: the other repeaters forward it to the subscribers they serve.
   * `stable`: false when `datagram` is a view into a buffer the next receive
   * reuses (the port copies what it keeps past the call).
   */
  publish(ch: Channel, datagram: Buffer, stable: boolean, trace: TraceFields | null, origin: bigint | null, opaque: boolean): void;
  /** A subscriber this repeater heard was added, refreshed or removed. */
  entryChanged(ch: Channel, e: Subscriber, change: EntryChange): void;
  /** The repeater distributes ticket keys: the cluster keeps one schedule for all (sets `service.peers`). */
  attachTickets(service: TicketService): void;
  /**
   * A datagram from one of our own listeners, about to be accepted: true to
   * go on. False when this process was stopped long enough for its peers to
   * take over: the cluster holds a copy until it knows whether they did (and
   * then runs `again` with it, in arrival order, or drops it), or drops it
   * at once (counted in the channel's `stalled`).
   */
  ownArrival(ch: Channel, datagram: Buffer, again: (copy: Buffer) => void): boolean;
}

/** Our own listeners' ingress in the exactly-once memory (a bus sender is never 0). */
export const OWN_INGRESS = 0n;

/** How a datagram that is not from one of our plain listeners arrived. */
export interface Arrival {
  readonly trace: TraceFields | null;
  /** The agent that sealed it, if any: never sent back there. */
  readonly origin: bigint | null;
  /** It came off the cluster bus: never published again. */
  readonly fromBus: boolean;
  /** Who brought it into the cluster: the publishing repeater's id, or OWN_INGRESS. */
  readonly ingress: bigint;
}
