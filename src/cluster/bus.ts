// The cluster's bus: one NATS connection (core NATS, at-most-once, like UDP)
// to any of the configured servers, kept up in the background. The repeater
// starts and serves whether the bus is there or not; while it is down nothing
// is published (the client would queue it in memory and flush it, stale, on
// reconnect) and the cluster falls back to serving its own listeners.
//
// Subscriptions are a permanent list: every new connection subscribes every
// subject (the client keeps them across its own reconnects, but closes a
// connection for good after repeated authorization errors, and a new one
// starts with none). A subscription the server refuses (a permissions
// violation) is tried again every SUBSCRIBE_RETRY_MS while connected, and
// until it holds the bus is connected but deaf: `subscribed` is false and the
// cluster reports itself degraded.

import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { checkServerIdentity, type PeerCertificate } from 'node:tls';
import { connect, credsAuthenticator, type NatsConnection, type NodeConnectionOptions, type Subscription } from '@nats-io/transport-node';
import { describe } from '../base/errors.js';
import type { Logger } from '../base/log.js';
import type { BusServer, ClusterConfig } from '../config/cluster-config.js';

export type BusHandler = (subject: string, data: Uint8Array) => void;

/**
 * The NATS client verifies a server given by IP address against the name
 * "localhost" (nats.js issue 303: it hands Node's TLS a socket and no name).
 * The certificate is checked as usual, and when that fails for "localhost",
 * against the IP addresses the operator configured: a certificate signed by
 * the configured CA for one of the configured servers is accepted.
 */
function serverIdentity(servers: readonly BusServer[]): (host: string, cert: PeerCertificate) => Error | undefined {
  const ips = servers.map((s) => /^[a-z]+:\/\/\[?([^\]]+?)\]?:[0-9]+$/.exec(s.text)?.[1] ?? '').filter((h) => isIP(h) !== 0);
  return (host, cert) => {
    const err = checkServerIdentity(host, cert);
    if (err === undefined || host !== 'localhost') return err;
    return ips.some((ip) => checkServerIdentity(ip, cert) === undefined) ? undefined : err;
  };
}

/** How long to wait between attempts when no server answers. */
const RECONNECT_WAIT_MS = 500;
/** How long one connection attempt may take before the loop tries again. */
const CONNECT_TIMEOUT_MS = 4_000;
/** How long to wait before asking again for a subscription the server refused. */
const SUBSCRIBE_RETRY_MS = 2_000;

interface Wanted {
  readonly subject: string;
  readonly handler: BusHandler;
  /** Its subscription on the current connection; null: none (not connected yet, or refused). */
  sub: Subscription | null;
  /** Why the server refused it on this connection, if it did. */
  refused: string | null;
}

export class Bus {
  private nc: NatsConnection | null = null;
  /** Every subject we listen to, for every connection (never emptied). */
  private readonly wanted: Wanted[] = [];
  private retry: NodeJS.Timeout | null = null;
  private closed = false;
  /** True while a server is connected (our subscriptions may still be refused: see `subscribed`). */
  connected = false;
  server: string | null = null;
  published = 0;
  disconnects = 0;
  private onChange: ((connected: boolean) => void) | null = null;
  /** Told of every connection before `onChange` (the identity bus announces its key first). */
  private readonly connectHooks: Array<() => void> = [];

  constructor(
    private readonly cfg: ClusterConfig,
    private readonly log: Logger,
  ) {}

  private options(): NodeConnectionOptions {
    const c = this.cfg;
    const o: NodeConnectionOptions = {
      servers: c.servers.map((s) => s.text),
      name: `udprepeater ${c.name}`,
      // Our own messages come back otherwise: a repeater already has them.
      noEcho: true,
      reconnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: RECONNECT_WAIT_MS,
      // Our loop retries (and says why); the client would retry silently.
      waitOnFirstConnect: false,
      pingInterval: 2_000,
      // nats-server 2.9 may leave a connection that arrives during its
      // config reload unanswered: the client's default would wait 20 s on it.
      timeout: CONNECT_TIMEOUT_MS,
      maxPingOut: 2,
    };
    if (c.credsFile !== null) o.authenticator = credsAuthenticator(readFileSync(c.credsFile));
    if (c.user !== null) {
      o.user = c.user;
      o.pass = c.passwordFile === null ? '' : readFileSync(c.passwordFile, 'utf8').trim();
    }
    if (c.tokenFile !== null) o.token = readFileSync(c.tokenFile, 'utf8').trim();
    // Any tls:// server or TLS file makes TLS required (the client refuses a
    // server that does not offer it); otherwise the client would still take
    // TLS when offered, but a man in the middle could strip it.
    if (c.tlsCa !== null || c.tlsCert !== null || c.servers.some((s) => s.text.startsWith('tls://'))) {
      // The client passes its tls options on to Node's tls.connect, checkServerIdentity included.
      const tls = {
        checkServerIdentity: serverIdentity(c.servers),
        ...(c.tlsCa === null ? {} : { caFile: c.tlsCa }),
        ...(c.tlsCert === null ? {} : { certFile: c.tlsCert }),
        ...(c.tlsKey === null ? {} : { keyFile: c.tlsKey }),
      };
      o.tls = tls as NonNullable<NodeConnectionOptions['tls']>;
    }
    return o;
  }

  /**
   * Connects in the background; `onChange` hears of every connect and
   * disconnect. Subscriptions given to `subscribe` before or after hold on
   * every connection.
   */
  start(onChange: (connected: boolean) => void): void {
    this.onChange = onChange;
    void this.run();
  }

  private async run(): Promise<void> {
    while (!this.closed) {
      try {
        const nc = await connect(this.options());
        if (this.closed) {
          await nc.close();
          return;
        }
        this.nc = nc;
        // A new connection starts with no subscriptions: all of them, every time.
        for (const w of this.wanted) {
          w.sub = null;
          w.refused = null;
          this.subscribeOn(nc, w);
        }
        this.setConnected(true, nc.getServer());
        for await (const st of nc.status()) {
          if (st.type === 'disconnect') {
            this.disconnects++;
            this.setConnected(false, null);
          } else if (st.type === 'reconnect') this.setConnected(true, st.server);
        }
        // The status iterator ends when the connection closed for good.
        this.setConnected(false, null);
        this.nc = null;
        for (const w of this.wanted) w.sub = null;
      } catch (err) {
        this.log.throttle('warn', 'bus-connect', 'cluster bus: cannot connect; retrying', { servers: this.cfg.servers.map((s) => s.text), error: describe(err) }, 30_000);
        await new Promise((r) => setTimeout(r, RECONNECT_WAIT_MS).unref());
      }
    }
  }

  private setConnected(connected: boolean, server: string | null): void {
    if (connected === this.connected && server === this.server) return;
    const was = this.connected;
    this.connected = connected;
    this.server = server;
    if (connected) {
      this.log.info('cluster bus connected', { server, cluster: this.cfg.name });
      for (const fn of this.connectHooks) fn();
    } else if (was) this.log.warn('cluster bus disconnected: serving our own listeners to the subscribers we heard', { cluster: this.cfg.name });
    this.onChange?.(connected);
  }

  /** Runs `fn` on every connection, before the cluster hears of it. */
  whenConnected(fn: () => void): void {
    this.connectHooks.push(fn);
  }

  /** Listens to `subject` on this and every later connection. */
  subscribe(subject: string, handler: BusHandler): void {
    const w: Wanted = { subject, handler, sub: null, refused: null };
    this.wanted.push(w);
    if (this.nc !== null) this.subscribeOn(this.nc, w);
  }

  private subscribeOn(nc: NatsConnection, w: Wanted): void {
    try {
      const sub = nc.subscribe(w.subject, {
        callback: (err, msg) => {
          if (err === null) {
            w.handler(msg.subject, msg.data);
            return;
          }
          // The client closes a refused subscription: ask again later, on this connection.
          if (w.sub === sub) w.sub = null;
          w.refused = describe(err);
          this.log.throttle('warn', `bus-sub:${w.subject}`, 'cluster bus: the server refused a subscription; the bus is deaf to it, retrying', { subject: w.subject, error: w.refused }, 30_000);
          this.scheduleRetry();
        },
      });
      w.sub = sub;
      w.refused = null;
    } catch (err) {
      w.sub = null;
      w.refused = describe(err);
      this.scheduleRetry();
    }
  }

  private scheduleRetry(): void {
    if (this.retry !== null || this.closed) return;
    this.retry = setTimeout(() => {
      this.retry = null;
      const nc = this.nc;
      if (nc === null || this.closed) return;
      for (const w of this.wanted) if (w.sub === null) this.subscribeOn(nc, w);
    }, SUBSCRIBE_RETRY_MS);
    this.retry.unref();
  }

  /** Connected, and every subscription in place (none refused). */
  get subscribed(): boolean {
    return this.connected && this.wanted.every((w) => w.sub !== null);
  }

  /** Subjects we do not hear on this connection, with the server's reason. */
  deafTo(): Array<{ subject: string; error: string | null }> {
    return this.wanted.filter((w) => w.sub === null).map((w) => ({ subject: w.subject, error: w.refused }));
  }

  /** Publishes when connected; otherwise drops it (never queued to go out stale) and says so. */
  publish(subject: string, data: Uint8Array): boolean {
    const nc = this.nc;
    if (!this.connected || nc === null) return false;
    try {
      nc.publish(subject, data);
      this.published++;
      return true;
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.retry !== null) clearTimeout(this.retry);
    this.retry = null;
    const nc = this.nc;
    this.nc = null;
    this.connected = false;
    if (nc !== null) {
      try {
        await nc.close();
      } catch {
        // closing a broken connection: nothing to release
      }
    }
  }
}
