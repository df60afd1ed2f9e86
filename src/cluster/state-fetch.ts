// Cluster warm join (docs/PROTOCOL.md, "The cluster bus"; README, "Cluster
// mode"): a repeater that starts in cluster mode fetches the live state from
// one peer before it warms anyone, and every repeater answers such requests.
//
// Invariants:
// - Every repeater keeps the live state of the whole cluster: what comes off
//   the bus goes through the same acceptance path as what its own listeners
//   get, and that path updates the live state (path/cache-judge.ts, through the path's door from the bus).
//   So any peer that is "ready" holds it all; the fetch fills the gap before
//   this repeater was on the bus.
// - Joins are held until the fetch ends, whatever its outcome (warm-join.ts,
//   hold/release), and the fetch is bounded at every step by the peer
//   timeout: the bus must connect, a ready peer must be heard, and each chunk
//   must follow the previous one within it. Otherwise: go on with what we
//   have (cold, or partial), counted by result. At most MAX_ATTEMPTS peers
//   are asked.
// - The bus subscription is in place before the request goes out, so every
//   update published after it reaches us live; a key the live path touched
//   since this repeater started is never overwritten by a fetched entry (it
//   is newer). The answerer sends only entries at most as new as the request
//   (newer ones went out on the bus after our subscription).
// - Nothing is believed before it is authenticated: with keys every message
//   is a sealed bus frame whose origin is its sender (cluster.ts); a chunk
//   counts only from the peer asked, for the request number of this
//   attempt, in sequence. Entries are validated as datagrams from the
//   network, at most MAX_BATCH per chunk and CHUNK_BYTES of datagrams, and
//   the live state's own bound (--state-max-bytes) applies to them.
// - Answering never stalls live traffic: CHUNKS_PER_TURN chunks per turn of
//   the event loop, at most MAX_ANSWERS answers at once (more are declined).
// - The peer asked is the steadiest ready one (on the bus without a gap for
//   longest, peers.ts): one that was cut off, stopped or isolated may have
//   missed deletes. An answer carries the answerer's tombstones too (as
//   deletes, with how long ago they were learnt, live-state.ts), so a key
//   deleted anywhere in the cluster is deleted here as well, whatever an
//   earlier attempt or a saved state brought; a fetched set older than a
//   tombstone we hold is refused ('tombstoned'): it would bring a deleted key
//   back.

import type { Logger } from '../base/log.js';
import type { Channel } from '../path/channel.js';
import type { LiveEntry, LiveState, Tombstone } from '../path/live-state.js';
import type { WarmJoins } from '../repeater/warm-join.js';
import { type BusBody, type BusDatagram, type BusStateChunk, type BusStateRequest, MAX_BATCH } from '../wire/bus.js';
import { cacheKeyText } from '../wire/cache-fields.js';
import { CACHE_DELETE, encodeCacheDelete } from '../wire/cache.js';
import { FRAME_OVERHEAD, MAX_UDP_PAYLOAD } from '../wire/frame.js';

/** Datagram bytes per chunk at most: a sealed chunk stays well under a 64 KiB frame. */
export const CHUNK_BYTES = 32 * 1024;
/** What an entry adds to a chunk beyond its datagram: channel name, framing. */
const ENTRY_OVERHEAD = 16;
/**
 * The largest entry a chunk can carry: one alone must still fit a sealed
 * frame with the Envelope and BusMessage around it (a few dozen bytes; 512
 * spare). A larger one (a datagram near 64 KiB) is left out and counted.
 */
export const MAX_ENTRY = MAX_UDP_PAYLOAD - FRAME_OVERHEAD - 512;
/** Chunks an answer publishes per turn of the event loop. */
const CHUNKS_PER_TURN = 2;
/** Answers in progress at once, at most; further requests are declined. */
export const MAX_ANSWERS = 2;
/** Peers asked at most by one fetch (a decline, a lost chunk or a silent peer moves on to the next). */
export const MAX_ATTEMPTS = 3;
/** How long a starting repeater listens to its peers' first heartbeats before it picks the one to ask. */
const GATHER_MS = 300;

export type FetchResult =
  | 'complete' // a peer sent all its live state
  | 'no_peer' // no peer holding the state was heard within the bound: the first repeater, or all starting
  | 'bus_down' // the bus did not connect within the bound
  | 'timeout' // the peer asked stopped answering
  | 'incomplete' // a chunk was lost (the entries before it are kept)
  | 'declined' // the peer asked would not answer
  | 'overflow'; // too many live updates during the fetch to tell which fetched entries are older

export type FetchPhase = 'connecting' | 'finding' | 'fetching' | 'done';

/** What the fetch and the answers need of the cluster. */
export interface StateHost {
  readonly id: bigint;
  readonly log: Logger;
  readonly warm: WarmJoins;
  readonly channels: ReadonlyMap<string, Channel>;
  /** Publishes a bus message (sealed when the cluster has keys); false when it could not. */
  send(body: BusBody, subject: string): boolean;
  /** The control subject (requests) and a repeater's own state subject (its answers). */
  readonly controlSubject: string;
  stateSubject(requester: bigint): string;
  /** Live peers that said they hold the state, steadiest first. */
  readyPeers(): bigint[];
}

/** The fetch of this repeater's start. */
export class StateFetch {
  phase: FetchPhase = 'connecting';
  result: FetchResult | null = null;
  readonly results = new Map<string, number>();
  /** Fetched entries, by what they did to the live state. */
  readonly entries = new Map<string, number>();
  chunks = 0;
  private peer: bigint | null = null;
  private request = 0;
  private expectSeq = 0;
  private readonly tried = new Set<bigint>();
  private lastFailure: FetchResult | null = null;
  private timer: NodeJS.Timeout | null = null;
  private readonly t0 = Date.now();
  ms = 0;

  constructor(
    private readonly host: StateHost,
    private readonly boundMs: number,
  ) {}

  /** Starts waiting for the bus; nothing to fetch when warm joins are off (nothing is held). */
  start(): void {
    if (!this.host.warm.holding) {
      this.phase = 'done';
      return;
    }
    // From the start, not from the request: an update the bus brings before we ask is newer than the answer may be.
    this.host.warm.beginFetch();
    this.arm(() => this.finish('bus_down'));
  }

  /** The bus connected: look for a ready peer (its heartbeat answers ours at once). */
  connected(): void {
    if (this.phase !== 'connecting') return;
    this.phase = 'finding';
    for (const p of this.host.readyPeers()) if (this.phase === 'finding') this.ask(p);
    if (this.phase === 'finding') this.arm(() => this.giveUp());
  }

  /**
   * A peer's heartbeat says it holds the state. The peers answer our first
   * heartbeat at once, in whatever order the bus brings them: the first
   * ready one starts a short gathering (GATHER_MS), then the steadiest
   * heard is asked.
   */
  peerReady(peer: bigint): void {
    if (this.phase !== 'finding' || this.tried.has(peer) || this.tried.size >= MAX_ATTEMPTS || this.gathering !== null) return;
    this.gathering = setTimeout(() => {
      this.gathering = null;
      const best = this.host.readyPeers().find((p) => !this.tried.has(p));
      if (this.phase === 'finding' && best !== undefined) this.ask(best);
    }, Math.min(GATHER_MS, this.boundMs / 3));
    this.gathering.unref();
  }

  private gathering: NodeJS.Timeout | null = null;

  private ask(peer: bigint): void {
    this.tried.add(peer);
    this.peer = peer;
    this.request++;
    this.expectSeq = 0;
    this.phase = 'fetching';
    this.host.log.info('cluster: fetching the live state from a peer', { peer: peer.toString(16), attempt: this.tried.size });
    this.arm(() => this.next('timeout'));
    if (!this.host.send({ type: 'state_request', target: peer, request: this.request }, this.host.controlSubject)) this.next('timeout');
  }

  /** A chunk on our state subject; false when it is not the one expected (counted by the caller). */
  chunk(sender: bigint, c: BusStateChunk): boolean {
    if (this.phase !== 'fetching' || sender !== this.peer || c.request !== this.request) return false;
    if (c.seq !== this.expectSeq) {
      // Core NATS is at most once: a chunk was lost. What came before it is valid and kept.
      this.next('incomplete');
      return true;
    }
    this.expectSeq++;
    this.chunks++;
    const now = Date.now();
    for (const e of c.entries) {
      const r = this.apply(e, now);
      this.entries.set(r, (this.entries.get(r) ?? 0) + 1);
    }
    if (this.host.warm.fetchOverflowed) this.finish('overflow');
    else if (c.declined) this.next('declined');
    else if (c.last) this.finish('complete');
    else this.arm(() => this.next('timeout'));
    return true;
  }

  /** One fetched entry: a set (refused when older than a delete we remember) or a tombstone. */
  private apply(e: BusDatagram, now: number): string {
    const state = this.host.warm.state(e.channel);
    const learnt = now - (e.ageMs ?? 0);
    const isSet = e.datagram.length > 3 && e.datagram[3] !== CACHE_DELETE;
    if (state !== undefined && isSet && e.datagram.length >= 6) {
      const t = state.tombstone(cacheKeyText(e.datagram));
      if (t !== undefined && t.atMs >= learnt) return 'tombstoned';
    }
    const r = this.host.warm.applyFetched(e.channel, e.datagram);
    // What we keep carries the answerer's time, so it compares right with a later answer's tombstones.
    if ((r === 'set' || r === 'deleted' || r === 'absent') && state !== undefined) state.backdate(cacheKeyText(e.datagram), learnt);
    return r;
  }

  /** This attempt failed: ask another ready peer, or give up. */
  private next(why: FetchResult): void {
    this.lastFailure = why;
    this.peer = null;
    this.phase = 'finding';
    if (this.tried.size < MAX_ATTEMPTS) {
      const other = this.host.readyPeers().find((p) => !this.tried.has(p));
      if (other !== undefined) {
        this.ask(other);
        return;
      }
    }
    this.finish(why);
  }

  private giveUp(): void {
    this.finish(this.lastFailure ?? 'no_peer');
  }

  private arm(fn: () => void): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(fn, this.boundMs);
    this.timer.unref();
  }

  private finish(result: FetchResult): void {
    if (this.phase === 'done') return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.phase = 'done';
    this.result = result;
    this.peer = null;
    this.ms = Date.now() - this.t0;
    this.results.set(result, (this.results.get(result) ?? 0) + 1);
    this.host.warm.endFetch();
    const entries = Object.fromEntries(this.entries);
    const level = result === 'complete' || result === 'no_peer' ? 'info' : 'warn';
    this.host.log[level]('cluster: live state fetch over; warm joins start', { result, ms: this.ms, chunks: this.chunks, entries, peersAsked: this.tried.size });
    this.host.warm.release();
  }

  /** For /healthz. */
  describe(): Record<string, unknown> {
    return { phase: this.phase, result: this.result, ms: this.phase === 'done' ? this.ms : Date.now() - this.t0, chunks: this.chunks, entries: Object.fromEntries(this.entries) };
  }

  close(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.gathering !== null) clearTimeout(this.gathering);
    this.gathering = null;
  }
}

interface Answer {
  readonly requester: bigint;
  readonly request: number;
  /** Channels still to walk, each with the version of its state when the request came: entries, then tombstones. */
  readonly walks: Array<{ channel: string; state: LiveState; startVersion: number; iter: Iterator<[string, LiveEntry | Tombstone]> }>;
  seq: number;
  total: number;
  /** An entry read that did not fit the last chunk: the first of the next. */
  carry: BusDatagram | null;
}

/** Answers other repeaters' requests for our live state. */
export class StateAnswers {
  readonly results = new Map<string, number>();
  entriesSent = 0;
  /** Entries too large for any chunk (MAX_ENTRY), left out of answers. */
  entriesTooLarge = 0;
  private readonly active = new Map<bigint, Answer>();
  private pending: NodeJS.Immediate | null = null;
  private closed = false;

  constructor(private readonly host: StateHost) {}

  /** A request from a tracked peer; ignored unless addressed to us. `ready`: we hold the state. */
  request(sender: bigint, r: BusStateRequest, ready: boolean): void {
    if (r.target !== this.host.id || this.closed) return;
    if (!ready || (this.active.size >= MAX_ANSWERS && !this.active.has(sender))) {
      this.count('declined');
      this.host.send({ type: 'state_chunk', request: r.request, seq: 0, entries: [], last: true, total: 0, declined: true }, this.host.stateSubject(sender));
      return;
    }
    // A requester that asks again started over: its earlier answer is of no use to it.
    if (this.active.has(sender)) this.count('replaced');
    const walks: Answer['walks'] = [];
    for (const name of this.host.channels.keys()) {
      const state = this.host.warm.state(name);
      if (state !== undefined && state.size + state.tombstoneCount > 0) walks.push({ channel: name, state, startVersion: state.version, iter: items(state) });
    }
    this.active.set(sender, { requester: sender, request: r.request, walks, seq: 0, total: 0, carry: null });
    this.host.log.info('cluster: sending our live state to a peer', { peer: sender.toString(16), entries: walks.reduce((n, w) => n + w.state.size, 0), tombstones: walks.reduce((n, w) => n + w.state.tombstoneCount, 0) });
    this.schedule();
  }

  private schedule(): void {
    if (this.pending === null && !this.closed && this.active.size > 0) this.pending = setImmediate(this.pump);
  }

  private readonly pump = (): void => {
    this.pending = null;
    for (const a of [...this.active.values()]) {
      for (let i = 0; i < CHUNKS_PER_TURN && this.active.get(a.requester) === a; i++) this.sendChunk(a);
    }
    this.schedule();
  };

  private sendChunk(a: Answer): void {
    const entries: BusDatagram[] = [];
    let bytes = 0;
    const nowMs = Date.now();
    const nowSec = Math.floor(nowMs / 1000);
    const size = (d: BusDatagram) => d.datagram.length + d.channel.length + ENTRY_OVERHEAD;
    // Whole entries only, up to CHUNK_BYTES (one alone may pass it, up to MAX_ENTRY): a chunk always fits one frame.
    if (a.carry !== null) {
      entries.push(a.carry);
      bytes += size(a.carry);
      a.carry = null;
    }
    while (a.walks.length > 0 && entries.length < MAX_BATCH && bytes < CHUNK_BYTES) {
      const w = a.walks[0]!;
      const n = w.iter.next();
      if (n.done === true) {
        a.walks.shift();
        continue;
      }
      const [key, e] = n.value;
      // Newer than the request: it went out on the bus, which the requester already heard.
      if (e.version > w.startVersion) continue;
      let datagram: Buffer;
      if ('content' in e) {
        if (e.expires !== 0 && e.expires <= nowSec) continue;
        datagram = e.content;
      } else datagram = encodeCacheDelete(Buffer.from(key, 'latin1'), true);
      const ageMs = Math.min(2 ** 31, Math.max(0, nowMs - e.atMs));
      const d: BusDatagram = { type: 'datagram', channel: w.channel, datagram, trace: null, origin: 0n, opaque: false, ageMs };
      if (size(d) > MAX_ENTRY) {
        this.entriesTooLarge++;
        continue;
      }
      if (entries.length > 0 && bytes + size(d) > CHUNK_BYTES) {
        // Copied: it outlives this turn, and the state zeroes the bytes of an entry it replaces.
        a.carry = { ...d, datagram: Buffer.from(datagram) };
        break;
      }
      entries.push(d);
      bytes += size(d);
    }
    const last = a.walks.length === 0 && a.carry === null;
    a.total += entries.length;
    // Encoded (copied) at once: the entries' buffers may be zeroed once the state replaces them.
    const ok = this.host.send({ type: 'state_chunk', request: a.request, seq: a.seq++, entries, last, total: a.total, declined: false }, this.host.stateSubject(a.requester));
    this.entriesSent += entries.length;
    if (!ok) {
      this.active.delete(a.requester);
      this.count('failed');
    } else if (last) {
      this.active.delete(a.requester);
      this.count('complete');
      this.host.log.info('cluster: live state sent to a peer', { peer: a.requester.toString(16), entries: a.total, chunks: a.seq });
    }
  }

  private count(result: string): void {
    this.results.set(result, (this.results.get(result) ?? 0) + 1);
  }

  /** Answers in progress, for /healthz. */
  get inProgress(): number {
    return this.active.size;
  }

  close(): void {
    this.closed = true;
    if (this.pending !== null) clearImmediate(this.pending);
    this.pending = null;
    this.active.clear();
  }
}

/** A state's entries, then its tombstones (both live iterators: see LiveState.walk). */
function* items(state: LiveState): Generator<[string, LiveEntry | Tombstone]> {
  yield* state.walk();
  yield* state.walkTombstones();
}
