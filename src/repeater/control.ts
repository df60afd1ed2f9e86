// The control door of the datagram path (path/ports.ts ControlDoor): the
// subscriptions the path's in door hands up, turned into what the desk
// (subscriptions.ts) takes. Plain ones are rate limited per source before
// they are even decoded (strangers first, from a table they cannot grow past
// its bound); sealed ones arrive opened and checked by the gate.

import type { DropReason } from '../base/stats.js';
import { DropSlot } from '../base/stats.js';
import type { Source } from '../net/io.js';
import type { Channel } from '../path/channel.js';
import type { PathRoute } from '../path/path-config.js';
import type { ControlDoor } from '../path/ports.js';
import { type Envelope, EnvelopeKind } from '../wire/envelope.js';
import { decodeSubscription, type Subscription } from '../wire/subscription.js';
import type { SubscriptionDesk } from './subscriptions.js';
import type { TicketService } from './ticket-service.js';

export class SubscriptionControl implements ControlDoor {
  constructor(
    private readonly desk: () => SubscriptionDesk,
    private readonly tickets: () => TicketService | null,
  ) {}

  plain(route: PathRoute, msg: Buffer, from: Source, now: number): DropReason | null {
    const desk = this.desk();
    const ch = route.channel;
    const known = desk.knownSource(from.address);
    if (!known && !desk.admitStranger(ch, from.address, now)) return null;
    const sub = decodeSubscription(msg);
    if (typeof sub === 'string') return sub;
    desk.applyPlain(ch, sub, from.address, now, known, route.config.warmAnySource);
    return null;
  }

  sealed(ch: Channel, env: Envelope, from: Source): void {
    const desk = this.desk();
    if (ch.key !== null && env.channelKey !== ch.key) {
      desk.refuse(ch, 'key_mismatch', from.address);
      return;
    }
    if (env.kind !== EnvelopeKind.Subscribe && env.kind !== EnvelopeKind.Unsubscribe) {
      ch.stats.dropped[DropSlot.bad_payload]++;
      return;
    }
    const sub: Subscription = {
      unsubscribe: env.kind === EnvelopeKind.Unsubscribe,
      key: env.channelKey,
      address: env.address!,
      modifier1: 0,
      modifier2: 0,
      cores: 0,
      load: 0,
      weight: 0,
      unix: null,
      sign: null,
      signed: null,
    };
    const refused = desk.apply(ch, sub, 'sealed', from.address, Date.now(), env.origin);
    if (refused !== null || sub.unsubscribe) return;
    const ep = desk.vetAddress(sub.address);
    const e = typeof ep === 'string' ? undefined : ch.sealed.get(ep.text);
    if (e === undefined) return;
    // An agent that names its frame's receiver knows MEMBERSHIP frames: it learns from which of our sequences it is a member.
    if (env.receiver.length > 0) ch.confirmMember(e);
    // Every subscribe and refresh of a ticket channel gets the schedule: UDP may have lost the last one.
    const tickets = this.tickets();
    if (ch.tickets && tickets !== null) tickets.send(ch, e);
  }
}
