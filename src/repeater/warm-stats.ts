// What warm joins report (metrics, /subscribers) and what they need of the
// datagram path.

import type { Logger } from '../base/log.js';
import type { OutletGroup, SendSink } from '../net/io.js';
import type { Channel, Subscriber } from '../path/channel.js';
import type { LiveState } from '../path/live-state.js';
import type { WarmSent } from '../path/out-door.js';

/** Where warm datagrams leave: the datagram path's out door (path/out-door.ts). */
export interface WarmOut {
  begin(): void;
  flush(): void;
  warm(ch: Channel, e: Subscriber, group: OutletGroup, content: Buffer, sink: SendSink): WarmSent;
}

/** What the warm-join scheduler needs of the datagram path. */
export interface WarmHost {
  readonly channels: ReadonlyMap<string, Channel>;
  readonly log: Logger;
  /** Asked to build, seal and send each warm datagram. */
  readonly out: WarmOut;
  /** The live states the path keeps. */
  readonly live: { get(channel: string): LiveState | undefined; entries(): IterableIterator<[string, LiveState]> };
}

/** Counters of one channel, read by the metrics on scrape. */
export class WarmStats {
  started = 0;
  /** Of those started, joins that went on from their destination's mark (within its cooldown): only what it was not sent yet. */
  resumed = 0;
  completed = 0;
  /** Ended before the last entry: subscriber gone, replaced, warm joins turned off. */
  ended = 0;
  /** Went back to send again what a closed port lost. */
  restarted = 0;
  /** Cluster mode: subscribers taken over from another repeater that were sent what changed since it was last heard. */
  repairs = 0;
  /** Of those started, joins another repeater began and never completed, finished here after it died or left. */
  takeovers = 0;
  /** Subscribers new to the channel that got no join: not announced from their own address, or the destinations table was full. */
  refused = 0;
  datagrams = 0;
  bytes = 0;
  /** Evictions and expiries of live states since dropped (turned off, then on again). */
  evicted = 0;
  expired = 0;
}

/** A warm join's progress, for /subscribers. */
export interface WarmProgress {
  readonly sent: number;
  readonly skipped: number;
  readonly dropped: number;
  /** Entries in the state when the join started. */
  readonly total: number;
  readonly startedAt: string;
  /** It went on from its destination's mark instead of from the first entry. */
  readonly resumed?: boolean;
  /** Cluster mode: the join waits for the live state to be fetched from a peer. */
  readonly waiting?: 'cluster state';
}
