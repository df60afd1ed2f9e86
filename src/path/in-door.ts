// The datagram path's door in for what its listeners receive: each datagram
// is counted by its header, then judged in this order (docs/ARCHITECTURE.md,
// "The path of one datagram"): size, allow-list, then by kind. A cache update
// goes to the cache judge (cache-judge.ts); a frame on a sealed listener is
// opened by the data seal (the session's gate) first; a subscription goes up
// to the repeater's desk through the control door (ports.ts), never judged
// here; anything else is dropped (or forwarded as it is with
// --forward-unknown). A drop that betrays a misconfiguration is noted in the
// hints (drop-hints.ts), on that drop path only.

import { DropSlot, KindSlot } from '../base/stats.js';
import type { Source } from '../net/io.js';
import { type Envelope, EnvelopeKind } from '../wire/envelope.js';
import { checkHeader, peekKind } from '../wire/uwsgi.js';
import type { CacheJudge } from './cache-judge.js';
import type { Channel } from './channel.js';
import type { DropHints } from './drop-hints.js';
import type { Reply } from './link-door.js';
import type { PathConfig, PathRoute } from './path-config.js';
import { type ControlDoor, OWN_INGRESS } from './ports.js';

/** What the in door needs of the path around it. */
export interface InHost {
  readonly config: PathConfig;
  readonly judge: CacheJudge;
  readonly hints: DropHints;
  readonly control: ControlDoor;
  /** Sends a handshake answer or link control frame back to a source (the out door). */
  readonly reply: Reply;
  /** Learns what the batch accepted so far: a subscription is a boundary for the live state (live-states.ts). */
  settle(): void;
}

export class InDoor {
  constructor(private readonly host: InHost) {}

  /** One datagram from `route`'s listener. */
  take(route: PathRoute, msg: Buffer, from: Source): void {
    const { config: cfg, hints } = this.host;
    const ch = route.channel;
    const st = ch.stats;
    st.bytesReceived += msg.length;
    const sealed = route.names !== null;
    const kind = sealed ? KindSlot.sealed : peekKind(msg);
    st.received[kind]++;
    if (msg.length > cfg.maxDatagram) {
      st.dropped[DropSlot.too_large]++;
      return;
    }
    if (!cfg.acl.allows(from.address)) {
      st.dropped[DropSlot.not_allowed]++;
      hints.notAllowed.note(from.address, route.key);
      return;
    }
    if (sealed && route.config.linked === true) {
      if (cfg.links === null) return void st.dropped[DropSlot.unknown_key]++;
      const env = cfg.links.open(ch, msg, from, this.host.reply);
      if (env !== null) this.envelope(ch, env, from);
      return;
    }
    if (sealed) {
      if (cfg.seal === null) return void st.dropped[DropSlot.unknown_key]++;
      const env = cfg.seal.open(ch, msg, route.names!);
      if (typeof env === 'string') hints.unopened(msg, env, from.address, route.key);
      // Beside identity listeners (a fleet migrating), a shared-key frame may not pass for an identity: origins name owners.
      else if (cfg.links?.owns(env.origin) === true) st.dropped[DropSlot.wrong_role]++;
      else this.envelope(ch, env, from);
      return;
    }
    if (kind === KindSlot.set || kind === KindSlot.delete) {
      this.host.judge.cache(ch, msg, route.stable, null);
      return;
    }
    if (kind === KindSlot.subscribe || kind === KindSlot.unsubscribe) {
      this.host.settle();
      const undecodable = this.host.control.plain(route, msg, from, Date.now());
      if (undecodable === null) return;
      if (!cfg.forwardUnknown) {
        st.dropped[DropSlot[undecodable]]++;
        return;
      }
    }
    if (cfg.forwardUnknown) {
      this.host.judge.opaque(ch, msg, route.stable, null);
      return;
    }
    const bad = checkHeader(msg);
    st.dropped[bad === undefined ? DropSlot.unknown_type : DropSlot[bad]]++;
    hints.unknownOnPlain(msg, from.address, route.key);
  }

  /** What a frame on a sealed listener held, once it opened and passed the gate. */
  private envelope(ch: Channel, env: Envelope, from: Source): void {
    if (env.kind === EnvelopeKind.CacheDatagram) {
      if (ch.key !== null && env.channelKey !== ch.key) {
        ch.stats.dropped[DropSlot.key_mismatch]++;
        return;
      }
      this.host.judge.cache(ch, env.datagram!, true, { trace: env.trace, origin: env.origin, fromBus: false, ingress: OWN_INGRESS });
      return;
    }
    this.host.settle();
    this.host.control.sealed(ch, env, from);
  }
}
