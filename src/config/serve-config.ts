// Turns layered raw options into the typed, validated config of `serve`.
// Everything an operator can get wrong is refused here, before any socket
// is opened, with a message naming the option and the value.

import { BlockList } from 'node:net';
import { ConfigError } from '../base/errors.js';
import type { LogFormat, LogLevel } from '../base/log.js';
import { localAddresses } from '../net/local.js';
import { canonicalIp, type Endpoint, isLimitedBroadcast, isLoopback, isMulticast, isUnspecified } from '../wire/address.js';
import { bool, type CommonSettings, commonSettings, endpointOption, list, num, splitSpec, str } from './checks.js';
import { buildClusterConfig, type ClusterConfig, SUBJECT_TOKEN } from './cluster-config.js';
import type { RawOptions } from './options.js';
import { buildWarmConfig, type WarmConfig } from './warm-config.js';
import { sealedModes } from './sealed-modes.js';
import { keysHeld, type TicketParams } from '../crypto/ticket-schedule.js';
import { MAX_TICKET_KEYS } from '../wire/ticket-codec.js';

export type { LogFormat, LogLevel };

export interface ListenerConfig {
  readonly endpoint: Endpoint;
  readonly channel: string;
  /** Subscriptions for any other key are refused; null accepts any. */
  readonly key: string | null;
  readonly sealed: boolean;
  readonly multicast: boolean;
  /** The channel was named with channel= (cluster mode needs it). */
  readonly named: boolean;
  /** Sealed listeners: its channel's sealed subscribers get the fleet's ticket keys. */
  readonly tickets: boolean;
  /** Plain listeners: a subscription is warmed even when it did not come from the address it names (NAT). */
  readonly warmAnySource: boolean;
  /**
   * Sealed listeners (`public=`): the address agents reach it at when that is
   * not one of this host's (NAT, a port forward, a UDP proxy); agents' frames
   * naming it are ours too (path/listener-name.ts). Null: none.
   */
  readonly publicAddress?: Endpoint | null;
  /** Sealed listeners: agents link to it by identity (config/sealed-modes.ts); else its frames are under the shared key. */
  readonly linked?: boolean;
}

export interface StaticConfig {
  readonly endpoint: Endpoint;
  /** null: a member of every channel. */
  readonly channel: string | null;
  readonly ttl: number;
  readonly sealed: boolean;
  readonly multicast: boolean;
  /** Sealed outputs: the channel key put in frames (default: the channel's key=, else its name). */
  readonly key: string | null;
}

export interface Limits {
  readonly maxSubscribers: number;
  readonly deadAfter: number;
  readonly deadRetryMs: number;
  readonly maxDatagram: number;
  readonly subscribeRate: number;
  readonly subscribeBurst: number;
  readonly sendQueue: number;
}

export interface SignCheckConfig {
  readonly digest: string;
  readonly dir: string;
  readonly tolerance: number;
}

export interface ServeConfig extends CommonSettings {
  readonly listeners: readonly ListenerConfig[];
  readonly statics: readonly StaticConfig[];
  /** CIDRs allowed to send, subscribe and be subscribed; null allows any. */
  readonly allow: readonly string[] | null;
  readonly toleranceMs: number;
  readonly limits: Limits;
  readonly repairDeletes: boolean;
  readonly forwardUnknown: boolean;
  /** Untraceable datagrams with the same bytes within this window are dropped as loops. */
  readonly dedupWindowMs: number;
  readonly multicastInterface: string | null;
  readonly multicastTtl: number;
  readonly signCheck: SignCheckConfig | null;
  readonly stateDir: string | null;
  /** Live state and warm joins (warm-config.ts). */
  readonly warm: WarmConfig;
  /** Cluster mode; null: standalone. */
  readonly cluster: ClusterConfig | null;
  /** The fleet's TLS ticket-key schedule; null when no listener has `tickets`. */
  readonly tickets: TicketParams | null;
}

/**
 * Validates CIDRs (a bare IP means a single host) and returns them in
 * canonical form: an IPv4-mapped IPv6 prefix (::ffff:a.b.c.d/96+n) becomes the
 * IPv4 prefix it covers, since sources are compared as IPv4.
 */
export function checkCidrs(name: string, cidrs: readonly string[]): string[] {
  const probe = new BlockList();
  return cidrs.map((c) => {
    const [ipText, bits, extra] = c.split('/');
    const ip = canonicalIp(ipText ?? '');
    if (ip === null || extra !== undefined) throw new ConfigError(`--${name} "${c}" is not an IP or CIDR`);
    const written = (ipText ?? '').includes(':') ? 128 : 32;
    if (!/^[0-9]{1,3}$/.test(bits ?? String(written)) || Number(bits ?? written) > written) throw new ConfigError(`--${name} "${c}": prefix must be 0-${written}`);
    let prefix = Number(bits ?? written);
    if (written === 128 && ip.family === 4) {
      if (prefix < 96) throw new ConfigError(`--${name} "${c}": an IPv4-mapped prefix must be /96 or longer`);
      prefix -= 96;
    }
    probe.addSubnet(ip.host, prefix, ip.family === 4 ? 'ipv4' : 'ipv6');
    return `${ip.host}/${prefix}`;
  });
}

function listeners(raw: RawOptions, name: string, sealed: boolean): ListenerConfig[] {
  return list(raw, name).map((text) => {
    const { addr, params } = splitSpec(name, text, sealed ? ['channel', 'key', 'tickets', 'public', 'identity'] : ['channel', 'key', 'warm-any-source']);
    const endpoint = endpointOption(name, addr, true);
    const channel = params.get('channel') ?? endpoint.text;
    if (channel === '') throw new ConfigError(`--${name} ${text}: empty channel name`);
    const key = params.has('key') ? params.get('key')! : null;
    if (key === '') throw new ConfigError(`--${name} ${text}: empty key`);
    for (const flag of ['tickets', 'warm-any-source', 'identity']) if (params.has(flag) && params.get(flag) !== '') throw new ConfigError(`--${name} ${text}: "${flag}" takes no value`, name);
    const pub = params.has('public') ? endpointOption(name, params.get('public')!) : null;
    if (pub !== null && (isUnspecified(pub.host) || isMulticast(pub.host) || isLimitedBroadcast(pub.host))) throw new ConfigError(`--${name} ${text}: public= must be a unicast address`, name);
    return { endpoint, channel, key, sealed, multicast: isMulticast(endpoint.host), named: params.has('channel'), tickets: params.has('tickets'), warmAnySource: params.has('warm-any-source'), publicAddress: pub, linked: params.has('identity') };
  });
}

function statics(raw: RawOptions, defaultTtl: number): StaticConfig[] {
  return list(raw, 'to').map((text) => {
    const { addr, params } = splitSpec('to', text, ['channel', 'ttl', 'sealed', 'key']);
    const endpoint = endpointOption('to', addr);
    if (isUnspecified(endpoint.host) || isLimitedBroadcast(endpoint.host)) throw new ConfigError(`--to ${text}: cannot send to an unspecified or broadcast address`);
    const ttlText = params.get('ttl');
    const ttl = ttlText === undefined ? defaultTtl : Number(ttlText);
    if (!/^[0-9]+$/.test(ttlText ?? '1') || ttl < 1 || ttl > 255) throw new ConfigError(`--to ${text}: ttl must be 1-255`);
    if (ttlText !== undefined && !isMulticast(endpoint.host)) throw new ConfigError(`--to ${text}: ttl= applies to multicast outputs only`);
    const sealed = params.has('sealed');
    if (sealed && params.get('sealed') !== '') throw new ConfigError(`--to ${text}: "sealed" takes no value`);
    const channel = params.get('channel') ?? null;
    if (channel === '') throw new ConfigError(`--to ${text}: empty channel name`);
    const key = params.get('key') ?? null;
    if (key !== null && (key === '' || !sealed)) throw new ConfigError(`--to ${text}: key= needs a value and applies to sealed outputs only`);
    return { endpoint, channel, ttl, sealed, multicast: isMulticast(endpoint.host), key };
  });
}

/**
 * @param explicit names of options set by the operator (file or CLI), used
 *   to tell a default allow-list from a deliberate one.
 */
export function buildServeConfig(raw: RawOptions, explicit: ReadonlySet<string>): ServeConfig {
  // The default plain listener applies only when no listener was asked for.
  const plain = explicit.has('listen-sealed') && !explicit.has('listen') ? [] : listeners(raw, 'listen', false);
  let all = [...plain, ...listeners(raw, 'listen-sealed', true)];
  if (all.length === 0) throw new ConfigError('no listener: give at least one --listen or --listen-sealed', 'listen');
  const seen = new Set<string>();
  const keys = new Map<string, string | null>();
  for (const l of all) {
    if (seen.has(l.endpoint.text)) throw new ConfigError(`listener ${l.endpoint.text} is given twice`, l.sealed ? 'listen-sealed' : 'listen');
    seen.add(l.endpoint.text);
    if (keys.has(l.channel) && keys.get(l.channel) !== l.key) {
      throw new ConfigError(`channel ${l.channel}: its listeners disagree on key=`, l.sealed ? 'listen-sealed' : 'listen');
    }
    keys.set(l.channel, l.key);
  }

  const allowAny = bool(raw, 'allow-any');
  if (allowAny && explicit.has('allow')) throw new ConfigError('--allow and --allow-any contradict each other: give one');
  const allow = allowAny ? null : checkCidrs('allow', list(raw, 'allow'));
  if (!allowAny && !explicit.has('allow')) {
    const exposed = all.find((l) => !isLoopback(l.endpoint.host));
    if (exposed !== undefined) {
      throw new ConfigError(
        `refusing to listen on ${exposed.endpoint.text} with the default loopback-only allow-list: ` +
          'give --allow CIDR for your nodes (or --allow-any to accept everyone)',
        exposed.sealed ? 'listen-sealed' : 'listen',
      );
    }
  }

  const multicastTtl = num(raw, 'multicast-ttl', 1, 255);
  const outs = statics(raw, multicastTtl);
  // Whether a --to reaches one of our listeners (any alias, any wildcard) is checked when the config is applied.
  for (const s of outs) {
    if (s.channel !== null && !keys.has(s.channel)) throw new ConfigError(`--to ${s.endpoint.text}: no channel named "${s.channel}"`);
  }

  const common = commonSettings(raw, { keysWithIdentity: true });
  const keyFiles = common.keyFiles;
  all = sealedModes(all, common);
  const needsKeys = all.some((l) => l.sealed) || outs.some((s) => s.sealed);
  if (common.identity !== null) {
    // Identity mode seals per link or group key: a static output has no link, so it keeps the shared key.
    if (!all.some((l) => l.sealed)) throw new ConfigError('--identity needs a --listen-sealed listener: agents link to it', 'identity');
    const out = outs.find((s) => s.sealed);
    if (out !== undefined) throw new ConfigError(`--to ${out.endpoint.text},sealed: a sealed static output needs the shared key; with --identity every sealed subscriber links itself`, 'to');
  } else if (needsKeys && keyFiles.length === 0) throw new ConfigError('sealed listeners and sealed --to outputs need at least one --key-file (or a --key-dir), or --identity and --peers');

  const ifaceText = str(raw, 'multicast-interface') ?? null;
  let iface: string | null = null;
  if (ifaceText !== null) {
    const ip = canonicalIp(ifaceText);
    if (ip === null) throw new ConfigError(`--multicast-interface "${ifaceText}" is not an IP address`);
    // Checked now: a socket asked to use a foreign address fails later, after "started".
    if (!localAddresses().has(ip.host)) throw new ConfigError(`--multicast-interface ${ip.host} is not an address of this host`);
    iface = ip.host;
  }

  let signCheck: SignCheckConfig | null = null;
  const sc = str(raw, 'subscriptions-sign-check');
  if (sc !== undefined) {
    const colon = sc.indexOf(':');
    if (colon <= 0 || colon === sc.length - 1) throw new ConfigError(`--subscriptions-sign-check "${sc}" is not DIGEST:DIR`);
    signCheck = { digest: sc.slice(0, colon), dir: sc.slice(colon + 1), tolerance: num(raw, 'subscriptions-sign-tolerance', 0, 86_400, true) };
  }

  const cluster = buildClusterConfig(raw);
  if (cluster !== null) {
    // Channels match across repeaters by name: each must be named, as a subject token.
    for (const l of all) {
      if (!l.named) throw new ConfigError(`listener ${l.endpoint.text}: cluster mode needs channel=NAME on every listener`, l.sealed ? 'listen-sealed' : 'listen');
      if (!SUBJECT_TOKEN.test(l.channel)) throw new ConfigError(`channel "${l.channel}": in cluster mode use 1-64 letters, digits, _ or -`, l.sealed ? 'listen-sealed' : 'listen');
    }
  }
  const tickets = ticketParams(raw, all, str(raw, 'state-dir') ?? null);
  const tolerance = num(raw, 'tolerance', 0, 86_400, true);
  const rate = num(raw, 'subscribe-rate', 0, 1e9, true);

  return {
    ...common,
    listeners: all,
    statics: outs,
    allow,
    toleranceMs: tolerance * 1000,
    limits: {
      maxSubscribers: num(raw, 'max-subscribers', 1),
      deadAfter: num(raw, 'dead-after', 0),
      deadRetryMs: num(raw, 'dead-retry', 0.01) * 1000,
      maxDatagram: common.maxDatagram,
      subscribeRate: rate,
      subscribeBurst: num(raw, 'subscribe-burst', 1),
      sendQueue: common.sendQueue,
    },
    repairDeletes: raw['repair-deletes'] !== false,
    forwardUnknown: bool(raw, 'forward-unknown'),
    dedupWindowMs: num(raw, 'dedup-window', 0.01, 3600) * 1000,
    multicastInterface: iface,
    multicastTtl,
    signCheck,
    stateDir: str(raw, 'state-dir') ?? null,
    warm: buildWarmConfig(raw, str(raw, 'state-dir') ?? null),
    cluster,
    tickets,
  };
}

/**
 * The ticket-key schedule, when a sealed listener asks for it with `tickets`.
 * It must survive restarts (a new schedule would invalidate every ticket in
 * flight), so it needs --state-dir; and a schedule holds 2 + ceil(lifetime /
 * rotation) keys, at most what receivers accept.
 */
function ticketParams(raw: RawOptions, listeners: readonly ListenerConfig[], stateDir: string | null): TicketParams | null {
  const rotateMs = num(raw, 'ticket-rotate', 1, 7 * 86_400) * 1000;
  const lifetimeMs = num(raw, 'ticket-lifetime', 1, 7 * 86_400) * 1000;
  const asking = listeners.find((l) => l.tickets);
  if (asking === undefined) return null;
  if (stateDir === null) {
    throw new ConfigError(`--listen-sealed ${asking.endpoint.text},tickets needs --state-dir: the ticket keys must survive a restart`, 'listen-sealed');
  }
  const p = { rotateMs, lifetimeMs };
  if (keysHeld(p) > MAX_TICKET_KEYS) {
    throw new ConfigError(`--ticket-lifetime ${lifetimeMs / 1000} with --ticket-rotate ${rotateMs / 1000} needs ${keysHeld(p)} keys at once; at most ${MAX_TICKET_KEYS} (lifetime at most ${MAX_TICKET_KEYS - 2} rotations)`, 'ticket-lifetime');
  }
  return p;
}
