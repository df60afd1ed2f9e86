// Identity mode: each listed identity in the metrics and in /healthz, for
// serve (its agents, by node identity) and agent (its repeaters, by
// repeater identity). Label values are peers-file names only: the series are
// bounded by the peers file, and a removed identity's go when its revoked
// window ends (base/peer-stats.ts).

import type { Registry } from 'prom-client';
import { counterFrom, gaugeFrom } from '../base/prom.js';
import { peerJson, type PeerRow } from '../base/peer-stats.js';

export type PeerView = () => ReadonlyArray<{ row: PeerRow; linked: boolean }>;

/** `prefix`: `udprepeater` or `udprepeater_agent`. */
export function registerPeerMetrics(register: Registry, prefix: string, view: PeerView): void {
  gaugeFrom(register, `${prefix}_peer_linked`, 'Identity mode: 1 while the listed identity has a confirmed link', ['peer'], () => view().map(({ row, linked }) => [{ peer: row.name }, linked ? 1 : 0] as const));
  gaugeFrom(register, `${prefix}_peer_last_seen_seconds`, 'Identity mode: unix time of the last authentic frame from the listed identity (0: none since start)', ['peer'], () =>
    view().map(({ row }) => [{ peer: row.name }, row.lastSeenMs / 1000] as const),
  );
  counterFrom(register, `${prefix}_peer_frames_refused_total`, 'Identity mode: frames refused that name the listed identity or came under one of its links, by reason', ['peer', 'reason'], () =>
    view().flatMap(({ row }) => [...row.refused].map(([reason, n]) => [{ peer: row.name, reason }, n] as const)),
  );
}

/** The `identity` object of /healthz. */
export function identityHealth(publicKey: string, fingerprint: string, view: PeerView): Record<string, unknown> {
  const peers = view();
  return { publicKey, peersFingerprint: fingerprint, links: peers.filter((p) => p.linked).length, peers: peers.map(({ row, linked }) => peerJson(row, linked)) };
}
