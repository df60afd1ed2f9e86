// Identity mode: what each listed identity did, for /healthz, the metrics
// and `udprepeater peers` (README, "Metrics and status"): when an authentic
// frame last came from it, whether it is linked, and the frames refused that
// can be pinned on it (they named it, or came under one of its links).
//
// Invariants:
// - One row per peers-file name: the table is bounded by the peers file,
//   never by what arrives. A refusal for a name not in the table is not
//   counted here (the channel's drop counters have it).
// - A name removed from the peers file keeps its row, marked revoked, for
//   `revokedMs` (its refused frames are counted `revoked` meanwhile), then
//   the row and its series go. A key replaced under the same name starts a
//   new row.
// - The datagram path only bumps numbers in a row it already holds.

export interface ListedPeer {
  readonly name: string;
  readonly role: string;
  /** The public key's text form (`urid1...`). */
  readonly key: string;
  readonly allow: readonly string[];
}

export interface PeerRow extends ListedPeer {
  /** Unix ms of the last authentic frame from it; 0: none since start. */
  lastSeenMs: number;
  /** Refused frames pinned on it, by drop reason. */
  readonly refused: Map<string, number>;
  /** Unix ms until which a removed identity's row stays; 0 while listed. */
  revokedUntilMs: number;
}

export class PeerStats {
  private rows = new Map<string, PeerRow>();

  constructor(private readonly revokedMs: number) {}

  /** A new peers table: rows kept by name and key, new ones added, removed ones marked revoked. */
  list(peers: readonly ListedPeer[], nowMs = Date.now()): void {
    const next = new Map<string, PeerRow>();
    for (const p of peers) {
      const had = this.rows.get(p.name);
      const row: PeerRow = had !== undefined && had.key === p.key ? Object.assign(had, { role: p.role, allow: p.allow, revokedUntilMs: 0 }) : { ...p, lastSeenMs: 0, refused: new Map(), revokedUntilMs: 0 };
      next.set(p.name, row);
    }
    for (const [name, row] of this.rows) {
      if (next.has(name)) continue;
      if (row.revokedUntilMs === 0) row.revokedUntilMs = nowMs + this.revokedMs;
      if (row.revokedUntilMs > nowMs) next.set(name, row);
    }
    this.rows = next;
  }

  seen(name: string, nowMs = Date.now()): void {
    const row = this.rows.get(name);
    if (row !== undefined) row.lastSeenMs = nowMs;
  }

  refused(name: string, reason: string): void {
    const row = this.rows.get(name);
    if (row !== undefined) row.refused.set(reason, (row.refused.get(reason) ?? 0) + 1);
  }

  /** The rows now, in peers-file order then revoked ones; revoked rows past their window are dropped first. */
  view(nowMs = Date.now()): readonly PeerRow[] {
    for (const [name, row] of this.rows) if (row.revokedUntilMs !== 0 && row.revokedUntilMs <= nowMs) this.rows.delete(name);
    return [...this.rows.values()];
  }
}

/** A row as /healthz shows it: `linked` says whether it has a link now. */
export function peerJson(row: PeerRow, linked: boolean): Record<string, unknown> {
  return {
    name: row.name,
    role: row.role,
    key: row.key,
    allow: row.allow,
    linked,
    lastSeen: row.lastSeenMs > 0 ? new Date(row.lastSeenMs).toISOString() : null,
    refused: Object.fromEntries([...row.refused].sort((a, b) => a[0].localeCompare(b[0]))),
    ...(row.revokedUntilMs === 0 ? {} : { revokedUntil: new Date(row.revokedUntilMs).toISOString() }),
  };
}
