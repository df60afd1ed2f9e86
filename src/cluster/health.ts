// What /healthz says of this repeater's place in the cluster: pure views
// over the bus connection and the peer table.

import type { Bus } from './bus.js';
import type { PeerTable } from './peers.js';

/**
 * Why this repeater is not a full member of the cluster right now (empty:
 * it is): the bus is down; connected but deaf to a subject (a refused
 * subscription); none of the peers it heard is heard any more; or a live
 * peer has not counted it live for a peer timeout (that peer does not hear
 * it: its publishing is refused, or the bus is split one way).
 */
export function degradedBecause(bus: Bus, peers: PeerTable, timeoutMs: number, now: number): string[] {
  if (!bus.connected) return ['bus disconnected'];
  const why: string[] = [];
  for (const d of bus.deafTo()) why.push(`not subscribed to ${d.subject}${d.error === null ? '' : `: ${d.error}`}`);
  if (peers.peers.size > 0 && peers.live().size === 1) why.push('hears none of the peers it heard');
  for (const p of peers.peers.values()) {
    if (peers.isLive(p) && !p.countsUs && now - p.deafSince > timeoutMs) why.push(`not heard by ${p.name}`);
  }
  return why;
}

export interface PeerView {
  readonly id: string;
  readonly name: string;
  readonly lastHeardMs: number;
  readonly subscribers: number;
  /** Its last heartbeat counts us live. */
  readonly hearsUs: boolean;
  /** For how long it says it has been on the bus without a gap; null: it does not say. */
  readonly steadyMs: number | null;
}

/** Live peers, for metrics and /healthz. */
export function livePeerViews(peers: PeerTable, now: number): PeerView[] {
  return [...peers.peers]
    .filter(([, p]) => peers.isLive(p))
    .map(([id, p]) => ({ id: id.toString(16), name: p.name, lastHeardMs: now - p.lastHeard, subscribers: p.subscribers, hearsUs: p.countsUs, steadyMs: Number.isFinite(p.steadySince) ? now - p.steadySince : null }));
}
