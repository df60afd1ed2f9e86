// What the datagram path asks of the rooms above it, and tells them. Defined
// here, implemented there (repeater/, cluster/), so the path never imports
// upward: the control door (subscriptions, judged by the repeater's desk),
// the bus door (cluster mode), and the live watch (warm joins).

import type { DropReason } from '../base/stats.js';
import type { Source } from '../net/io.js';
import type { Envelope } from '../wire/envelope.js';
import type { TraceFields } from '../wire/trace.js';
import type { Channel } from './channel.js';
import type { LiveState } from './live-state.js';
import type { PathRoute } from './path-config.js';

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

/** Subscriptions: the path hands them to the repeater's desk and judges nothing in them. */
export interface ControlDoor {
  /**
   * A plain subscribe or unsubscribe datagram on a plain listener: null when
   * it was taken (or refused, and counted), else why it did not decode (the
   * path drops it for that reason, or forwards it as it is with
   * --forward-unknown).
   */
  plain(route: PathRoute, msg: Buffer, from: Source, now: number): DropReason | null;
  /** A sealed subscribe or unsubscribe that opened and passed the gate. */
  sealed(ch: Channel, env: Envelope, from: Source): void;
}

/** Cluster mode: what the path tells the bus (implemented in cluster/). */
export interface BusDoor {
  /**
   * A datagram this repeater accepted from one of its own listeners and
   * forwarded: the other repeaters forward it to the subscribers they serve.
   * `stable`: false when `datagram` is a view into a buffer the next receive
   * reuses (the door copies what it keeps past the call).
   */
  publish(ch: Channel, datagram: Buffer, stable: boolean, trace: TraceFields | null, origin: bigint | null, opaque: boolean): void;
  /**
   * A datagram from one of our own listeners, about to be accepted: true to
   * go on. False when this process was stopped long enough for its peers to
   * take over: the cluster holds a copy until it knows whether they did (and
   * then runs `again` with it, in arrival order, or drops it), or drops it
   * at once (counted in the channel's `stalled`).
   */
  ownArrival(ch: Channel, datagram: Buffer, again: (copy: Buffer) => void): boolean;
}

/** Told of the live path's changes to the live states (the warm joins). */
export interface LiveWatch {
  /** Non-null while every key the live path sets or deletes must be told (a cluster fetch of the live state). */
  readonly touched: ((channel: string, datagram: Buffer) => void) | null;
  /** `state` changed at `nowMs`: called once per receive batch at most. */
  changed(state: LiveState, nowMs: number): void;
}
