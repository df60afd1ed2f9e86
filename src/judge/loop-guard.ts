// Loop freedom for cache datagrams (docs/PROTOCOL.md, "Trace").
//
// The first repeater or agent that accepts a datagram stamps it with a trace:
// its own ingress id (48 random bits drawn per process), a sequence number and
// a hop count. Whoever forwards it keeps the trace (uWSGI ignores the bytes).
// A forwarder drops a traced datagram when:
// - the ingress is its own: the datagram came back to where it entered;
// - it has seen (ingress, sequence) before: it already forwarded it (a sliding
//   window per ingress, as for sealed frames); or
// - it has passed MAX_HOPS forwarders (a backstop for when an attacker floods
//   the bounded window table with invented ingress ids).
// So one accepted datagram is forwarded at most once by each forwarder, and a
// loop of any shape stops at the first forwarder it reaches twice.

import { randomBytes } from 'node:crypto';
import type { TraceFields } from '../wire/trace.js';
import { ReplayWindow } from './replay.js';

export const MAX_HOPS = 8;
const MAX_INGRESSES = 4096;

/** ingress: 48-bit id of the first forwarder; sequence: per ingress, from 1; hops: forwarders passed. */
export type Trace = TraceFields;

export type LoopVerdict = 'loop' | 'duplicate' | null;

/** A fresh 48-bit id, never 0. */
export function newIngressId(): number {
  return randomBytes(6).readUIntLE(0, 6) || 1;
}

/** Unsafe for concurrent use (JS is single-threaded). */
export class LoopGuard {
  private sequence = 0;
  private readonly windows = new Map<number, ReplayWindow>();

  constructor(readonly self: number = newIngressId()) {}

  /** The trace for a datagram that enters here. */
  stamp(): Trace {
    return { ingress: this.self, sequence: ++this.sequence, hops: 1 };
  }

  /** Judges a traced datagram; when it may pass, records it and returns the trace to forward with. */
  pass(t: Trace): Trace | Exclude<LoopVerdict, null> {
    if (t.ingress === this.self || t.hops >= MAX_HOPS) return 'loop';
    let w = this.windows.get(t.ingress);
    if (w === undefined) {
      // Bounded: invented ingress ids evict the oldest window (the hop limit still holds).
      if (this.windows.size >= MAX_INGRESSES) this.windows.delete(this.windows.keys().next().value as number);
      w = new ReplayWindow();
      this.windows.set(t.ingress, w);
    }
    if (!w.accept(t.sequence)) return 'duplicate';
    return { ingress: t.ingress, sequence: t.sequence, hops: t.hops + 1 };
  }

  get ingresses(): number {
    return this.windows.size;
  }

  /** Traces this forwarder has stamped. */
  get stamped(): number {
    return this.sequence;
  }
}
