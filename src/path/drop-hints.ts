// The datagram path's hints (base/hints.ts): mistakes recognised from datagrams it
// drops. Each check runs only once the datagram is already being dropped.
//
// - a sealed frame on a plain listener: an agent pointed at the plain port;
// - a uwsgi packet on a sealed listener: a node sending straight to it;
// - a source outside --allow: the allow-list misses the nodes' network;
// - a frame naming another receiver: agents reach this listener through NAT,
//   a port forward or a proxy, and it lacks public=.

import { HintTable } from '../base/hints.js';
import type { Logger } from '../base/log.js';
import { looksSealed } from '../wire/frame.js';
import { checkHeader, MODIFIER1_CACHE, MODIFIER1_SUBSCRIPTION } from '../wire/uwsgi.js';

const MINUTE = 60_000;

/** A source the allow-list refused, as /refusals lists it. */
export interface AllowRefusal {
  /** The last time (ISO). */
  at: string;
  channel: string | null;
  reason: 'not_allowed';
  /** null for the sources past HINT_SOURCES, counted together. */
  source: string | null;
  listener: string;
  /** Datagrams refused from this source since it was first seen (HINT_FORGET_MS). */
  count: number;
}

export class DropHints {
  readonly sealedOnPlain: HintTable;
  readonly plainOnSealed: HintTable;
  readonly notAllowed: HintTable;
  readonly otherReceiver: HintTable;

  /**
   * @param allow the running allow-list (null: any)
   * @param channelOf the channel of a listener, for /refusals
   */
  constructor(
    log: Logger,
    allow: () => readonly string[] | null,
    private readonly channelOf: (listener: string) => string | null,
  ) {
    this.sealedOnPlain = new HintTable(
      {
        name: 'sealed_on_plain',
        level: 'warn',
        intervalMs: MINUTE,
        whereName: 'listener',
        message: () => "a sealed frame reached a plain listener: is an agent pointed at this plain port? give the agent the repeater's --listen-sealed address",
      },
      log,
    );
    this.plainOnSealed = new HintTable(
      {
        name: 'plain_on_sealed',
        level: 'warn',
        intervalMs: MINUTE,
        whereName: 'listener',
        message: () => "a plain uWSGI datagram reached a sealed listener: point the node at its agent's --local (or at a plain --listen)",
      },
      log,
    );
    this.otherReceiver = new HintTable(
      {
        name: 'other_receiver',
        level: 'warn',
        intervalMs: MINUTE,
        whereName: 'listener',
        message: () =>
          "a sealed frame names another receiver than this listener: if agents reach it through NAT, a port forward or a proxy, add public=ADDR (the address their --repeater names) to this --listen-sealed; otherwise it is a capture replayed here",
      },
      log,
    );
    this.notAllowed = new HintTable(
      {
        name: 'not_allowed',
        level: 'warn',
        intervalMs: MINUTE,
        whereName: 'listener',
        message: () => `a source is not in --allow (${allow()?.join(', ') ?? 'any'}): if it is one of the nodes, add its network`,
      },
      log,
    );
  }

  /** A datagram a plain listener drops as no uwsgi packet: a frame? */
  unknownOnPlain(msg: Buffer, source: string, listener: string): void {
    if (looksSealed(msg)) this.sealedOnPlain.note(source, listener);
  }

  /** A datagram a sealed listener could not open (`why`): a whole uwsgi cache update or subscription, or a frame for another address? */
  unopened(msg: Buffer, why: string, source: string, listener: string): void {
    if (why === 'wrong_receiver') {
      this.otherReceiver.note(source, listener);
      return;
    }
    const m1 = msg[0];
    if ((m1 === MODIFIER1_CACHE || m1 === MODIFIER1_SUBSCRIPTION) && checkHeader(msg) === undefined) this.plainOnSealed.note(source, listener);
  }

  /** Every hint seen lately, for /healthz. */
  view(now = Date.now()): unknown[] {
    return [...this.sealedOnPlain.view(now), ...this.plainOnSealed.view(now), ...this.otherReceiver.view(now), ...this.notAllowed.view(now)];
  }

  /** The sources the allow-list refused lately, one entry each (its last refusal), for /refusals. */
  refusals(now = Date.now()): AllowRefusal[] {
    return this.notAllowed.view(now).map((v) => ({
      at: v.lastSeen,
      channel: this.channelOf(String(v['listener'])),
      reason: 'not_allowed',
      source: v.source,
      listener: String(v['listener']),
      count: v.count,
    }));
  }
}
