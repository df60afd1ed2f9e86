// What the repeater tells a cluster (cluster mode) and asks of it, beyond the
// datagram path's bus door (path/ports.ts BusDoor: what the path publishes
// and what a stalled process read). Defined here, implemented in cluster/,
// so the repeater never imports upward.

import type { Channel, Subscriber } from '../path/channel.js';
import type { BusDoor } from '../path/ports.js';
import type { EntryChange } from '../path/registry.js';
import type { TicketService } from './ticket-service.js';

export interface ClusterPort extends BusDoor {
  /** A subscriber this repeater heard was added, refreshed or removed. */
  entryChanged(ch: Channel, e: Subscriber, change: EntryChange): void;
  /** The repeater distributes ticket keys: the cluster keeps one schedule for all (sets `service.peers`). */
  attachTickets(service: TicketService): void;
}
