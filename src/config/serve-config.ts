// Turns layered raw options into the typed, validated config of `serve`.
// Everything an operator can get wrong is refused here, before any socket
// is opened, with a message naming the option and the value.

import { BlockList } from 'node:net';
import { ConfigError } from '../base/errors.js';
import type { LogFormat, LogLevel } from '../base/log.js';
import { MAX_SOCKET_BUFFER } from '../net/io.js';
import { localAddresses } from '../net/local.js';
import { canonicalIp, type Endpoint, isLimitedBroadcast, isLoopback, isMulticast, isUnspecified, parseEndpoint } from '../wire/address.js';
import type { RawOptions } from './options.js';

export type { LogFormat, LogLevel };

export interface ListenerConfig {
  readonly endpoint: Endpoint;
  readonly channel: string;
  /** Subscriptions for any other key are refused; null accepts any. */
  readonly key: string | null;
  readonly sealed: boolean;
  readonly multicast: boolean;
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

export interface ServeConfig {
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
  readonly recvBuffer: number;
  readonly sendBuffer: number;
  readonly keyFiles: readonly string[];
  readonly maxSkewMs: number;
  readonly signCheck: SignCheckConfig | null;
  readonly stateDir: string | null;
  readonly metrics: Endpoint | null;
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
}

function str(raw: RawOptions, name: string): string | undefined {
  const v = raw[name];
  return v === undefined ? undefined : String(v);
}
function num(raw: RawOptions, name: string): number {
  const v = raw[name];
  if (typeof v !== 'number') throw new ConfigError(`--${name} is missing or not a number`);
  return v;
}
function list(raw: RawOptions, name: string): string[] {
  const v = raw[name];
  return Array.isArray(v) ? v : [];
}
function bool(raw: RawOptions, name: string): boolean {
  return raw[name] === true;
}
function atLeast(raw: RawOptions, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const n = num(raw, name);
  if (!(n >= min && n <= max)) throw new ConfigError(`--${name} must be between ${min} and ${max}, got ${n}`);
  return n;
}

export function endpointOption(name: string, text: string, bindable = false): Endpoint {
  const ep = parseEndpoint(text, bindable);
  if (typeof ep === 'string') throw new ConfigError(`--${name} ${ep}`);
  return ep;
}

/** Splits `ADDR,k=v,flag` into the address and its parameters. */
export function splitSpec(name: string, text: string, allowed: readonly string[]): { addr: string; params: Map<string, string> } {
  const [addr, ...rest] = text.split(',');
  const params = new Map<string, string>();
  for (const part of rest) {
    const eq = part.indexOf('=');
    const k = (eq < 0 ? part : part.slice(0, eq)).trim();
    const v = eq < 0 ? '' : part.slice(eq + 1).trim();
    if (!allowed.includes(k)) throw new ConfigError(`--${name} ${text}: unknown parameter "${k}" (known: ${allowed.join(', ')})`);
    if (params.has(k)) throw new ConfigError(`--${name} ${text}: "${k}" given twice`);
    params.set(k, v);
  }
  return { addr: (addr ?? '').trim(), params };
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
    const { addr, params } = splitSpec(name, text, ['channel', 'key']);
    const endpoint = endpointOption(name, addr, true);
    const channel = params.get('channel') ?? endpoint.text;
    if (channel === '') throw new ConfigError(`--${name} ${text}: empty channel name`);
    const key = params.has('key') ? params.get('key')! : null;
    if (key === '') throw new ConfigError(`--${name} ${text}: empty key`);
    return { endpoint, channel, key, sealed, multicast: isMulticast(endpoint.host) };
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
  const all = [...plain, ...listeners(raw, 'listen-sealed', true)];
  if (all.length === 0) throw new ConfigError('no listener: give at least one --listen or --listen-sealed');
  const seen = new Set<string>();
  const keys = new Map<string, string | null>();
  for (const l of all) {
    if (seen.has(l.endpoint.text)) throw new ConfigError(`listener ${l.endpoint.text} is given twice`);
    seen.add(l.endpoint.text);
    if (keys.has(l.channel) && keys.get(l.channel) !== l.key) {
      throw new ConfigError(`channel ${l.channel}: its listeners disagree on key=`);
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
      );
    }
  }

  const multicastTtl = atLeast(raw, 'multicast-ttl', 1, 255);
  const outs = statics(raw, multicastTtl);
  // Whether a --to reaches one of our listeners (any alias, any wildcard) is checked when the config is applied.
  for (const s of outs) {
    if (s.channel !== null && !keys.has(s.channel)) throw new ConfigError(`--to ${s.endpoint.text}: no channel named "${s.channel}"`);
  }

  const keyFiles = list(raw, 'key-file');
  const needsKeys = all.some((l) => l.sealed) || outs.some((s) => s.sealed);
  if (needsKeys && keyFiles.length === 0) throw new ConfigError('sealed listeners and sealed --to outputs need at least one --key-file');

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
    signCheck = { digest: sc.slice(0, colon), dir: sc.slice(colon + 1), tolerance: num(raw, 'subscriptions-sign-tolerance') };
  }

  const metricsText = str(raw, 'metrics') ?? 'off';
  const logLevel = str(raw, 'log-level') ?? 'info';
  if (!['debug', 'info', 'warn', 'error'].includes(logLevel)) throw new ConfigError(`--log-level "${logLevel}": want debug, info, warn or error`);
  const logFormat = str(raw, 'log-format') ?? 'json';
  if (!['json', 'text'].includes(logFormat)) throw new ConfigError(`--log-format "${logFormat}": want json or text`);

  const tolerance = num(raw, 'tolerance');
  if (!(tolerance > 0)) throw new ConfigError('--tolerance must be above 0');
  const rate = num(raw, 'subscribe-rate');
  if (!(rate > 0)) throw new ConfigError('--subscribe-rate must be above 0');

  return {
    listeners: all,
    statics: outs,
    allow,
    toleranceMs: tolerance * 1000,
    limits: {
      maxSubscribers: atLeast(raw, 'max-subscribers', 1),
      deadAfter: atLeast(raw, 'dead-after', 0),
      deadRetryMs: atLeast(raw, 'dead-retry', 0.01) * 1000,
      maxDatagram: atLeast(raw, 'max-datagram', 4, 65535),
      subscribeRate: rate,
      subscribeBurst: atLeast(raw, 'subscribe-burst', 1),
      sendQueue: atLeast(raw, 'send-queue', 1),
    },
    repairDeletes: raw['repair-deletes'] !== false,
    forwardUnknown: bool(raw, 'forward-unknown'),
    dedupWindowMs: atLeast(raw, 'dedup-window', 0.01, 3600) * 1000,
    multicastInterface: iface,
    multicastTtl,
    recvBuffer: atLeast(raw, 'recv-buffer', 0, MAX_SOCKET_BUFFER),
    sendBuffer: atLeast(raw, 'send-buffer', 0, MAX_SOCKET_BUFFER),
    keyFiles,
    maxSkewMs: num(raw, 'max-skew') * 1000,
    signCheck,
    stateDir: str(raw, 'state-dir') ?? null,
    metrics: metricsText === 'off' ? null : endpointOption('metrics', metricsText, true),
    logLevel: logLevel as LogLevel,
    logFormat: logFormat as LogFormat,
  };
}
