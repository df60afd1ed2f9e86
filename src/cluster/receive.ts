// Two kinds of bus message taken in: a peer's announcement of a subscriber
// it heard, and the datagrams it accepted from its listeners.

import type { Repeater } from '../repeater/repeater.js';
import { parseEndpoint } from '../wire/address.js';
import type { BusBatch, BusDatagram, BusMessage, BusSubscriber } from '../wire/bus.js';
import type { ClusterCounters } from './counters.js';
import type { HeardTable } from './heard.js';
import type { PeerTable } from './peers.js';

export interface Receiving {
  readonly peers: PeerTable;
  readonly heard: HeardTable;
  readonly repeater: Repeater;
  readonly counters: ClusterCounters;
  /** How old a datagram may be when delivered (peers.ts, maxAgeMs). */
  readonly maxAgeMs: number;
  /** Who serves this subscriber may have changed (`warmed`: the announcing peer completed its warm join). */
  reassignOne(channel: string, sealed: boolean, address: string, now: number, warmed: boolean): void;
}

/** A subscriber a peer heard (or no longer hears), received at `now`. */
export function takeAnnouncement(r: Receiving, m: BusMessage, b: BusSubscriber, now: number): void {
  // Only from peers we track (a repeater's heartbeat precedes its announcements:
  // one publisher's order is kept), so what `heard` holds is bounded by the peer table.
  if (!r.peers.has(m.sender)) {
    r.counters.bump(r.counters.dropped, 'unknown_peer');
    return;
  }
  // Compared with our registries in canonical form, like any address from the network.
  const ep = parseEndpoint(b.address);
  if (typeof ep === 'string') {
    r.counters.bump(r.counters.dropped, 'bad_payload');
    return;
  }
  const address = ep.text;
  if (b.deadlineMs === 0) r.heard.gone(b.channel, b.sealed, address, m.sender);
  else {
    // Deadlines on the sender's clock become ours: what it has left, from now.
    const deadline = b.isStatic ? Infinity : now + Math.max(0, b.deadlineMs - m.sentAtMs);
    // Bounded: a peer reports at most what its own registries hold.
    if (!r.heard.heard(b.channel, b.sealed, address, m.sender, deadline)) {
      r.counters.bump(r.counters.dropped, 'heard_full');
      return;
    }
    // Served sealed over there: our plain copies to it would carry the values in clear.
    if (b.sealed) r.repeater.subscriptions.dropPlainFor(address, `sealed at ${r.peers.get(m.sender)?.name ?? m.sender.toString(16)}`);
  }
  r.reassignOne(b.channel, b.sealed, address, now, b.warmed === true);
}

/**
 * Datagrams a peer accepted, received at `now`. `learnOnly`: they queued
 * while we were stopped and a peer took over (resume.ts).
 */
export function takeDatagrams(r: Receiving, m: BusMessage, b: BusDatagram | BusBatch, now: number, learnOnly: boolean): void {
  const datagrams = b.type === 'batch' ? b.datagrams : [b];
  // Age by the sender's clock offset, learnt from its least delayed heartbeats: a stall cannot make it young.
  const stale = r.peers.age(m.sender, m.sentAtMs, now) > r.maxAgeMs;
  if (stale || learnOnly) {
    // Not delivered (the subscribers it was for got it from the peers that took over, or it is too late to
    // be in order), but the live state learns it: a delete must not be undone in what fetches and later
    // warm joins send. Learnt as delivered: a warm join in progress does not send it late either.
    r.counters.bump(r.counters.dropped, stale ? 'stale' : 'stalled');
    for (const d of datagrams) if (!d.opaque) r.repeater.path.learnOnly(d.channel, d.datagram, true);
    return;
  }
  r.counters.datagramsReceived += datagrams.length;
  // Into the datagram path's door: one bus message is one batch (its copies leave together, one sendmmsg per socket).
  const path = r.repeater.path;
  path.inBatch(() => {
    for (const d of datagrams) {
      const why = path.fromBus(d.channel, d.datagram, d.trace, d.origin === 0n ? null : d.origin, d.opaque, m.sender);
      if (why !== null) r.counters.bump(r.counters.dropped, 'not_deliverable');
    }
  });
}
