// Who serves which subscriber (cluster.ts, "Exactly one server per
// subscriber"): the rendezvous-hash winner among the live repeaters that
// heard it, computed alike by every repeater from the same facts, without a
// vote. A repeater that wins, but that the winner without it does not count
// live yet, leaves the subscriber to that one until its next view counts us
// (peers.ts). What moves here is handed to the takeovers (takeover.ts).

import type { Logger } from '../base/log.js';
import { owner } from '../judge/rendezvous.js';
import type { Channel, Subscriber } from '../path/channel.js';
import type { Repeater } from '../repeater/repeater.js';
import type { ClusterCounters } from './counters.js';
import { type HeardTable, idOf } from './heard.js';
import type { PeerTable } from './peers.js';
import type { Takeovers } from './takeover.js';

export class Ownership {
  constructor(
    private readonly id: bigint,
    private readonly peers: PeerTable,
    private readonly heard: HeardTable,
    private readonly repeater: Repeater,
    private readonly takeovers: () => Takeovers,
    private readonly counters: ClusterCounters,
    private readonly log: Logger,
  ) {}

  /** The live repeaters: ourselves and the peers not declared dead (peers.ts). */
  live(): Set<bigint> {
    return this.peers.live();
  }

  /** Whether we serve `e`: the rendezvous winner among the live repeaters that heard it. */
  owns(ch: Channel, e: Subscriber, now: number, live = this.live()): boolean {
    return this.ownerOf(idOf(ch.name, e.form === 'sealed', e.endpoint.text), now, live) === this.id;
  }

  /**
   * The rendezvous winner among the live repeaters that heard it. When that
   * is us, but the one that wins without us does not count us live yet, it
   * serves it as if we were not there: its own, until the view it publishes
   * next counts us (peers.ts).
   */
  ownerOf(id: string, now: number, live: Set<bigint>): bigint | null {
    const candidates = [this.id];
    for (const [peer, deadline] of this.heard.peersOf(id)) if (deadline > now && live.has(peer)) candidates.push(peer);
    const winner = owner(candidates, id);
    if (winner !== this.id || candidates.length === 1) return winner;
    const without = owner(candidates.slice(1), id);
    return without !== null && this.peers.get(without)?.countsUs === false ? without : winner;
  }

  /** After a peer's announcement of a subscriber (`warmed`: the peer completed its warm join). */
  reassignOne(channel: string, sealed: boolean, address: string, now: number, warmed: boolean): void {
    const ch = this.repeater.channels.get(channel);
    const e = ch?.registry(sealed ? 'sealed' : 'plain').get(address);
    if (ch === undefined || e === undefined) return;
    if (warmed) this.repeater.warm.peerCompleted(e);
    const live = this.live();
    const mine = this.owns(ch, e, now, live);
    if (mine !== e.owned) {
      e.owned = mine;
      ch.registry(e.form).touch();
      if (mine) this.takeovers().one(ch, e, live, now);
    }
  }

  /** Recomputes who serves every subscriber; the ones gained are taken over. */
  reassign(why: string): void {
    const now = Date.now();
    const live = this.live();
    const gainedIn = new Map<Subscriber, Channel>();
    const { gained, lost } = this.repeater.reassign((ch, e) => {
      const mine = this.owns(ch, e, now, live);
      if (mine && !e.owned) gainedIn.set(e, ch);
      return mine;
    });
    this.takeovers().moved(gainedIn, live, now);
    if (why === 'peer died') this.counters.failovers += gained.length;
    if (gained.length + lost.length > 0) this.log.info('cluster: subscribers moved', { why, gained: gained.length, lost: lost.length });
  }

  /** Who serves a subscriber and who heard it (for /subscribers); `name` names a repeater. */
  describe(ch: Channel, e: Subscriber, name: (peer: bigint) => string): { servedBy: string | null; heardBy: string[] } {
    const now = Date.now();
    const id = idOf(ch.name, e.form === 'sealed', e.endpoint.text);
    const live = this.live();
    const served = this.ownerOf(id, now, live);
    const heardBy = [this.id, ...[...this.heard.peersOf(id)].filter(([p, d]) => d > now && live.has(p)).map(([p]) => p)];
    return { servedBy: served === null ? null : name(served), heardBy: heardBy.map(name) };
  }

  /** Subscribers this repeater serves. */
  served(): number {
    let n = 0;
    for (const ch of this.repeater.channels.values()) for (const e of ch.subscribers()) if (e.owned) n++;
    return n;
  }
}
