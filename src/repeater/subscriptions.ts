// Control traffic: turns subscriptions into registry changes after vetting
// them. A subscription makes the repeater send to the address it names, so:
// - the address must be a unicast IP on the allow-list and never one of our
//   own listeners, compared in canonical form (net/local.ts);
// - a subscriber's form is fixed by how it was authenticated: a plain
//   (unauthenticated) subscription can never create, refresh, replace or
//   remove a sealed one, nor name an address that has one (its plain copies
//   would carry the cache values in clear); a sealed subscription replaces a
//   plain one for its address. In cluster mode "has one" is one fact for the
//   whole cluster (`ClusterForms`): an address another repeater serves
//   sealed is refused here too, and loses its plain entries here when a peer
//   announces it sealed;
// - uWSGI signatures (--subscriptions-sign-check) apply to plain ones only;
// - plain subscriptions are rate limited per source, except a refresh of an
//   entry by the source that announced it, and known sources have buckets
//   strangers cannot crowd out;
// - a plain subscription is believed about its own source only (anyone on
//   the allow-list can spoof one): it starts a warm join only when it came
//   from the IP it names, as uWSGI announces from its own host (a listener's
//   `warm-any-source` waives it, for nodes behind NAT); an entry created from
//   elsewhere is warmed when its own address first announces it. A plain
//   unsubscribe is believed only from the IP the entry names or the source
//   that announced it, and a refresh from any other source does not make it
//   that source. Sealed subscriptions are authenticated: none of this applies.
// - Identity mode: a sealed entry belongs to the identity that subscribed it
//   (its origin). While it lives, a subscribe or unsubscribe for its address
//   under another identity is refused (owner_conflict) and changes nothing:
//   not its owner, so not the link its copies are sealed under, and revoking
//   the other identity does not remove it. Once it expired or its owner
//   unsubscribed, any listed identity may take the address.

import type { Logger } from '../base/log.js';
import { DropSlot, type DropReason, EventSlot } from '../base/stats.js';
import type { OwnAddresses } from '../net/local.js';
import { type Endpoint, parseEndpoint } from '../wire/address.js';
import type { Subscription } from '../wire/subscription.js';
import type { AccessList } from '../judge/access-list.js';
import type { Channel, Subscriber } from '../path/channel.js';
import type { RateLimiter } from './ratelimit.js';
import type { Form } from '../path/registry.js';

/** Verifies uWSGI signatures; returns a drop reason or null when valid. */
export interface SignatureCheck {
  verify(sub: Subscription, now: number): DropReason | null;
}

export interface DeskDeps {
  acl: AccessList;
  limiter: RateLimiter;
  log: Logger;
  own: OwnAddresses;
  signatures: SignatureCheck | null;
  /** Every channel, for the repeater-wide form rules. */
  channels: () => Iterable<Channel>;
  /** The warm joins (warm-join.ts), told of subscribers that hold none of what they missed. */
  warm?: WarmDesk;
  /** Identity mode: whether an origin is a listed identity's (a subscriber with it is that identity's); null without identities. */
  identities?: { owns(origin: bigint | null): boolean; refusedFor(origin: bigint | null, reason: DropReason): void } | null;
}

export interface WarmDesk {
  /** A subscriber new to its channel ('new': a first subscribe, not a refresh), or brought back from a suspension by its announce ('resumed'). */
  subscribed(ch: Channel, e: Subscriber, why: 'new' | 'resumed'): void;
  /** A plain subscriber new to its channel that is not warmed: its subscription came from another address. */
  refuse(ch: Channel, e: Subscriber, why: string): void;
}

/**
 * Cluster mode: what the other repeaters serve (implemented in cluster/,
 * from their announcements), so the form rules hold across the cluster.
 */
export interface ClusterForms {
  /** True when another repeater of the cluster serves `address` (canonical) sealed, in any channel. */
  sealedElsewhere(address: string): boolean;
}

/** One refused subscription, kept for /refusals (logs are throttled per reason). */
export interface Refusal {
  /** ms timestamp (formatted when viewed: refusals can come by the thousand per second). */
  readonly at: number;
  readonly channel: string;
  readonly reason: DropReason;
  readonly source: string;
  readonly key: string | null;
  readonly address: string | null;
}

const RECENT = 100;

export class SubscriptionDesk {
  private readonly ring: Refusal[] = [];
  private next = 0;
  private cluster: ClusterForms | null = null;
  /** Plain entries not warmed yet because another address created them (weak: they go with the registry). */
  private readonly unwarmed = new WeakSet<Subscriber>();

  constructor(private deps: DeskDeps) {}

  /** Cluster mode: the form rules consult the other repeaters too (kept across reloads). */
  attachCluster(forms: ClusterForms): void {
    this.cluster = forms;
  }

  configure(deps: DeskDeps): void {
    this.deps = deps;
  }

  /** The last refusals, oldest first, for /refusals. */
  recent(): Array<Omit<Refusal, 'at'> & { at: string }> {
    return [...this.ring.slice(this.next), ...this.ring.slice(0, this.next)].map((r) => ({ ...r, at: new Date(r.at).toISOString() }));
  }

  private remember(r: Refusal): void {
    if (this.ring.length < RECENT) this.ring.push(r);
    else this.ring[this.next] = r;
    this.next = (this.next + 1) % RECENT;
  }

  /**
   * Checks an address a subscription (or saved state) names: returns the
   * canonical endpoint or why it can never be a subscriber.
   */
  vetAddress(address: string): Endpoint | DropReason {
    const ep = parseEndpoint(address);
    if (typeof ep === 'string') return 'bad_address';
    const problem = this.deps.own.problem(ep);
    if (problem === 'not_unicast') return 'bad_address';
    if (problem === 'own_listener') return 'loop';
    if (!this.deps.acl.allows(ep.host)) return 'address_not_allowed';
    return ep;
  }

  /** True when an address has a sealed subscriber in any channel, here or (cluster mode) on another repeater. */
  private sealedAnywhere(text: string): boolean {
    for (const ch of this.deps.channels()) if (ch.sealed.get(text) !== undefined) return true;
    return this.cluster?.sealedElsewhere(text) === true;
  }

  /** True when `source` announced a live plain subscriber somewhere. */
  knownSource(source: string): boolean {
    for (const ch of this.deps.channels()) if (ch.plain.hasSource(source)) return true;
    return false;
  }

  /**
   * First look at a plain subscription datagram from a source with no live
   * subscriber: it takes a token before anything else is spent on it (not even
   * decoding), so a flood of strangers costs a map lookup each once their
   * table is full. False when refused (counted).
   */
  admitStranger(ch: Channel, source: string, now: number): boolean {
    if (this.deps.limiter.allow(source, now, false)) return true;
    this.refuse(ch, 'rate_limited', source);
    return false;
  }

  /**
   * A plain subscription, decoded. `known`: its source has a live subscriber
   * (strangers were already admitted by admitStranger). `anySource`: the
   * listener warms subscribers whatever address their subscription came from.
   */
  applyPlain(ch: Channel, sub: Subscription, source: string, now: number, known: boolean, anySource = false): DropReason | null {
    if (known) {
      const ep = parseEndpoint(sub.address);
      const existing = typeof ep === 'string' ? undefined : ch.plain.get(ep.text);
      // A refresh of an entry by the source that announced it costs a lookup: never rate limited,
      // so no flood can make a known subscriber expire. Signed ones must still be verified.
      const freeRefresh = !sub.unsubscribe && this.deps.signatures === null && existing !== undefined && existing.source === source && existing.key === sub.key;
      if (!freeRefresh && !this.deps.limiter.allow(source, now, true)) {
        this.refuse(ch, 'rate_limited', source, sub);
        return 'rate_limited';
      }
    }
    return this.apply(ch, sub, 'plain', source, now, null, anySource);
  }

  /**
   * Vets a decoded subscription and applies it to `ch`. `source` is the IP
   * the datagram came from (canonical, as is every endpoint's host). Returns
   * the drop reason when refused.
   */
  apply(ch: Channel, sub: Subscription, form: Form, source: string, now: number, origin: bigint | null = null, anySource = false): DropReason | null {
    const vetted = this.vet(ch, sub, form, now);
    if (typeof vetted === 'string') {
      this.refuse(ch, vetted, source, sub);
      return vetted;
    }
    const ep = vetted;
    const registry = ch.registry(form);
    const { log } = this.deps;
    const ids = this.deps.identities;
    if (form === 'sealed' && ids != null && this.ownedByAnother(registry.get(ep.text), origin, now, (o) => ids.owns(o))) {
      this.refuse(ch, 'owner_conflict', source, sub);
      ids.refusedFor(origin, 'owner_conflict');
      return 'owner_conflict';
    }
    if (sub.unsubscribe) {
      const existing = registry.get(ep.text);
      if (existing === undefined || existing.isStatic) {
        ch.stats.dropped[DropSlot.not_subscribed]++;
        return 'not_subscribed';
      }
      if (form === 'plain' && source !== ep.host && source !== existing.source) {
        this.refuse(ch, 'foreign_unsubscribe', source, sub);
        return 'foreign_unsubscribe';
      }
      registry.remove(ep.text);
      ch.stats.events[EventSlot.unsubscribe]++;
      log.info('unsubscribed', { channel: ch.name, address: ep.text, key: sub.key, form, source });
      return null;
    }
    if (form === 'sealed') this.dropPlainFor(ep.text, source);
    const before = registry.get(ep.text);
    const suspended = (before?.suspendedUntil ?? 0) !== 0;
    const fromAddress = form === 'sealed' || source === ep.host;
    // Whoever refreshes a plain entry from elsewhere does not become its source (who may unsubscribe it).
    const announcer = form === 'plain' && !fromAddress && before !== undefined && before.source !== null ? before.source : source;
    let r;
    try {
      r = registry.upsert({ endpoint: ep, key: sub.key, source: announcer, origin }, now);
    } catch (err) {
      // No socket for it (too many open files, no free port): refused, counted and visible.
      this.refuse(ch, 'no_socket', source, sub);
      log.throttle('error', 'no-socket', 'cannot open a socket for a subscriber', { channel: ch.name, address: ep.text, error: (err as Error).message }, 60_000);
      return 'no_socket';
    }
    if (r.event === 'full') {
      this.refuse(ch, 'registry_full', source, sub);
      return 'registry_full';
    }
    ch.stats.events[EventSlot[r.event]]++;
    this.warm(ch, r.entry, r.event === 'subscribe', suspended, fromAddress || anySource);
    if (r.event === 'subscribe') log.info('subscribed', { channel: ch.name, address: ep.text, key: sub.key, form, source });
    else log.debug('refreshed', { channel: ch.name, address: ep.text, key: sub.key, form });
    return null;
  }

  /**
   * True when `e` is a live entry another owner subscribed and an identity is
   * involved: an identity's entry is its alone, and an identity takes no live
   * entry of a shared-key agent (that one's goodbye, or its expiry, frees the
   * address). Between shared-key agents nothing changes: any holder of the key
   * may refresh or remove any entry, as without identities.
   */
  private ownedByAnother(e: Subscriber | undefined, origin: bigint | null, now: number, identity: (o: bigint | null) => boolean): boolean {
    if (e === undefined || e.isStatic || e.origin === null || e.origin === origin || e.deadline <= now) return false;
    return identity(e.origin) || identity(origin);
  }

  /** Tells the warm joins of a subscriber new to its channel, or back from a suspension, when it may be warmed. */
  private warm(ch: Channel, e: Subscriber, isNew: boolean, wasSuspended: boolean, warmable: boolean): void {
    if (!warmable) {
      if (!isNew) return;
      this.unwarmed.add(e);
      this.deps.warm?.refuse(ch, e, 'the subscription did not come from the address it names');
      return;
    }
    // Created from elsewhere, and now announced by its own address: new to the warm joins.
    const first = this.unwarmed.delete(e);
    if (isNew || first || wasSuspended) this.deps.warm?.subscribed(ch, e, isNew || first ? 'new' : 'resumed');
  }

  /**
   * A sealed subscriber takes its address (canonical text) over from any
   * plain entry for it, in every channel: one that subscribed here, or
   * (cluster mode) one another repeater announced; `source` says which.
   */
  dropPlainFor(address: string, source: string): void {
    for (const ch of this.deps.channels()) {
      const e = ch.plain.get(address);
      if (e === undefined || e.isStatic) continue;
      ch.plain.remove(address);
      ch.stats.events[EventSlot.evict]++;
      this.deps.log.info('plain subscriber replaced by a sealed one', { channel: ch.name, address, source });
    }
  }

  /** Counts and records a refused subscription (decoded, or only its source known). */
  refuse(ch: Channel, reason: DropReason, source: string, sub: Subscription | null = null): void {
    ch.stats.dropped[DropSlot[reason]]++;
    ch.stats.events[EventSlot.reject]++;
    this.remember({ at: Date.now(), channel: ch.name, reason, source, key: sub?.key ?? null, address: sub?.address ?? null });
    this.deps.log.throttle('warn', `refuse:${reason}`, 'subscription refused', { channel: ch.name, reason, source, key: sub?.key, address: sub?.address });
  }

  private vet(ch: Channel, sub: Subscription, form: Form, now: number): Endpoint | DropReason {
    if (ch.key !== null && sub.key !== ch.key) return 'key_mismatch';
    const { signatures } = this.deps;
    if (form === 'plain' && signatures !== null) {
      const bad = signatures.verify(sub, now);
      if (bad !== null) return bad;
    }
    const ep = this.vetAddress(sub.address);
    if (typeof ep === 'string') return ep;
    if (form === 'plain' && this.sealedAnywhere(ep.text)) return 'form_conflict';
    return ep;
  }
}
