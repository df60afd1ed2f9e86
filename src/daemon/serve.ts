// `udprepeater serve`: wires config, repeater, metrics and signals together.

import type { Registry } from 'prom-client';
import { Reloads, runDaemon } from './lifecycle.js';
import { type StatusServer, startStatus } from './http.js';
import { type Invocation, loadConfig } from '../config/load.js';
import type { Logger } from '../base/log.js';
import { ConfigError } from '../base/errors.js';
import {
  registerClusterMetrics,
  counterFrom,
  gaugeFrom,
  newRegistry,
  OpsMetrics,
  registerChannelMetrics,
  registerKeyMetrics,
  registerListenerKernelMetrics,
  registerSubscriptionMetrics,
} from './metrics.js';
import { SERVE_OPTIONS } from '../config/options.js';
import { VERSION } from '../base/package.js';
import { buildServeConfig, type ServeConfig } from '../config/serve-config.js';
import { KeyRing } from '../crypto/keyring.js';
import { sodiumReady } from '../crypto/secretbox.js';
import { SecureSession } from '../crypto/session.js';
import { Repeater, type RepeaterHooks } from '../repeater/repeater.js';
import type { Backend } from '../net/io.js';
import { Cluster } from '../cluster/cluster.js';
import { BusSeal } from '../cluster/bus-seal.js';
import { IdentityBusSeal } from '../cluster/bus-identity.js';
import type { PeerTable } from '../config/peers-file.js';
import type { Identity } from '../crypto/identity.js';
import { DataSeal } from '../path/data-seal.js';
import { LinkDoor } from '../path/link-door.js';
import { IdentityFiles } from './identity-files.js';
import { identityHealth, registerPeerMetrics } from './peer-metrics.js';
import { Role } from '../wire/envelope.js';
import { UwsgiSignatureCheck } from '../repeater/signcheck.js';
import { RegistryStore } from './registry-store.js';
import { LiveStore } from './live-store.js';
import { registerWarmMetrics } from './warm-metrics.js';
import { TicketStore } from './ticket-store.js';
import { registerTicketMetrics } from './ticket-metrics.js';

export interface ServeHandle {
  readonly repeater: Repeater;
  readonly backend: Backend;
  readonly register: Registry;
  readonly status: StatusServer | null;
  readonly ops: OpsMetrics;
  /** Re-applies `config`; on failure logs why and keeps the running one. */
  reload(config: () => ServeConfig): Promise<boolean>;
  close(): Promise<void>;
}

export function subscribersView(r: Repeater, cluster: Cluster | null = null): unknown {
  const iso = (ms: number) => (Number.isFinite(ms) ? new Date(ms).toISOString() : null);
  const out: unknown[] = [];
  for (const ch of r.channels.values()) {
    for (const e of ch.subscribers()) {
      out.push({
        ...(cluster === null ? {} : { served: e.owned, ...cluster.describeEntry(ch, e) }),
        channel: ch.name,
        address: e.endpoint.text,
        key: e.key,
        form: e.form,
        ...(r.path.config.links === null || e.form !== 'sealed' ? {} : { identity: r.path.config.links.nameOf(e.origin) }),
        static: e.isStatic,
        source: e.source,
        firstSeen: iso(e.firstSeen),
        lastSeen: iso(e.lastSeen),
        expires: iso(e.deadline),
        suspended: e.suspendedUntil !== 0,
        suspendedUntil: e.suspendedUntil !== 0 ? iso(e.suspendedUntil) : null,
        strikes: e.strikes,
        datagrams: e.outlet.sent,
        bytes: e.outlet.bytes,
        dropped: e.outlet.dropped,
        errors: e.outlet.errors,
        lastError: e.outlet.lastError,
        warmJoin: r.warm.progress(ch, e),
      });
    }
  }
  return out;
}

/**
 * Secure mode and signed subscriptions, built per config. The session (origin,
 * sequence, replay windows) and the signed-subscription clocks live as long
 * as the process; key rings and public keys are re-read on every reload.
 */
export async function repeaterHooks(log: Logger): Promise<RepeaterHooks & { session(): SecureSession | null; door(): LinkDoor | null; identityPeers(): IdentityPeers | null }> {
  await sodiumReady();
  let session: SecureSession | null = null;
  const signedClocks = new Map<string, number>();
  const files = new IdentityFiles(log);
  let door: LinkDoor | null = null;
  let maxSkewMs = 0;
  let peers: PeerTable | null = null;
  return {
    session: () => session,
    door: () => door,
    identityPeers: () => (files.identity === null || peers === null ? null : { identity: files.identity, peers }),
    links(config) {
      const table = files.read(config, true);
      if (table === null) return null;
      peers = table;
      maxSkewMs = config.maxSkewMs;
      door ??= new LinkDoor(
        files.identity!,
        {
          linked: (peer, address) => log.info('link confirmed', { peer, address }),
          revoked: (peers, subscribers) => log.info('identities revoked: links dropped', { peers, subscribers }),
        },
        () => maxSkewMs,
      );
      door.stage(table);
      return door;
    },
    sealed(config) {
      if (config.keyFiles.length === 0) return null;
      const ring = KeyRing.load(config.keyFiles);
      session ??= new SecureSession(Role.Repeater);
      log.info('key ring loaded', { keys: ring.describe(), origin: session.origin.toString(16) });
      return new DataSeal(session, ring, { maxSkewMs: config.maxSkewMs });
    },
    signatures: (config) => (config.signCheck === null ? null : new UwsgiSignatureCheck(config.signCheck, log, signedClocks)),
  };
}

/** Identity mode: our identity and the peers table last read (the identity bus hands its key to the repeaters it lists). */
interface IdentityPeers {
  readonly identity: Identity;
  readonly peers: PeerTable;
}

/** The identity bus, once the repeater read the peers file (null unless --identity with --cluster). */
function identityBus(config: ServeConfig, hooks: RepeaterHooks, log: Logger): IdentityBusSeal | null {
  if (config.cluster === null || !config.cluster.byIdentity) return null;
  const ip = 'identityPeers' in hooks ? (hooks as { identityPeers(): IdentityPeers | null }).identityPeers() : null;
  if (ip === null) throw new ConfigError('--cluster with --identity: the repeater read no peers file', 'identity');
  const seal = new IdentityBusSeal(ip.identity, ip.peers, config.maxSkewMs, log);
  log.info('cluster bus sealed by identity', { key: seal.keyIds()[0], repeaters: ip.peers.withRole('repeater').map((p) => p.name) });
  return seal;
}

/** Starts a repeater with its status server; used by the CLI and by tests. */
export async function startServe(config: ServeConfig, log: Logger, hooks?: RepeaterHooks, backend?: Backend): Promise<ServeHandle> {
  const h = hooks ?? (await repeaterHooks(log));
  // The bus's own ring, checked against the data keys before anything opens.
  if (config.cluster !== null && config.cluster.keyFiles.length > 0) await sodiumReady();
  const busSeal = config.cluster === null || config.cluster.keyFiles.length === 0 ? null : BusSeal.load(config.cluster.keyFiles, config.keyFiles, config.maxSkewMs);
  if (busSeal !== null) log.info('cluster key ring loaded', { keys: busSeal.keyIds() });
  // An unusable state dir refuses the start, before any socket is opened.
  const store = config.stateDir === null ? null : new RegistryStore(config.stateDir, log);
  const ticketStore = config.stateDir === null ? null : new TicketStore(config.stateDir, log);
  let repeater: Repeater;
  try {
    repeater = await Repeater.start(config, log, { ...h, ...(backend === undefined ? {} : { backend }), ...(ticketStore === null ? {} : { ticketStore }) });
  } catch (err) {
    busSeal?.dispose();
    throw err;
  }
  let idSeal: IdentityBusSeal | null;
  try {
    idSeal = identityBus(config, h, log);
  } catch (err) {
    await repeater.close();
    throw err;
  }
  const cluster = config.cluster === null ? null : new Cluster(config.cluster, repeater, log, busSeal ?? idSeal);
  if (store !== null) {
    const saved = store.load();
    if (saved !== null) store.restore(repeater, saved);
    store.start(repeater);
  }
  // Consumed at start (read when --save-live-state, deleted in any case); written at stop when asked.
  const live = config.stateDir === null ? null : new LiveStore(config.stateDir, log);
  live?.restore(repeater, config.warm.save);
  const saveLive = () => {
    if (repeater.current.warm.save) live?.save(repeater);
  };
  cluster?.start();
  const register = newRegistry();
  const channels = () =>
    [...repeater.channels.values()].map((ch) => ({ name: ch.name, stats: ch.stats, subscribers: ch.size, suspended: ch.suspended }));
  registerChannelMetrics(register, 'udprepeater', channels, repeater.fanoutTime);
  registerSubscriptionMetrics(register, channels);
  const ops = new OpsMetrics(register, 'udprepeater', VERSION);
  const session = 'session' in h ? (h as { session(): SecureSession | null }).session : () => null;
  registerKeyMetrics(register, 'udprepeater_keys', () => repeater.dataSeal?.keyIds() ?? []);
  counterFrom(register, 'udprepeater_sealed_frames_total', 'Secure mode: frames sealed (once per datagram and subscriber key; with --identity once per datagram and linked subscriber)', [], () => [
    [{}, (session()?.framesSealed ?? 0) + (repeater.path.config.links?.framesSealed ?? 0)],
  ]);
  counterFrom(register, 'udprepeater_group_frames_total', 'Identity mode: group frames sealed (one per live datagram and channel key, for every member holding its group key)', [], () => [
    [{}, repeater.path.config.links?.groupFramesSealed ?? 0],
  ]);
  gaugeFrom(register, 'udprepeater_group_keys', 'Identity mode: channel group keys in use (replaced all at once by a revocation)', [], () => [[{}, repeater.path.config.links?.groups.size ?? 0]]);
  registerListenerKernelMetrics(register, () => repeater.listenerSockets());
  registerPeerMetrics(register, 'udprepeater', () => repeater.path.config.links?.peerView() ?? []);
  registerWarmMetrics(register, repeater);
  counterFrom(register, 'udprepeater_state_saves_total', 'Registry state files written (--state-dir), by result', ['result'], () => [
    [{ result: 'ok' }, store?.saves ?? 0],
    [{ result: 'error' }, store?.saveErrors ?? 0],
  ]);
  gaugeFrom(register, 'udprepeater_replay_origins', 'Secure mode: origins with a replay window', [], () => [[{}, session()?.origins ?? 0]]);
  if (cluster !== null) registerClusterMetrics(register, cluster, repeater);
  registerTicketMetrics(register, () => repeater.tickets, ticketStore);
  const started = Date.now();
  const status = await startStatus(
    config.metrics,
    register,
    {
      '/healthz': () => ({
        status: 'ok',
        version: VERSION,
        uptimeSeconds: Math.round((Date.now() - started) / 1000),
        listeners: repeater.listeners(),
        channels: repeater.channels.size,
        keys: repeater.dataSeal?.keyIds() ?? [],
        ...(repeater.path.config.links === null ? {} : { identity: identityHealth(repeater.path.config.links.publicKey, repeater.path.config.links.fingerprint, () => repeater.path.config.links?.peerView() ?? []) }),
        hints: repeater.hints.view(),
        ...(repeater.tickets === null ? {} : { ticketKeys: repeater.tickets.keys.describe(Date.now()) }),
        ...(cluster === null ? {} : { status: cluster.degraded ? 'degraded' : 'ok', cluster: cluster.health() }),
      }),
      '/subscribers': () => subscribersView(repeater, cluster),
      // Refused subscriptions, and one entry per source the allow-list refused (its last refusal); oldest first.
      '/refusals': () => [...repeater.subscriptions.recent(), ...repeater.hints.refusals()].sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0)),
    },
    log,
    async () => {
      store?.stop(repeater);
      saveLive();
      await cluster?.close();
      await repeater.close();
      busSeal?.dispose();
      idSeal?.dispose();
    },
  );

  const reloads = new Reloads(log, (ok) => ops.reloaded(ok));
  const handle: ServeHandle = {
    repeater,
    backend: repeater.backend,
    register,
    status,
    ops,
    reload: (next) =>
      reloads.run(async () => {
        const cfg = next();
        if (cfg.stateDir !== config.stateDir) log.warn('--state-dir changes take effect at the next restart', { running: config.stateDir, configured: cfg.stateDir });
        store?.check();
        // The cluster key ring is reloaded (a sealed bus stays sealed); every other cluster setting waits for a restart.
        const settings = (c: ServeConfig['cluster']) => JSON.stringify(c === null ? null : { ...c, keyFiles: c.keyFiles.length > 0 });
        if (settings(cfg.cluster) !== settings(config.cluster)) log.warn('cluster settings take effect at the next restart');
        if (busSeal !== null && (cfg.cluster === null || cfg.cluster.keyFiles.length === 0)) {
          throw new ConfigError('the running cluster bus is sealed: a reload cannot drop --cluster-key-file (restart to change cluster settings)', 'cluster-key-file');
        }
        const busRing = busSeal !== null && cfg.cluster !== null ? BusSeal.ring(cfg.cluster.keyFiles, cfg.keyFiles) : null;
        try {
          await repeater.apply(cfg);
        } catch (err) {
          busRing?.destroy();
          throw err;
        }
        // The peers file the repeater just took: a repeater no longer listed is revoked on the bus too.
        if (idSeal !== null) idSeal.usePeers((h as { identityPeers(): IdentityPeers | null }).identityPeers()!.peers, cfg.maxSkewMs);
        if (busRing !== null) {
          busSeal!.use(busRing, cfg.maxSkewMs);
          log.info('cluster key ring loaded', { keys: busSeal!.keyIds() });
        }
        log.configure(cfg.logLevel, cfg.logFormat);
      }),
    async close() {
      store?.stop(repeater);
      saveLive();
      await cluster?.close();
      await repeater.close();
      busSeal?.dispose();
      idSeal?.dispose();
      if (status !== null) await status.close();
    },
  };
  return handle;
}

/** The CLI entry: runs until SIGTERM/SIGINT; SIGHUP reloads. */
export function runServe(inv: Invocation): Promise<void> {
  return runDaemon('udprepeater', 'started', inv.configFile, () => loadConfig(inv, SERVE_OPTIONS, buildServeConfig), (c, log) => startServe(c, log));
}
