// Control traffic: turns subscription datagrams into registry changes after
// vetting them. A subscription can make the repeater send to any address it
// names, so the address must be on the allow-list, a unicast IP, and not one
// of our own listeners (which would loop).

import { networkInterfaces } from 'node:os';
import type { Logger } from '../base/log.js';
import { type Endpoint, isMulticast, isUnspecified, parseEndpoint } from '../wire/address.js';
import type { Subscription } from '../wire/subscription.js';
import type { AccessList } from './acl.js';
import type { Channel } from './channel.js';
import type { RateLimiter } from './ratelimit.js';
import type { Form } from './registry.js';
import { D, type DropReason, E } from '../base/stats.js';

/** Verifies uWSGI signatures; returns a drop reason or null when valid. */
export interface SignatureCheck {
  verify(sub: Subscription, now: number): DropReason | null;
}

export interface DeskDeps {
  acl: AccessList;
  limiter: RateLimiter;
  log: Logger;
  /** Addresses we listen on (text form), so subscriptions cannot loop us. */
  own: OwnAddresses;
  signatures: SignatureCheck | null;
}

/** The endpoints the repeater itself listens on, wildcards expanded. */
export class OwnAddresses {
  private readonly exact = new Set<string>();
  private readonly wildcardPorts = new Set<number>();
  private local = new Set<string>();

  constructor(endpoints: readonly Endpoint[]) {
    for (const ep of endpoints) {
      if (isUnspecified(ep.host)) this.wildcardPorts.add(ep.port);
      else this.exact.add(ep.text);
    }
    if (this.wildcardPorts.size > 0) {
      for (const list of Object.values(networkInterfaces())) {
        for (const a of list ?? []) this.local.add(a.address);
      }
    }
  }

  has(ep: Endpoint): boolean {
    if (this.exact.has(ep.text)) return true;
    return this.wildcardPorts.has(ep.port) && (this.local.has(ep.host) || ep.host.startsWith('127.'));
  }
}

/** One refused subscription, kept for /refusals (logs are throttled per reason). */
export interface Refusal {
  readonly at: string;
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

  constructor(private deps: DeskDeps) {}

  /** The last refusals, oldest first. */
  recent(): Refusal[] {
    return [...this.ring.slice(this.next), ...this.ring.slice(0, this.next)];
  }

  private remember(r: Refusal): void {
    if (this.ring.length < RECENT) this.ring.push(r);
    else this.ring[this.next] = r;
    this.next = (this.next + 1) % RECENT;
  }

  configure(deps: DeskDeps): void {
    this.deps = deps;
  }

  /**
   * Vets a decoded subscription and applies it to `ch`. `source` is the IP
   * the datagram came from. Returns the drop reason when refused.
   */
  apply(ch: Channel, sub: Subscription, form: Form, source: string, now: number, origin: bigint | null = null): DropReason | null {
    const { log } = this.deps;
    const refused = this.vet(ch, sub, now);
    // Logs are throttled per reason; /refusals keeps every recent one.
    if (typeof refused === 'string') {
      this.reject(ch, refused, sub, source);
      return refused;
    }
    const ep = refused;
    if (sub.unsubscribe) {
      const existing = ch.registry.get(ep.text);
      if (existing === undefined || existing.isStatic) {
        ch.stats.dropped[D.not_subscribed]++;
        return 'not_subscribed';
      }
      ch.registry.remove(ep.text);
      ch.stats.events[E.unsubscribe]++;
      log.info('unsubscribed', { channel: ch.name, address: ep.text, key: sub.key, source });
      return null;
    }
    let r;
    try {
      r = ch.registry.upsert({ endpoint: ep, key: sub.key, form, source, origin }, now);
    } catch (err) {
      // No socket for it (too many open files, no free port): refused, counted and visible.
      this.reject(ch, 'no_socket', sub, source);
      this.deps.log.throttle('error', 'no-socket', 'cannot open a socket for a subscriber', { channel: ch.name, address: ep.text, error: (err as Error).message }, 60_000);
      return 'no_socket';
    }
    if (r.event === 'full') {
      this.reject(ch, 'registry_full', sub, source);
      return 'registry_full';
    }
    ch.stats.events[E[r.event]]++;
    if (r.event === 'subscribe') log.info('subscribed', { channel: ch.name, address: ep.text, key: sub.key, form, source });
    else log.debug('refreshed', { channel: ch.name, address: ep.text, key: sub.key });
    return null;
  }

  /** Counts a subscription datagram refused before it could be decoded. */
  refuse(ch: Channel, reason: DropReason, source: string): void {
    ch.stats.dropped[D[reason]]++;
    ch.stats.events[E.reject]++;
    this.remember({ at: new Date().toISOString(), channel: ch.name, reason, source, key: null, address: null });
    this.deps.log.throttle('warn', `refuse:${reason}`, 'subscription refused', { channel: ch.name, reason, source });
  }

  private reject(ch: Channel, reason: DropReason, sub: Subscription, source: string): void {
    ch.stats.dropped[D[reason]]++;
    ch.stats.events[E.reject]++;
    this.remember({ at: new Date().toISOString(), channel: ch.name, reason, source, key: sub.key, address: sub.address });
    this.deps.log.throttle('warn', `reject:${reason}`, 'subscription refused', {
      channel: ch.name,
      reason,
      key: sub.key,
      address: sub.address,
      source,
    });
  }

  private vet(ch: Channel, sub: Subscription, now: number): Endpoint | DropReason {
    const { acl, own, signatures } = this.deps;
    if (ch.key !== null && sub.key !== ch.key) return 'key_mismatch';
    if (signatures !== null) {
      const bad = signatures.verify(sub, now);
      if (bad !== null) return bad;
    }
    const ep = parseEndpoint(sub.address);
    if (typeof ep === 'string') return 'bad_address';
    if (isMulticast(ep.host) || isUnspecified(ep.host) || ep.host === '255.255.255.255') return 'bad_address';
    if (!acl.allows(ep.host)) return 'address_not_allowed';
    if (own.has(ep)) return 'loop';
    return ep;
  }
}
