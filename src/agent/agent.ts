// The node-side agent: bridges a uWSGI node's plain loopback cache traffic
// to sealed repeaters and back. Plain bytes only ever travel on loopback;
// everything on the network is a sealed frame.
//
//   node cache-udp-node --plain--> local  --seal--> socket -> each repeater
//   node cache-udp-server <--plain-- deliver <--open-- socket <- repeaters
//
// Without --deliver (a host with nginx or HAProxy and no node) the agent only
// keeps ticket keys: cache datagrams from the repeaters are dropped
// (no_subscribers).
//
// One UDP socket talks to every repeater: it sends the frames and the
// subscriptions (which name it explicitly), so the repeaters send their frames
// back to it. Datagrams from any IP that is not a configured repeater are
// dropped before any crypto, and only frames sealed by a repeater open.
// On loopback, only the node's own sockets are heard (local-senders.ts).
// The agent is a forwarder like the repeater: it stamps what the node sends
// with its own loop trace and drops what it already forwarded. A traced
// datagram on --local is a forwarder's, never the node's: it is dropped unjudged,
// so it cannot mark as seen the trace of a sealed copy the node is owed.

import type { Logger } from '../base/log.js';
import { ChannelStats, DropSlot, FANOUT_BUCKETS, FastHistogram, KindSlot } from '../base/stats.js';
import type { AgentConfig } from '../config/agent-config.js';
import { KeyRing } from '../crypto/keyring.js';
import type { SecureSession } from '../crypto/session.js';
import { LoopGuard } from '../judge/loop-guard.js';
import type { MemberLinks } from '../member/member-links.js';
import { ChannelMember, type MemberConfig, type MemberEvents, type MemberSeal } from '../member/channel-member.js';
import { type Backend, createFanout, type DatagramListener, DEFAULT_BACKEND, type Fanout, openListener, type Outlet, type Source } from '../net/io.js';
import { forwardForm, inspectCacheUpdate, newShape, contentOf } from '../wire/cache.js';
import { EnvelopeKind } from '../wire/envelope.js';
import { MAX_UDP_PAYLOAD } from '../wire/frame.js';
import { readTrace, type TraceFields } from '../wire/trace.js';
import { peekKind } from '../wire/uwsgi.js';
import { AgentHints } from './hints.js';
import { LocalSenders } from './local-senders.js';
import { TicketFiles } from './ticket-files.js';

/** The member's part of an agent config. */
function memberConfig(c: AgentConfig): MemberConfig {
  return {
    repeaters: c.repeaters,
    bind: c.bind,
    advertise: c.advertise,
    channelKey: c.channelKey,
    maxSkewMs: c.maxSkewMs,
    maxDatagram: c.maxDatagram,
    subscribeIntervalMs: c.subscribeIntervalMs,
    port: { recvBuffer: c.recvBuffer, sendBuffer: c.sendBuffer, sendQueue: c.sendQueue },
  };
}

export class Agent {
  /** Node to repeaters: plain in, sealed out. */
  readonly toRepeater = new ChannelStats();
  /** Repeaters to node: sealed in, plain out. */
  readonly toNode = new ChannelStats();
  readonly fanoutTime = new FastHistogram(FANOUT_BUCKETS);
  readonly loops = new LoopGuard();

  private fanout!: Fanout;
  /** Null: no node on this host (ticket keys only). */
  private deliver: Outlet | null = null;
  private local!: DatagramListener;
  /** The channel membership: one port to every repeater, announces, sealed intake (member/channel-member.ts). */
  private member!: ChannelMember;
  private readonly seal: MemberSeal;
  private closed = false;
  private readonly shape = newShape();
  /** nginx ticket key files (--ticket-key-dir); null when not asked for. */
  ticketFiles: TicketFiles | null = null;
  /** Judges the sources of --local: the node's sockets only. */
  readonly senders: LocalSenders;
  /** Likely misconfigurations: silent repeaters, frames from strangers (hints.ts). */
  readonly hints: AgentHints;

  private constructor(
    private config: AgentConfig,
    ring: KeyRing,
    session: SecureSession,
    private readonly log: Logger,
    readonly backend: Backend,
  ) {
    this.seal = { session, ring };
    this.senders = new LocalSenders({ uids: config.nodeUids, deliver: config.deliver }, log);
    this.hints = new AgentHints(log, () => this.member?.linkList() ?? []);
  }

  /** `links`: identity mode (every frame under a link with each repeater), built from --identity and --peers by the daemon. */
  static async start(config: AgentConfig, log: Logger, session: SecureSession, backend: Backend = DEFAULT_BACKEND, links: MemberLinks | null = null): Promise<Agent> {
    const agent = new Agent(config, ringOf(config), session, log, backend);
    try {
      agent.member = await ChannelMember.open(memberConfig(config), links === null ? agent.seal : null, agent.memberEvents(), log, links);
      try {
        agent.local = await agent.bindLocal(config);
      } catch (err) {
        await agent.member.close();
        throw err;
      }
    } catch (err) {
      agent.seal.ring.destroy();
      throw err;
    }
    agent.fanout = createFanout(backend, { sendBuffer: config.sendBuffer, sendQueue: config.sendQueue });
    agent.setTicketFiles(config);
    agent.deliver = agent.openDeliver(config);
    agent.log.info('agent started', {
      local: config.local.text,
      deliver: config.deliver?.text ?? null,
      repeaters: config.repeaters.map((r) => r.text),
      advertised: agent.member.linkList().map((l) => l.advertise),
      channelKey: config.channelKey,
      keys: agent.seal.ring.describe(),
      origin: session.origin.toString(16),
      backend,
    });
    agent.member.start();
    return agent;
  }

  /** What the agent does with what its channel membership brings in. */
  private memberEvents(): MemberEvents {
    const st = this.toNode;
    return {
      arrived: (bytes) => {
        st.bytesReceived += bytes;
        st.received[KindSlot.sealed]++;
      },
      drop: (reason) => st.dropped[DropSlot[reason]]++,
      stranger: (msg, source) => this.hints.stranger(msg, source, this.config.bind.text),
      announcing: () => this.hints.review(),
      announced: (repeater) => this.hints.announced(repeater.text),
      tickets: (keys) => {
        if (this.ticketFiles === null) return false;
        this.ticketFiles.receive(keys);
        return true;
      },
      datagram: (d, trace) => this.toTheNode(d, trace),
    };
  }

  get current(): AgentConfig {
    return this.config;
  }

  get keyIds(): string[] {
    return this.seal.ring.describe().map((k) => k.id);
  }

  /** Announces sent to the repeaters. */
  get announcesSent(): number {
    return this.member.announces;
  }

  /** The bound address of the socket that talks to the repeaters. */
  get socketAddress(): string {
    return this.member.bound;
  }

  repeaterLinks(): Array<{ repeater: string; advertise: string | null; sent: number; received: number; lastFrameAt: string | null; identity?: string | null }> {
    return this.member.linkList().map((l) => ({
      repeater: l.repeater.text,
      ...(this.config.identity === null ? {} : { identity: l.identity }),
      advertise: l.advertise,
      sent: l.sent,
      received: l.received,
      lastFrameAt: l.lastFrameAt > 0 ? new Date(l.lastFrameAt).toISOString() : null,
    }));
  }

  private bindLocal(config: AgentConfig): Promise<DatagramListener> {
    return openListener(this.backend, config.local, { recvBuffer: config.recvBuffer, multicastInterface: null }, (msg, from) => this.fromTheNode(msg, from));
  }

  private openDeliver(config: AgentConfig): Outlet | null {
    if (config.deliver === null) return null;
    return this.fanout.open(config.deliver, (o, code, _fault, lostLater) => {
      if (lostLater) this.toNode.dropped[DropSlot.send_error]++;
      this.log.throttle('warn', 'deliver', 'node unreachable', { deliver: o.endpoint.text, error: code });
    });
  }

  private setTicketFiles(config: AgentConfig): void {
    if (JSON.stringify(config.ticketFiles) === JSON.stringify(this.ticketFiles === null ? null : this.config.ticketFiles)) return;
    const old = this.ticketFiles;
    this.ticketFiles = config.ticketFiles === null ? null : new TicketFiles(config.ticketFiles, this.log);
    // The keys held so far go on to the new files (copied before the old holder zeroes them).
    if (old !== null && old.keys.size > 0) this.ticketFiles?.receive(old.keys.keys);
    old?.close();
  }

  /** Applies a reloaded config: a new key ring, and any changed address. */
  async apply(next: AgentConfig): Promise<void> {
    const ring = ringOf(next);
    const old = this.config;
    let local: DatagramListener | null = null;
    try {
      if (next.local.text !== old.local.text) local = await this.bindLocal(next);
      // A new --bind opens its port first: a failure leaves the running one.
      await this.member.reconfigure(memberConfig(next));
    } catch (err) {
      await local?.close();
      ring.destroy();
      throw err;
    }
    this.setTicketFiles(next);
    this.config = next;
    this.seal.ring.destroy();
    this.seal.ring = ring;
    if (local !== null) {
      void this.local.close();
      this.local = local;
    }
    if (next.deliver?.text !== old.deliver?.text) {
      this.deliver?.close();
      this.deliver = this.openDeliver(next);
    }
    if (next.deliver?.text !== old.deliver?.text || String(next.nodeUids) !== String(old.nodeUids)) {
      this.senders.configure({ uids: next.nodeUids, deliver: next.deliver });
    }
    this.log.info('config applied', { keys: this.seal.ring.describe(), repeaters: next.repeaters.map((r) => r.text) });
  }

  /**
   * Announces again as a subscriber new to each repeater: an unsubscribe,
   * then a subscribe, from the same socket in this order, so each repeater
   * starts a warm join for the node (README.md, "Warm join"). For a node that
   * restarted while its agent kept running (SIGUSR1). Wire-compatible: a
   * repeater without warm joins just sees a goodbye and a hello.
   */
  rejoin(): void {
    if (this.closed) return;
    this.member.announceAll(EnvelopeKind.Unsubscribe);
    this.member.announceAll(EnvelopeKind.Subscribe);
    this.log.info('announced as new to the repeaters: the node will be warmed', { repeaters: this.member.linkList().map((l) => l.repeater.text) });
  }

  /** A datagram that makes the code throw (a bug) is dropped, counted and logged, never fatal. */
  private fromTheNode(msg: Buffer, from: Source): void {
    try {
      this.onLocal(msg, from);
    } catch (err) {
      this.toRepeater.dropped[DropSlot.internal_error]++;
      this.log.throttle('error', 'internal-error', 'internal error handling a datagram; dropped', { error: (err as Error).message, stack: (err as Error).stack });
    }
  }

  /** Judges a trace: the one to forward with, or why the datagram goes no further. */
  private traceFor(arrived: TraceFields | null): TraceFields | 'loop' | 'duplicate' {
    return arrived === null ? this.loops.stamp() : this.loops.pass(arrived);
  }

  private onLocal(msg: Buffer, from: Source): void {
    const t0 = performance.now();
    const st = this.toRepeater;
    st.bytesReceived += msg.length;
    const kind = peekKind(msg);
    st.received[kind]++;
    if (!this.senders.judge(from)) {
      st.dropped[DropSlot.not_node]++;
      return;
    }
    if (msg.length > this.config.maxDatagram) {
      st.dropped[DropSlot.too_large]++;
      return;
    }
    const s = this.shape;
    const bad = inspectCacheUpdate(msg, s);
    if (bad !== undefined) {
      st.dropped[DropSlot[bad]]++;
      if (kind === KindSlot.subscribe || kind === KindSlot.unsubscribe) {
        this.log.throttle('info', 'node-subscribes', 'the node sends uWSGI subscriptions to the agent; they are not needed behind an agent', { source: from.address }, 600_000);
      }
      return;
    }
    if (s.traceAt >= 0) {
      st.dropped[readTrace(msg, s.traceAt) === null ? DropSlot.malformed : DropSlot.loop]++;
      return;
    }
    const out = this.member.publish(contentOf(msg, s), this.loops.stamp());
    if (out === null) {
      st.dropped[DropSlot.too_large]++;
      return;
    }
    // A repeater with no link yet is a loss on the way to the repeaters, counted there (to_repeater).
    st.dropped[DropSlot.no_link] += out.unlinked;
    if (out.sent === 0 && out.unlinked === 0) st.dropped[DropSlot.queue_full]++;
    st.forwarded += out.sent;
    st.bytesForwarded += out.sent * out.bytes;
    this.fanoutTime.observe((performance.now() - t0) / 1000);
  }

  /** A cache datagram a repeater sealed (opened and checked by the member): judged, then handed to the node. */
  private toTheNode(d: Buffer, arrived: TraceFields | null): void {
    const st = this.toNode;
    if (this.deliver === null) {
      st.dropped[DropSlot.no_subscribers]++;
      return;
    }
    const s = this.shape;
    const bad = inspectCacheUpdate(d, s);
    if (bad !== undefined || s.traceAt >= 0) {
      st.dropped[DropSlot[bad ?? 'malformed']]++;
      return;
    }
    const trace = this.traceFor(arrived);
    if (typeof trace === 'string') {
      st.dropped[DropSlot[trace]]++;
      return;
    }
    const out = forwardForm(d, s, this.config.repairDeletes, trace, Math.min(this.config.maxDatagram, MAX_UDP_PAYLOAD));
    if (out === 'too_large') {
      st.dropped[DropSlot.too_large]++;
      return;
    }
    if (this.deliver.send(out)) {
      st.forwarded++;
      st.bytesForwarded += out.length;
    } else st.dropped[DropSlot.queue_full]++;
  }

  /** Says goodbye to the repeaters (unsubscribe), then closes everything. */
  async stop(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.member.leave();
    this.deliver?.close();
    await this.local.close();
    await this.fanout.close();
    this.seal.ring.destroy();
    this.ticketFiles?.close();
  }
}

/** The shared-key ring; identity mode holds none. */
function ringOf(config: AgentConfig): KeyRing {
  return config.identity === null ? KeyRing.load(config.keyFiles) : KeyRing.empty();
}
