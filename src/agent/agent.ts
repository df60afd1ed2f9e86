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

import type { Socket } from 'node:dgram';
import { describe } from '../base/errors.js';
import type { Logger } from '../base/log.js';
import { ChannelStats, DropSlot, FANOUT_BUCKETS, FastHistogram, KindSlot } from '../base/stats.js';
import type { AgentConfig } from '../config/agent-config.js';
import { KeyRing } from '../crypto/keyring.js';
import type { SecureSession } from '../crypto/session.js';
import { LoopGuard } from '../judge/loop-guard.js';
import { Membership } from '../judge/membership.js';
import { createFanout, DEFAULT_BACKEND, openListener } from '../net/backend.js';
import { bindUdp } from '../net/dgram-listener.js';
import type { Backend, DatagramListener, Fanout, Outlet, Source } from '../net/io.js';
import { advertiseAddress } from '../net/local.js';
import { canonicalIp, type Endpoint, formatEndpoint } from '../wire/address.js';
import { contentOf, forwardForm, inspectCacheUpdate, newShape } from '../wire/cache.js';
import { EnvelopeKind } from '../wire/envelope.js';
import { LocalSenders } from './local-senders.js';
import { TicketFiles } from './ticket-files.js';
import { AgentHints } from './hints.js';
import { MAX_UDP_PAYLOAD } from '../wire/frame.js';
import { readTrace, type TraceFields } from '../wire/trace.js';
import { peekKind } from '../wire/uwsgi.js';

interface Link {
  readonly repeater: Endpoint;
  /** Where this repeater should send to reach us (named in every subscription). */
  advertise: string | null;
  /** The name its frames for us carry (our advertise), and from which of its sequences we are a member. */
  readonly me: Membership;
  sent: number;
  received: number;
  lastFrameAt: number;
}

export class Agent {
  /** Node to repeaters: plain in, sealed out. */
  readonly toRepeater = new ChannelStats();
  /** Repeaters to node: sealed in, plain out. */
  readonly toNode = new ChannelStats();
  readonly fanoutTime = new FastHistogram(FANOUT_BUCKETS);
  readonly loops = new LoopGuard();
  announcesSent = 0;

  private fanout!: Fanout;
  /** Null: no node on this host (ticket keys only). */
  private deliver: Outlet | null = null;
  private local!: DatagramListener;
  private socket!: Socket;
  /** Per repeater, by host and port: each gets our subscriptions and updates. */
  private links = new Map<string, Link>();
  private timer: NodeJS.Timeout | null = null;
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
    private ring: KeyRing,
    private readonly session: SecureSession,
    private readonly log: Logger,
    readonly backend: Backend,
  ) {
    this.senders = new LocalSenders({ uids: config.nodeUids, deliver: config.deliver }, log);
    this.hints = new AgentHints(log, () => this.links.values());
  }

  static async start(config: AgentConfig, log: Logger, session: SecureSession, backend: Backend = DEFAULT_BACKEND): Promise<Agent> {
    const agent = new Agent(config, KeyRing.load(config.keyFiles), session, log, backend);
    try {
      agent.socket = await agent.bindSocket(config);
      try {
        agent.local = await agent.bindLocal(config);
      } catch (err) {
        agent.socket.close();
        throw err;
      }
    } catch (err) {
      agent.ring.destroy();
      throw err;
    }
    agent.fanout = createFanout(backend, { sendBuffer: config.sendBuffer, sendQueue: config.sendQueue });
    agent.setTicketFiles(config);
    agent.deliver = agent.openDeliver(config);
    await agent.setRepeaters(config);
    agent.log.info('agent started', {
      local: config.local.text,
      deliver: config.deliver?.text ?? null,
      repeaters: config.repeaters.map((r) => r.text),
      advertised: [...agent.links.values()].map((l) => l.advertise),
      channelKey: config.channelKey,
      keys: agent.ring.describe(),
      origin: session.origin.toString(16),
      backend,
    });
    agent.schedule();
    return agent;
  }

  get current(): AgentConfig {
    return this.config;
  }

  get keyIds(): string[] {
    return this.ring.describe().map((k) => k.id);
  }

  /** The bound address of the socket that talks to the repeaters. */
  get socketAddress(): string {
    const a = this.socket.address();
    return formatEndpoint(canonicalIp(a.address)?.host ?? a.address, a.port);
  }

  repeaterLinks(): Array<{ repeater: string; advertise: string | null; sent: number; received: number; lastFrameAt: string | null }> {
    return [...this.links.values()].map((l) => ({
      repeater: l.repeater.text,
      advertise: l.advertise,
      sent: l.sent,
      received: l.received,
      lastFrameAt: l.lastFrameAt > 0 ? new Date(l.lastFrameAt).toISOString() : null,
    }));
  }

  /** Where `repeater` should send: --advertise, else our address on the route to it and the socket's port. */
  private advertiseFor(repeater: Endpoint): Promise<string> {
    return advertiseAddress(this.socket, repeater, this.config.advertise);
  }

  private async setRepeaters(config: AgentConfig): Promise<void> {
    const next = new Map<string, Link>();
    for (const r of config.repeaters) {
      const link = this.links.get(r.text) ?? newLink(r);
      try {
        link.advertise = await this.advertiseFor(r);
      } catch (err) {
        // No route now: the announce is retried every interval.
        this.log.warn('no route to a repeater; will retry', { repeater: r.text, error: describe(err) });
        link.advertise = null;
      }
      next.set(r.text, link);
    }
    this.links = next;
  }

  private bindSocket(config: AgentConfig): Promise<Socket> {
    return bindUdp(config.bind, { recvBuffer: config.recvBuffer, multicast: false, multicastInterface: null }, (msg, from) => this.guarded(this.toNode, () => this.onSealed(msg, from))).then(
      (sock) => {
        if (config.sendBuffer > 0) sock.setSendBufferSize(config.sendBuffer);
        sock.on('error', (err) => this.log.throttle('warn', 'repeater-socket', 'socket error (repeater side)', { error: err.message }));
        return sock;
      },
    );
  }

  private bindLocal(config: AgentConfig): Promise<DatagramListener> {
    return openListener(this.backend, config.local, { recvBuffer: config.recvBuffer, multicastInterface: null }, (msg, from) =>
      this.guarded(this.toRepeater, () => this.onLocal(msg, from)),
    );
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
    const ring = KeyRing.load(next.keyFiles);
    const old = this.config;
    let local: DatagramListener | null = null;
    let socket: Socket | null = null;
    try {
      if (next.local.text !== old.local.text) local = await this.bindLocal(next);
      if (next.bind.text !== old.bind.text) socket = await this.bindSocket(next);
    } catch (err) {
      await local?.close();
      ring.destroy();
      throw err;
    }
    this.setTicketFiles(next);
    this.config = next;
    this.ring.destroy();
    this.ring = ring;
    if (local !== null) {
      void this.local.close();
      this.local = local;
    }
    if (socket !== null) {
      this.socket.close();
      this.socket = socket;
    }
    if (next.deliver?.text !== old.deliver?.text) {
      this.deliver?.close();
      this.deliver = this.openDeliver(next);
    }
    if (next.deliver?.text !== old.deliver?.text || String(next.nodeUids) !== String(old.nodeUids)) {
      this.senders.configure({ uids: next.nodeUids, deliver: next.deliver });
    }
    await this.setRepeaters(next);
    this.schedule();
    this.log.info('config applied', { keys: this.ring.describe(), repeaters: next.repeaters.map((r) => r.text) });
  }

  /** Sends one frame to every repeater; returns how many took it. */
  private toRepeaters(frame: Buffer): number {
    if (this.socket.getSendQueueCount() >= this.config.sendQueue) return 0;
    let n = 0;
    for (const l of this.links.values()) {
      this.socket.send(frame, l.repeater.port, l.repeater.host);
      l.sent++;
      n++;
    }
    return n;
  }

  /** A repeater sends from sockets of its own, not its listener: matched by host (several on one host: the first, unless one has that port). */
  private linkFrom(from: Source): Link | undefined {
    let first: Link | undefined;
    for (const l of this.links.values()) {
      if (l.repeater.host !== from.address) continue;
      if (l.repeater.port === from.port) return l;
      first ??= l;
    }
    return first;
  }

  private schedule(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.announceAll(EnvelopeKind.Subscribe);
    this.timer = setInterval(() => this.announceAll(EnvelopeKind.Subscribe), this.config.subscribeIntervalMs);
  }

  /** A subscription sealed for one repeater alone: it names that repeater as --repeater gives it. */
  private frameFor(kind: EnvelopeKind, address: string, repeater: Endpoint): Buffer | null {
    return this.session.seal(this.ring, { kind, channelKey: this.config.channelKey, datagram: null, address, receiver: repeater.text });
  }

  /** One subscription per repeater, each naming where that repeater reaches us. */
  private announceAll(kind: EnvelopeKind): void {
    this.hints.review();
    for (const l of this.links.values()) {
      if (l.advertise === null) {
        void this.advertiseFor(l.repeater).then(
          (a) => (l.advertise = a),
          () => undefined,
        );
        continue;
      }
      const frame = this.frameFor(kind, l.advertise, l.repeater);
      if (frame === null) continue;
      this.socket.send(frame, l.repeater.port, l.repeater.host);
      l.sent++;
      this.announcesSent++;
      this.hints.announced(l.repeater.text);
    }
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
    this.announceAll(EnvelopeKind.Unsubscribe);
    this.announceAll(EnvelopeKind.Subscribe);
    this.log.info('announced as new to the repeaters: the node will be warmed', { repeaters: [...this.links.values()].map((l) => l.repeater.text) });
  }

  /** A datagram that makes the code throw (a bug) is dropped, counted and logged, never fatal. */
  private guarded(st: ChannelStats, handler: () => void): void {
    try {
      handler();
    } catch (err) {
      st.dropped[DropSlot.internal_error]++;
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
    const trace = this.loops.stamp();
    const frame = this.session.seal(this.ring, { kind: EnvelopeKind.CacheDatagram, channelKey: this.config.channelKey, datagram: contentOf(msg, s), trace, address: null });
    if (frame === null) {
      st.dropped[DropSlot.too_large]++;
      return;
    }
    const sent = this.toRepeaters(frame);
    if (sent === 0) st.dropped[DropSlot.queue_full]++;
    st.forwarded += sent;
    st.bytesForwarded += sent * frame.length;
    this.fanoutTime.observe((performance.now() - t0) / 1000);
  }

  private onSealed(msg: Buffer, from: Source): void {
    const st = this.toNode;
    st.bytesReceived += msg.length;
    st.received[KindSlot.sealed]++;
    const link = this.linkFrom(from);
    if (link === undefined) {
      st.dropped[DropSlot.not_allowed]++;
      this.hints.stranger(msg, from.address, this.config.bind.text);
      return;
    }
    if (msg.length > this.config.maxDatagram) {
      st.dropped[DropSlot.too_large]++;
      return;
    }
    // Frames sealed for another receiver, and group frames sealed before we were a member, are refused here.
    const env = this.session.open(this.ring, msg, this.config.maxSkewMs, Date.now(), link.me);
    if (typeof env === 'string') {
      st.dropped[DropSlot[env]]++;
      return;
    }
    if (env.channelKey !== this.config.channelKey) {
      st.dropped[DropSlot.key_mismatch]++;
      return;
    }
    if (env.kind === EnvelopeKind.Membership) {
      link.me.raise(env.origin, env.memberFrom!);
      link.received++;
      link.lastFrameAt = Date.now();
      return;
    }
    if (env.kind === EnvelopeKind.TicketKeys && this.ticketFiles !== null) {
      link.received++;
      link.lastFrameAt = Date.now();
      this.ticketFiles.receive(env.tickets!);
      return;
    }
    if (env.kind !== EnvelopeKind.CacheDatagram) {
      st.dropped[DropSlot.unknown_command]++;
      return;
    }
    link.received++;
    link.lastFrameAt = Date.now();
    if (this.deliver === null) {
      st.dropped[DropSlot.no_subscribers]++;
      return;
    }
    const d = env.datagram!;
    const s = this.shape;
    const bad = inspectCacheUpdate(d, s);
    if (bad !== undefined || s.traceAt >= 0) {
      st.dropped[DropSlot[bad ?? 'malformed']]++;
      return;
    }
    const trace = this.traceFor(env.trace);
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
    if (this.timer !== null) clearInterval(this.timer);
    const byes = [...this.links.values()].flatMap((l) => {
      const bye = l.advertise === null ? null : this.frameFor(EnvelopeKind.Unsubscribe, l.advertise, l.repeater);
      return bye === null ? [] : [sendAndWait(this.socket, bye, l.repeater.port, l.repeater.host)];
    });
    for (const r of await Promise.allSettled(byes)) if (r.status === 'rejected') this.log.warn('unsubscribe not sent', { error: describe(r.reason) });
    this.socket.close();
    this.deliver?.close();
    await this.local.close();
    await this.fanout.close();
    this.ring.destroy();
    this.ticketFiles?.close();
  }
}

function newLink(repeater: Endpoint): Link {
  const link: Link = { repeater, advertise: null, me: new Membership(() => link.advertise), sent: 0, received: 0, lastFrameAt: 0 };
  return link;
}

function sendAndWait(sock: Socket, buf: Buffer, port: number, host: string, ms = 1000): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`send to ${host}:${port} timed out`)), ms);
    sock.send(buf, port, host, (err) => {
      clearTimeout(t);
      if (err) reject(err);
      else resolve();
    });
  });
}
