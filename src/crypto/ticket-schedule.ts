// The fleet's TLS session-ticket key schedule, as every holder keeps it: the
// repeater that generates it, the repeaters of a cluster, agents (nginx key
// files) and the Node.js session cache (setTicketKeys).
// Wire format: docs/PROTOCOL.md, "Ticket keys".
// What it protects and what not: SECURITY.md, "Ticket keys (TLS session resumption)".
//
// Invariants:
// - Key i encrypts from its not_before until the next key's not_before and
//   decrypts until its not_after (not_before + rotation + ticket lifetime),
//   then every holder erases it (zeroed in memory).
// - Keys are generated on a grid (not_before = a multiple of the rotation
//   period) one period ahead: every server holds a key for a whole period
//   before anyone encrypts with it.
// - Every holder merges what it receives by one rule, so all converge on the
//   same keys whatever order schedules arrive in: per not_before, the key
//   generated first wins (ties: the smaller id, then the smaller secret). A key that has been out for
//   a while therefore beats a fresh one made by a restarted or partitioned
//   repeater. Merging is commutative, associative and idempotent.
// - Nothing here trusts its input beyond the structure wire/ticket-codec.ts
//   checked: keys already expired or starting implausibly far ahead are
//   ignored, and at most MAX_TICKET_KEYS are held. A holder that knows the
//   schedule's parameters (a repeater) also refuses keys outside what that
//   schedule can produce (`beyondHorizon`).
// - Pruning to MAX_TICKET_KEYS never drops the key that encrypts now nor the
//   next one: keys further ahead go first, then the oldest still decrypting.

import { hkdfSync, randomBytes } from 'node:crypto';
import { MAX_TICKET_KEYS, TICKET_SECRET_BYTES, type TicketKey } from '../wire/ticket-codec.js';

/** A key may be announced at most this long before it starts encrypting. */
export const MAX_TICKET_LEAD_MS = 31 * 86_400_000;
/**
 * What a repeater tolerates beyond its own schedule's horizon (`beyondHorizon`):
 * clocks of repeaters that still open each other's frames (--max-skew, 30 s by
 * default) disagree by less.
 */
export const TICKET_HORIZON_SLACK_MS = 60_000;

export interface TicketParams {
  /** A new key starts encrypting every rotateMs (aligned to multiples of it since 1970). */
  readonly rotateMs: number;
  /** How long a ticket may still be presented after its key stopped encrypting. */
  readonly lifetimeMs: number;
}

/** What a server should load at one moment. */
export interface TicketView {
  /** The key that encrypts now (null: none yet). */
  readonly encrypting: TicketKey | null;
  /** The key that encrypts next, already held so tickets it makes elsewhere decrypt here. */
  readonly next: TicketKey | null;
  /** Every key that decrypts now other than those two, newest first. */
  readonly older: readonly TicketKey[];
}

/**
 * True when `a` wins over `b` for the same not_before: generated first, then
 * the smaller id, then (only a forger reuses an id) the smaller secret: a
 * total order, so every holder picks the same key.
 */
function wins(a: TicketKey, b: TicketKey): boolean {
  if (a.createdMs !== b.createdMs) return a.createdMs < b.createdMs;
  if (a.id !== b.id) return a.id < b.id;
  return Buffer.compare(a.secret, b.secret) < 0;
}

/**
 * True when a key is nothing the schedule `p` generates: it starts
 * encrypting more than one rotation (plus the slack) from `now`, or it
 * decrypts for longer than rotation + lifetime (plus the slack). A repeater
 * generates a period's key one rotation ahead, living exactly rotation +
 * lifetime, so anything further out came from another configuration or a
 * forger; refusing it bounds what an injected schedule can plant to one
 * rotation ahead and rotation + lifetime of life.
 */
export function beyondHorizon(k: TicketKey, p: TicketParams, now: number): boolean {
  return k.notBeforeMs > now + p.rotateMs + TICKET_HORIZON_SLACK_MS || k.notAfterMs - k.notBeforeMs > p.rotateMs + p.lifetimeMs + TICKET_HORIZON_SLACK_MS;
}

/** How many keys a schedule with these parameters holds at most: the next, the current, and those still decrypting. */
export function keysHeld(p: TicketParams): number {
  return 2 + Math.ceil(p.lifetimeMs / p.rotateMs);
}

export class TicketKeys {
  /** Sorted by not_before, one key per not_before. */
  private held: TicketKey[] = [];

  get keys(): readonly TicketKey[] {
    return this.held;
  }

  get size(): number {
    return this.held.length;
  }

  /**
   * Merges `incoming` (from a peer, a repeater or a file) by the rule above
   * and drops what has expired. Returns true when the held keys changed.
   */
  merge(incoming: readonly TicketKey[], now: number): boolean {
    const byStart = new Map(this.held.map((k) => [k.notBeforeMs, k]));
    let changed = false;
    for (const k of incoming) {
      if (k.notAfterMs <= now || k.notBeforeMs > now + MAX_TICKET_LEAD_MS || k.secret.length !== TICKET_SECRET_BYTES) continue;
      const have = byStart.get(k.notBeforeMs);
      if (have !== undefined && !wins(k, have)) continue;
      if (have !== undefined) have.secret.fill(0);
      byStart.set(k.notBeforeMs, { ...k, secret: Buffer.from(k.secret) });
      changed = true;
    }
    if (changed) this.held = [...byStart.values()].sort((a, b) => a.notBeforeMs - b.notBeforeMs);
    return this.prune(now) || changed;
  }

  /**
   * Erases expired keys and, beyond MAX_TICKET_KEYS, spare ones: first those
   * after the next key (furthest ahead first), then the oldest still
   * decrypting. The key that encrypts now and the next one always stay.
   * True when any went.
   */
  prune(now: number): boolean {
    const before = this.held.length;
    let keep: TicketKey[] = [];
    for (const k of this.held) {
      if (k.notAfterMs > now) keep.push(k);
      else k.secret.fill(0);
    }
    if (keep.length > MAX_TICKET_KEYS) {
      const { encrypting, next } = viewOf(keep, now);
      const ahead = keep.filter((k) => next !== null && k.notBeforeMs > next.notBeforeMs).reverse();
      const older = keep.filter((k) => k !== encrypting && k.notBeforeMs <= now);
      const drop = new Set([...ahead, ...older].slice(0, keep.length - MAX_TICKET_KEYS));
      for (const k of drop) k.secret.fill(0);
      keep = keep.filter((k) => !drop.has(k));
    }
    this.held = keep;
    return keep.length !== before;
  }

  /**
   * Generates the keys the grid needs now (the current period's and the
   * next one's) when they are missing and `mayGenerate(notBefore)` agrees
   * (cluster mode: only the rendezvous owner of that period). Returns how
   * many keys were added.
   */
  ensure(p: TicketParams, now: number, mayGenerate: (notBeforeMs: number) => boolean = () => true): number {
    const current = Math.floor(now / p.rotateMs) * p.rotateMs;
    const fresh: TicketKey[] = [];
    for (const nb of [current, current + p.rotateMs]) {
      if (this.held.some((k) => k.notBeforeMs === nb)) continue;
      if (!mayGenerate(nb)) continue;
      fresh.push(newTicketKey(nb, nb + p.rotateMs + p.lifetimeMs, now));
    }
    if (fresh.length > 0) this.merge(fresh, now);
    return fresh.length;
  }

  view(now: number): TicketView {
    return viewOf(this.held, now);
  }

  /** The next moment the view changes (a key starts or ends); null when none will. */
  nextChange(now: number): number | null {
    let t = Infinity;
    for (const k of this.held) {
      if (k.notBeforeMs > now) t = Math.min(t, k.notBeforeMs);
      if (k.notAfterMs > now) t = Math.min(t, k.notAfterMs);
    }
    return Number.isFinite(t) ? t : null;
  }

  /** The held keys for status pages and logs: ids and times, never secrets. */
  describe(now: number): Array<{ id: string; notBefore: string; notAfter: string; encrypting: boolean }> {
    const enc = this.view(now).encrypting;
    return this.held.map((k) => ({ id: ticketKeyId(k), notBefore: new Date(k.notBeforeMs).toISOString(), notAfter: new Date(k.notAfterMs).toISOString(), encrypting: k === enc }));
  }

  /** Zeroes every secret; the holder is empty afterwards. */
  clear(): void {
    for (const k of this.held) k.secret.fill(0);
    this.held = [];
  }
}

/** The view of `held` (sorted by not_before) at `now`. */
function viewOf(held: readonly TicketKey[], now: number): TicketView {
  let encrypting: TicketKey | null = null;
  let next: TicketKey | null = null;
  for (const k of held) {
    if (k.notAfterMs <= now) continue;
    if (k.notBeforeMs <= now) encrypting = k;
    else if (next === null) next = k;
  }
  const older = held.filter((k) => k !== encrypting && k !== next && k.notAfterMs > now && k.notBeforeMs <= now).reverse();
  return { encrypting, next, older };
}

export function newTicketKey(notBeforeMs: number, notAfterMs: number, now: number): TicketKey {
  let id = randomBytes(8).readBigUInt64LE(0);
  if (id === 0n) id = 1n;
  return { id, notBeforeMs, notAfterMs, createdMs: now, secret: randomBytes(TICKET_SECRET_BYTES) };
}

/**
 * The 48-byte material of a key (AES-128 and a 16-byte HMAC-SHA256 key, for
 * Node and nginx's 48-byte files): derived with HKDF-SHA256 from the 80-byte
 * secret, never a truncation of it, so no key is used with two ciphers.
 * Returned in the order name (16), HMAC (16), AES (16).
 */
function material48(k: TicketKey): Buffer {
  return Buffer.from(hkdfSync('sha256', k.secret, Buffer.alloc(0), 'udprepeater ticket key 48', 48));
}

/** Node's `server.setTicketKeys` layout: name (16), HMAC key (16), AES-128 key (16). */
export function nodeTicketKey(k: TicketKey): Buffer {
  return material48(k);
}

/**
 * An nginx `ssl_session_ticket_key` file. 80 bytes: name (16), HMAC key (32),
 * AES-256 key (32): the secret itself. 48 bytes: name (16), AES-128 key (16),
 * HMAC key (16): note the AES and HMAC halves are in the opposite order from
 * Node's (nginx 1.22, ngx_ssl_session_ticket_keys; proven by
 * test/system/tls.nginx.test.ts decrypting nginx's own tickets).
 */
export function nginxTicketKey(k: TicketKey, size: 48 | 80): Buffer {
  if (size === 80) return Buffer.from(k.secret);
  const m = material48(k);
  return Buffer.concat([m.subarray(0, 16), m.subarray(32, 48), m.subarray(16, 32)]);
}

/** A key's id as logs and /healthz show it (never its secret). */
export function ticketKeyId(k: TicketKey): string {
  return k.id.toString(16).padStart(16, '0');
}
