// The fleet's TLS ticket-key schedule, as the repeater keeps and distributes
// it (docs/PROTOCOL.md, "Ticket keys"; SECURITY.md, "Ticket keys (TLS session resumption)").
//
// - One schedule per repeater (per cluster: the repeaters merge theirs over
//   the bus by the rule of crypto/ticket-schedule.ts, so they converge on one).
// - A key is generated one rotation period before it encrypts and sent at
//   once, so every server holds it before anyone encrypts with it.
// - Distributed sealed only, never to plain subscribers: to the sealed
//   subscribers of channels with `tickets` that this repeater serves, when
//   they subscribe and at every refresh (UDP loses datagrams; a refresh is
//   every --subscribe-interval), and to all of them when the schedule changes.
// - Persisted (0600, atomically) on every change before it is sent, so a
//   restart never invalidates tickets in flight.
// - What comes from elsewhere (tickets.pb at start, the bus) is merged only
//   within this schedule's horizon (crypto/ticket-schedule.ts `beyondHorizon`); the
//   rest is refused and counted by source.

import { describe } from '../base/errors.js';
import type { Logger } from '../base/log.js';
import { beyondHorizon, type TicketParams, ticketKeyId, TicketKeys } from '../crypto/ticket-schedule.js';
import type { TicketKey } from '../wire/ticket-codec.js';
import type { Channel, Subscriber } from '../path/channel.js';

/** Where the schedule is kept across restarts (daemon/ticket-store.ts). */
export interface TicketPersistence {
  save(keys: readonly TicketKey[]): void;
}

/** Cluster mode: who may generate a period's key, and where changes are told. */
export interface TicketPeers {
  /** True when this repeater should generate the key starting at `notBeforeMs`. */
  mayGenerate(notBeforeMs: number, now: number): boolean;
  /** The schedule changed here: tell the other repeaters. */
  changed(keys: readonly TicketKey[]): void;
}

/** Longest wait between two looks at the schedule (a clock step is noticed by then). */
const MAX_WAIT_MS = 60_000;

export class TicketService {
  readonly keys = new TicketKeys();
  framesSent = 0;
  generated = 0;
  /** Keys refused as beyond the horizon, by where they came from. */
  readonly refused = { file: 0, bus: 0 };
  peers: TicketPeers | null = null;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(
    private params: TicketParams,
    private readonly deps: {
      readonly channels: () => Iterable<Channel>;
      /** Seals and sends the keys to `ch`'s sealed subscribers, or to `e` alone (the path's out door); returns the copies sent. */
      readonly send: (ch: Channel, keys: readonly TicketKey[], e: Subscriber | null) => number;
      readonly store: TicketPersistence | null;
      readonly log: Logger;
    },
  ) {}

  configure(params: TicketParams): void {
    this.params = params;
    this.tick();
  }

  /** Starts from the saved keys (already checked), generates what is missing, and keeps the schedule current. */
  start(saved: readonly TicketKey[]): void {
    const now = Date.now();
    const ok = this.admit(saved, 'file', now);
    if (ok.length > 0) this.keys.merge(ok, now);
    this.deps.log.info('ticket keys restored', { keys: this.keys.keys.map(ticketKeyId) });
    this.tick();
  }

  /** Keys from another repeater (cluster mode): merged, and distributed when they changed ours. */
  merge(incoming: readonly TicketKey[]): void {
    if (this.closed) return;
    const now = Date.now();
    const ok = this.admit(incoming, 'bus', now);
    if (ok.length > 0 && this.keys.merge(ok, now)) this.changed('merged');
  }

  /** The keys of `incoming` within our horizon; the others are counted and logged (ids and times only). */
  private admit(incoming: readonly TicketKey[], from: 'file' | 'bus', now: number): readonly TicketKey[] {
    const ok = incoming.filter((k) => !beyondHorizon(k, this.params, now));
    if (ok.length === incoming.length) return incoming;
    this.refused[from] += incoming.length - ok.length;
    const out = incoming.filter((k) => !ok.includes(k)).map((k) => ({ id: ticketKeyId(k), notBefore: new Date(k.notBeforeMs).toISOString(), notAfter: new Date(k.notAfterMs).toISOString() }));
    this.deps.log.throttle('warn', `ticket-horizon:${from}`, 'ticket keys refused: beyond this schedule (--ticket-rotate, --ticket-lifetime)', { from, keys: out });
    return ok;
  }

  /** Generates and prunes as the clock says, then sleeps until the next change (bounded). */
  tick(): void {
    if (this.closed) return;
    const now = Date.now();
    // The current key, or the next one due within half a period, is made by whoever misses it.
    const made = this.keys.ensure(this.params, now, (nb) => this.peers === null || nb <= now + this.params.rotateMs / 2 || this.peers.mayGenerate(nb, now));
    this.generated += made;
    const pruned = this.keys.prune(now);
    if (made > 0 || pruned) this.changed(made > 0 ? 'generated' : 'expired');
    if (this.timer !== null) clearTimeout(this.timer);
    const boundary = (Math.floor(now / this.params.rotateMs) + 1) * this.params.rotateMs;
    const next = Math.min(boundary, this.keys.nextChange(now) ?? Infinity, now + MAX_WAIT_MS);
    this.timer = setTimeout(() => this.tick(), Math.max(1, next - now + 1));
    this.timer.unref();
  }

  private changed(why: string): void {
    const now = Date.now();
    const view = this.keys.view(now);
    this.deps.log.info('ticket keys changed', {
      why,
      encrypting: view.encrypting === null ? null : ticketKeyId(view.encrypting),
      next: view.next === null ? null : ticketKeyId(view.next),
      keys: this.keys.keys.map(ticketKeyId),
    });
    // Saved before anyone hears of it: nothing encrypts under a key a restart could lose.
    if (this.deps.store !== null) {
      try {
        this.deps.store.save(this.keys.keys);
      } catch (err) {
        this.deps.log.error('cannot save the ticket keys; distributing them anyway', { error: describe(err) });
      }
    }
    this.sendAll();
    this.peers?.changed(this.keys.keys);
  }

  /** To every sealed subscriber this repeater serves in the channels with `tickets`. */
  sendAll(): void {
    for (const ch of this.deps.channels()) if (ch.tickets) this.send(ch, null);
  }

  /** To one subscriber that just subscribed or refreshed (or to all of `ch`'s when `e` is null). */
  send(ch: Channel, e: Subscriber | null): void {
    if (!ch.tickets || this.keys.size === 0) return;
    this.framesSent += this.deps.send(ch, this.keys.keys, e);
  }

  /** The rotation period, in seconds. */
  get rotateSeconds(): number {
    return this.params.rotateMs / 1000;
  }

  /** Seconds since the key that encrypts now started encrypting (-1: none). */
  encryptingAge(now = Date.now()): number {
    const e = this.keys.view(now).encrypting;
    return e === null ? -1 : (now - e.notBeforeMs) / 1000;
  }

  close(): void {
    this.closed = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.keys.clear();
  }
}
