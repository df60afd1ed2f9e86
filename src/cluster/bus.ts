// The cluster's bus: one NATS connection (core NATS, at-most-once, like UDP)
// to any of the configured servers, kept up in the background. The repeater
// starts and serves whether the bus is there or not; while it is down nothing
// is published (the client would queue it in memory and flush it, stale, on
// reconnect) and the cluster falls back to serving its own listeners.

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

export class Bus {
  private nc: NatsConnection | null = null;
  private readonly subs: Subscription[] = [];
  private closed = false;
  /** True while a server is connected and our subscriptions are in place. */
  connected = false;
  server: string | null = null;
  published = 0;
  disconnects = 0;
  private onChange: ((connected: boolean) => void) | null = null;

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
   * disconnect. Subscriptions given to `subscribe` before or after survive
   * reconnects.
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
        for (const s of this.pendingSubs) this.subs.push(nc.subscribe(s.subject, { callback: (err, msg) => (err === null ? s.handler(msg.subject, msg.data) : undefined) }));
        this.pendingSubs.length = 0;
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
    if (connected) this.log.info('cluster bus connected', { server, cluster: this.cfg.name });
    else if (was) this.log.warn('cluster bus disconnected: serving our own listeners to the subscribers we heard', { cluster: this.cfg.name });
    this.onChange?.(connected);
  }

  private readonly pendingSubs: Array<{ subject: string; handler: BusHandler }> = [];

  subscribe(subject: string, handler: BusHandler): void {
    if (this.nc === null) {
      this.pendingSubs.push({ subject, handler });
      return;
    }
    this.subs.push(this.nc.subscribe(subject, { callback: (err, msg) => (err === null ? handler(msg.subject, msg.data) : undefined) }));
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
