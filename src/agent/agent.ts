// The node-side agent: bridges a uWSGI node's plain loopback cache traffic
// to sealed repeaters and back. Plain bytes only ever travel on loopback;
// everything on the network is a sealed frame.
//
//   node cache-udp-node --plain--> local  --seal--> link (one per repeater)
//   node cache-udp-server <--plain-- deliver <--open-- link
//
// One UDP socket talks to every repeater: it sends the frames and the
// subscriptions, so the repeater (which answers from per-subscriber sockets
// with ephemeral ports) sends its frames back to it. Datagrams from any IP
// that is not a configured repeater are dropped before any crypto.

import type { RemoteInfo, Socket } from 'node:dgram';
import { KeyRing } from '../crypto/keyring.js';
import type { SecureSession } from '../crypto/session.js';
import type { AgentConfig } from '../config/agent-config.js';
import { describe } from '../base/errors.js';
import type { Logger } from '../base/log.js';
import { bindUdp } from '../net/dgram-listener.js';
import { Outlet } from '../net/dgram-outlet.js';
import { peekKind } from '../repeater/repeater.js';
import { ChannelStats, D, FANOUT_BUCKETS, FastHistogram, K } from '../base/stats.js';
import { classifyCacheUpdate, prepareCacheUpdate } from '../wire/cache.js';
import { MAX_UDP_PAYLOAD } from '../wire/frame.js';
import { EnvelopeKind } from '../wire/envelope.js';

export class Agent {
  /** Node to repeaters: plain in, sealed out. */
  readonly toRepeater = new ChannelStats();
  /** Repeaters to node: sealed in, plain out. */
  readonly toNode = new ChannelStats();
  readonly fanout = new FastHistogram(FANOUT_BUCKETS);
  announcesSent = 0;

  private deliver!: Outlet;
  private local!: Socket;
  private sealed!: Socket;
  /** Per repeater IP (frames come back from ephemeral ports): traffic and liveness. */
  private perIp = new Map<string, { sent: number; received: number; lastFrameAt: number }>();
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  private constructor(
    private config: AgentConfig,
    private ring: KeyRing,
    private readonly session: SecureSession,
    private readonly log: Logger,
  ) {}

  static async start(config: AgentConfig, log: Logger, session: SecureSession): Promise<Agent> {
    const agent = new Agent(config, KeyRing.load(config.keyFiles), session, log);
    try {
      agent.sealed = await agent.bindSealed(config);
      try {
        agent.local = await agent.bindLocal(config);
      } catch (err) {
        agent.sealed.close();
        throw err;
      }
    } catch (err) {
      agent.ring.destroy();
      throw err;
    }
    agent.deliver = agent.openDeliver(config);
    agent.setRepeaters(config);
    agent.log.info('agent started', {
      local: config.local.text,
      deliver: config.deliver.text,
      repeaters: config.repeaters.map((r) => r.text),
      channelKey: config.channelKey,
      keys: agent.ring.describe(),
      origin: session.origin.toString(16),
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

  /** The sealed socket's bound address. */
  get sealedAddress(): string {
    const a = this.sealed.address();
    return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  }

  repeaterLinks(): Array<{ repeater: string; sent: number; received: number; lastFrameAt: string | null }> {
    return this.config.repeaters.map((r) => {
      const p = this.perIp.get(r.host)!;
      return { repeater: r.text, sent: p.sent, received: p.received, lastFrameAt: p.lastFrameAt > 0 ? new Date(p.lastFrameAt).toISOString() : null };
    });
  }

  private setRepeaters(config: AgentConfig): void {
    const next = new Map<string, { sent: number; received: number; lastFrameAt: number }>();
    for (const r of config.repeaters) next.set(r.host, this.perIp.get(r.host) ?? { sent: 0, received: 0, lastFrameAt: 0 });
    this.perIp = next;
  }

  private bindSealed(config: AgentConfig): Promise<Socket> {
    return bindUdp(config.bind, { recvBuffer: config.recvBuffer, multicast: false, multicastInterface: null }, (msg, rinfo) =>
      this.guarded(this.toNode, this.onSealed, msg, rinfo),
    ).then((sock) => {
      if (config.sendBuffer > 0) sock.setSendBufferSize(config.sendBuffer);
      sock.on('error', (err) => this.log.throttle('warn', 'sealed-socket', 'sealed socket error', { error: err.message }));
      return sock;
    });
  }

  private bindLocal(config: AgentConfig): Promise<Socket> {
    return bindUdp(config.local, { recvBuffer: config.recvBuffer, multicast: false, multicastInterface: null }, (msg, rinfo) =>
      this.guarded(this.toRepeater, this.onLocal, msg, rinfo),
    );
  }

  private openDeliver(config: AgentConfig): Outlet {
    return new Outlet(config.deliver, { sendQueue: config.sendQueue, sendBuffer: config.sendBuffer }, (o, err) =>
      this.log.throttle('warn', 'deliver', 'node unreachable', { deliver: o.endpoint.text, error: err.code ?? err.message }),
    );
  }

  /** Applies a reloaded config: a new key ring, and any changed address. */
  async apply(next: AgentConfig): Promise<void> {
    const ring = KeyRing.load(next.keyFiles);
    const old = this.config;
    let local: Socket | null = null;
    let sealed: Socket | null = null;
    try {
      if (next.local.text !== old.local.text) local = await this.bindLocal(next);
      if (next.bind.text !== old.bind.text) sealed = await this.bindSealed(next);
    } catch (err) {
      local?.close();
      ring.destroy();
      throw err;
    }
    this.config = next;
    this.ring.destroy();
    this.ring = ring;
    if (local !== null) {
      this.local.close();
      this.local = local;
    }
    if (sealed !== null) {
      this.sealed.close();
      this.sealed = sealed;
    }
    if (next.deliver.text !== old.deliver.text) {
      this.deliver.close();
      this.deliver = this.openDeliver(next);
    }
    this.setRepeaters(next);
    this.schedule();
    this.log.info('config applied', { keys: this.ring.describe(), repeaters: next.repeaters.map((r) => r.text) });
  }

  /** Sends one frame to every repeater; returns how many took it. */
  private toRepeaters(frame: Buffer): number {
    if (this.sealed.getSendQueueCount() >= this.config.sendQueue) return 0;
    let n = 0;
    for (const r of this.config.repeaters) {
      this.sealed.send(frame, r.port, r.host);
      this.perIp.get(r.host)!.sent++;
      n++;
    }
    return n;
  }

  private schedule(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.announce(EnvelopeKind.Subscribe);
    this.timer = setInterval(() => this.announce(EnvelopeKind.Subscribe), this.config.subscribeIntervalMs);
  }

  private frameFor(kind: EnvelopeKind): Buffer | null {
    return this.session.seal(this.ring, { kind, channelKey: this.config.channelKey, datagram: null, address: this.config.advertise ?? '' });
  }

  private announce(kind: EnvelopeKind): void {
    const frame = this.frameFor(kind);
    if (frame === null) return;
    this.toRepeaters(frame);
    this.announcesSent++;
  }

  /** A datagram that makes the code throw (a bug) is dropped, counted and logged, never fatal. */
  private guarded(st: ChannelStats, handler: (msg: Buffer, rinfo: RemoteInfo) => void, msg: Buffer, rinfo: RemoteInfo): void {
    try {
      handler.call(this, msg, rinfo);
    } catch (err) {
      st.dropped[D.internal_error]++;
      this.log.throttle('error', 'internal-error', 'internal error handling a datagram; dropped', { error: (err as Error).message, stack: (err as Error).stack });
    }
  }

  private onLocal(msg: Buffer, rinfo: RemoteInfo): void {
    const t0 = performance.now();
    const st = this.toRepeater;
    st.bytesReceived += msg.length;
    const kind = peekKind(msg);
    st.received[kind]++;
    if (msg.length > this.config.maxDatagram) {
      st.dropped[D.too_large]++;
      return;
    }
    const cmd = classifyCacheUpdate(msg);
    if (typeof cmd === 'string') {
      st.dropped[D[cmd]]++;
      if (kind === K.subscribe || kind === K.unsubscribe) {
        this.log.throttle('info', 'node-subscribes', 'the node sends uWSGI subscriptions to the agent; they are not needed behind an agent', { source: rinfo.address }, 600_000);
      }
      return;
    }
    const frame = this.session.seal(this.ring, { kind: EnvelopeKind.CacheDatagram, channelKey: this.config.channelKey, datagram: msg, address: null });
    if (frame === null) {
      st.dropped[D.too_large]++;
      return;
    }
    const sent = this.toRepeaters(frame);
    if (sent === 0) st.dropped[D.queue_full]++;
    st.forwarded += sent;
    st.bytesForwarded += sent * frame.length;
    this.fanout.observe((performance.now() - t0) / 1000);
  }

  private onSealed(msg: Buffer, rinfo: RemoteInfo): void {
    const st = this.toNode;
    st.bytesReceived += msg.length;
    st.received[K.sealed]++;
    const from = this.perIp.get(rinfo.address);
    if (from === undefined) {
      st.dropped[D.not_allowed]++;
      return;
    }
    if (msg.length > this.config.maxDatagram) {
      st.dropped[D.too_large]++;
      return;
    }
    const env = this.session.open(this.ring, msg, this.config.maxSkewMs);
    if (typeof env === 'string') {
      st.dropped[D[env]]++;
      return;
    }
    if (env.kind !== EnvelopeKind.CacheDatagram) {
      st.dropped[D.unknown_command]++;
      return;
    }
    if (env.channelKey !== this.config.channelKey) {
      st.dropped[D.key_mismatch]++;
      return;
    }
    from.received++;
    from.lastFrameAt = Date.now();
    const out = prepareCacheUpdate(env.datagram!, this.config.repairDeletes, Math.min(this.config.maxDatagram, MAX_UDP_PAYLOAD));
    if (typeof out === 'string') {
      st.dropped[D[out]]++;
      return;
    }
    if (this.deliver.send(out)) {
      st.forwarded++;
      st.bytesForwarded += out.length;
    } else st.dropped[D.queue_full]++;
  }

  /** Says goodbye to the repeaters (unsubscribe), then closes everything. */
  async stop(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer !== null) clearInterval(this.timer);
    const bye = this.frameFor(EnvelopeKind.Unsubscribe);
    if (bye !== null) {
      const results = await Promise.allSettled(this.config.repeaters.map((r) => sendAndWait(this.sealed, bye, r.port, r.host)));
      for (const r of results) if (r.status === 'rejected') this.log.warn('unsubscribe not sent', { error: describe(r.reason) });
    }
    this.sealed.close();
    this.deliver.close();
    this.local.close();
    this.ring.destroy();
  }
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
