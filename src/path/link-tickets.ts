// Identity mode's ticket-key frames (docs/PROTOCOL.md, "Ticket keys over
// links"): the fleet's schedule to the linked members of a `tickets`
// channel, each copy sealed under that member's own link (k_ri).
//
// Invariants:
// - Ticket keys leave only under a link key: never under a group key or any
//   key a node holds besides the member itself; a member with no confirmed
//   link now (not yet confirmed, or revoked) gets nothing.
// - The envelope is encoded once per channel key and sealed per link, as a
//   live datagram is (link-door.ts).
// - Suspended and unowned subscribers get nothing (they are in no group).

import type { TicketKey } from '../wire/ticket-codec.js';
import type { Channel, Subscriber } from './channel.js';
import type { LinkDoor } from './link-door.js';

/** Sends one frame to one subscriber; true when it was queued or sent. */
export type SendOne = (e: Subscriber, frame: Buffer) => boolean;

/** The keys to `e` alone (its subscribe or refresh), or to every linked member of `ch` when `e` is null. Returns the copies sent. */
export function linkedTickets(ch: Channel, keys: readonly TicketKey[], e: Subscriber | null, links: LinkDoor, send: SendOne): number {
  if (e !== null) {
    if (e.form !== 'sealed' || !e.owned || e.suspendedUntil !== 0) return 0;
    const plain = links.tickets(e.key, keys);
    const frame = plain === null ? null : links.sealFor(e, plain);
    return frame !== null && send(e, frame) ? 1 : 0;
  }
  let sent = 0;
  for (const g of ch.keyGroups()) {
    const plain = links.tickets(g.key, keys);
    if (plain === null) continue;
    for (const m of g.linked) {
      const frame = links.sealFor(m, plain);
      if (frame !== null && send(m, frame)) sent++;
    }
  }
  return sent;
}
