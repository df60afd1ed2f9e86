// What cluster mode counts, read by daemon/metrics.ts on scrape.

export class ClusterCounters {
  published = new Map<string, number>();
  received = new Map<string, number>();
  dropped = new Map<string, number>();
  failovers = 0;
  /** Datagrams not published: the bus was down (or the client refused them). */
  publishSkipped = 0;
  /**
   * Datagrams, whatever the batching: published on the bus (one per datagram
   * in a published datagram or batch message), and taken off it from other
   * repeaters (one per datagram in a received message that was not dropped
   * whole: stale or refused messages count in `dropped`, by message).
   */
  datagramsPublished = 0;
  datagramsReceived = 0;

  bump(m: Map<string, number>, k: string): void {
    m.set(k, (m.get(k) ?? 0) + 1);
  }
}
