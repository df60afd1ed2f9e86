// The typed, validated config of `udprepeater agent`.

import { accessSync, constants, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ConfigError, describe } from '../base/errors.js';
import { checkTrustedDir, checkTrustedFile } from '../base/trust.js';
import { MAX_TICKET_KEYS } from '../wire/ticket-codec.js';
import { type Endpoint, isLoopback } from '../wire/address.js';
import { type CommonSettings, commonSettings, endpointOption, list, need, num, str } from './checks.js';
import type { RawOptions } from './options.js';

/** The file in --ticket-key-dir that HAProxy reads (`tls-ticket-keys`). */
export const HAPROXY_KEYS_FILE = 'haproxy.keys';

/** Where and how the agent writes nginx ticket key files (agent/ticket-files.ts). */
export interface TicketFilesConfig {
  readonly dir: string;
  readonly slots: number;
  readonly size: 48 | 80;
  /** Run with /bin/sh -c after the files changed; null: none. */
  readonly reloadCommand: string | null;
  readonly reloadTimeoutMs: number;
  /** HAProxy: the keys file it reads (DIR/haproxy.keys, absolute) and the runtime API sockets it is pushed to. */
  readonly haproxy: HaproxyConfig;
}

export interface HaproxyConfig {
  readonly keysFile: string;
  readonly sockets: readonly string[];
  readonly checkMs: number;
  readonly timeoutMs: number;
}

export interface AgentConfig extends CommonSettings {
  readonly repeaters: readonly Endpoint[];
  readonly local: Endpoint;
  /** The node's cache-udp-server; null on a host without a node (ticket keys only). */
  readonly deliver: Endpoint | null;
  readonly channelKey: string;
  /** Address of the socket that talks to the repeaters. */
  readonly bind: Endpoint;
  /** Where the repeaters should send (named in every subscription); null: worked out per repeater. */
  readonly advertise: string | null;
  readonly subscribeIntervalMs: number;
  readonly repairDeletes: boolean;
  /** nginx ticket key files; null: ticket keys are not written. */
  readonly ticketFiles: TicketFilesConfig | null;
  /** Owners of the sockets that may send to --local (--node-user); null: the owner of the socket bound at --deliver. */
  readonly nodeUids: readonly number[] | null;
}

export function buildAgentConfig(raw: RawOptions): AgentConfig {
  const common = commonSettings(raw);
  const repeaters = list(raw, 'repeater').map((t) => endpointOption('repeater', t));
  if (repeaters.length === 0) throw new ConfigError('agent needs at least one --repeater', 'repeater');
  if (new Set(repeaters.map((r) => r.family)).size > 1) throw new ConfigError('--repeater addresses must all be IPv4 or all IPv6');
  // Plain datagrams never leave the host: both plain sides must be loopback.
  const local = endpointOption('local', need(raw, 'local', 'agent'), true);
  if (!isLoopback(local.host)) throw new ConfigError(`--local ${local.text} must be a loopback address: plain traffic never leaves the host`);
  const deliver = deliverOption(raw, local);
  const channelKey = need(raw, 'channel-key', 'agent');
  if (channelKey.length > 255) throw new ConfigError('--channel-key is longer than 255 bytes');
  const family = repeaters[0]!.family;
  const bind = endpointOption('bind', str(raw, 'bind') ?? (family === 6 ? '[::]:0' : '0.0.0.0:0'), true);
  if (bind.family !== family) throw new ConfigError(`--bind ${bind.text} is not IPv${family} like the repeaters`);
  const advertiseText = str(raw, 'advertise');
  const advertise = advertiseText === undefined ? null : endpointOption('advertise', advertiseText).text;
  if (common.keyFiles.length === 0 && common.identity === null) throw new ConfigError('agent needs at least one --key-file (or a --key-dir), or --identity and --peers', 'key-file');
  const tickets = ticketFiles(raw);
  if (deliver === null && tickets === null) throw new ConfigError('agent needs --deliver (or, on a host without a node, --ticket-key-dir: ticket keys only)', 'deliver');
  return {
    ...common,
    repeaters,
    local,
    deliver,
    channelKey,
    bind,
    advertise,
    subscribeIntervalMs: num(raw, 'subscribe-interval', 0, 3600, true) * 1000,
    repairDeletes: raw['repair-deletes'] !== false,
    ticketFiles: tickets,
    nodeUids: nodeUsers(raw),
  };
}

/** --deliver, loopback only; absent: the agent delivers nothing (a ticket-keys-only agent). */
function deliverOption(raw: RawOptions, local: Endpoint): Endpoint | null {
  const text = str(raw, 'deliver');
  if (text === undefined || text === '') return null;
  const deliver = endpointOption('deliver', text);
  if (!isLoopback(deliver.host)) throw new ConfigError(`--deliver ${deliver.text} must be a loopback address: plain traffic never leaves the host`);
  if (deliver.text === local.text) throw new ConfigError(`--deliver ${deliver.text} is --local: the agent would send the node's updates to itself`);
  return deliver;
}

/** --ticket-key-dir and friends; the directory is created (0700) and must be writable and ours, or the start (or the reload) is refused. */
function ticketFiles(raw: RawOptions): TicketFilesConfig | null {
  const slots = num(raw, 'ticket-key-slots', 1, MAX_TICKET_KEYS);
  const size = num(raw, 'ticket-key-size', 48, 80);
  if (size !== 48 && size !== 80) throw new ConfigError(`--ticket-key-size must be 48 or 80, got ${size}`, 'ticket-key-size');
  const reloadTimeoutMs = num(raw, 'ticket-reload-timeout', 0, 3600, true) * 1000;
  const reloadCommand = str(raw, 'ticket-reload-command') ?? null;
  if (reloadCommand !== null && reloadCommand.trim() === '') throw new ConfigError('--ticket-reload-command is empty', 'ticket-reload-command');
  const dir = str(raw, 'ticket-key-dir');
  if (dir === undefined) {
    if (reloadCommand !== null) throw new ConfigError('--ticket-reload-command needs --ticket-key-dir', 'ticket-reload-command');
    if (list(raw, 'haproxy-socket').length > 0) throw new ConfigError('--haproxy-socket needs --ticket-key-dir (HAProxy reads DIR/haproxy.keys at start)', 'haproxy-socket');
    return null;
  }
  if (dir === '') throw new ConfigError('--ticket-key-dir is empty', 'ticket-key-dir');
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    accessSync(dir, constants.W_OK | constants.X_OK);
  } catch (err) {
    throw new ConfigError(`--ticket-key-dir ${dir}: not a writable directory (${describe(err)})`, 'ticket-key-dir');
  }
  // The keys are secrets, and what is in the files is what nginx encrypts with: ours alone (base/trust.ts).
  checkTrustedDir(dir, '--ticket-key-dir', { secret: true, noun: 'the ticket keys' });
  for (let i = 0; i < MAX_TICKET_KEYS; i++) checkTrustedFile(join(dir, `ticket.${i}.key`), '--ticket-key-dir file', { secret: true, noun: 'the ticket key' });
  checkTrustedFile(join(dir, HAPROXY_KEYS_FILE), '--ticket-key-dir file', { secret: true, noun: 'the ticket keys' });
  return { dir, slots, size, reloadCommand, reloadTimeoutMs, haproxy: haproxyConfig(raw, dir) };
}

/** At most this many --haproxy-socket (each has its own timer and counters). */
const MAX_HAPROXY_SOCKETS = 64;
/** sun_path on Linux, less its terminating zero. */
const MAX_SOCKET_PATH = 107;

/**
 * --haproxy-socket and its timing. A socket that does not exist yet is fine
 * (HAProxy may start after the agent); a path that exists and is not a
 * socket, or cannot be one, is refused. The keys file is named in every
 * runtime API command, so it must be one word HAProxy's command line reads
 * as is.
 */
function haproxyConfig(raw: RawOptions, dir: string): HaproxyConfig {
  const keysFile = join(resolve(dir), HAPROXY_KEYS_FILE);
  const checkMs = num(raw, 'haproxy-check-interval', 0, 86_400, true) * 1000;
  const timeoutMs = num(raw, 'haproxy-timeout', 0, 3600, true) * 1000;
  const sockets = list(raw, 'haproxy-socket');
  if (sockets.length > MAX_HAPROXY_SOCKETS) throw new ConfigError(`at most ${MAX_HAPROXY_SOCKETS} --haproxy-socket, got ${sockets.length}`, 'haproxy-socket');
  const seen = new Set<string>();
  for (const p of sockets) {
    if (p === '') throw new ConfigError('--haproxy-socket is empty', 'haproxy-socket');
    if (Buffer.byteLength(p) > MAX_SOCKET_PATH) throw new ConfigError(`--haproxy-socket ${p}: longer than ${MAX_SOCKET_PATH} bytes, no UNIX socket can have this path`, 'haproxy-socket');
    if (seen.has(resolve(p))) throw new ConfigError(`--haproxy-socket ${p} is given twice`, 'haproxy-socket');
    seen.add(resolve(p));
    let st;
    try {
      st = statSync(p);
    } catch {
      continue; // not there yet: reported in /healthz and the metrics until it is
    }
    if (!st.isSocket()) throw new ConfigError(`--haproxy-socket ${p}: exists and is not a UNIX socket`, 'haproxy-socket');
  }
  if (sockets.length > 0 && /[\s;\\\x00-\x1f\x7f]/.test(keysFile)) {
    throw new ConfigError(`--ticket-key-dir ${dir}: ${keysFile} has a space, a control character, ';' or a backslash, which HAProxy's runtime API would read as something else`, 'ticket-key-dir');
  }
  return { keysFile, sockets, checkMs, timeoutMs };
}

/**
 * --node-user: the users whose UDP sockets may send plain updates to
 * --local (agent/local-senders.ts); null: the owner of the node's socket at
 * --deliver. A name is looked up in /etc/passwd.
 */
function nodeUsers(raw: RawOptions): readonly number[] | null {
  const given = list(raw, 'node-user');
  if (given.length === 0) return null;
  let passwd: string | null = null;
  const uids = given.map((u) => {
    const text = u.trim();
    if (/^[0-9]+$/.test(text)) {
      const uid = Number(text);
      if (uid > 0xfffffffe) throw new ConfigError(`--node-user ${text}: not a uid`, 'node-user');
      return uid;
    }
    if (passwd === null) {
      try {
        passwd = readFileSync('/etc/passwd', 'utf8');
      } catch (err) {
        throw new ConfigError(`--node-user ${text}: cannot read /etc/passwd (${describe(err)}); give the numeric uid`, 'node-user');
      }
    }
    for (const line of passwd.split('\n')) {
      const f = line.split(':');
      if (f[0] === text && f.length >= 3 && /^[0-9]+$/.test(f[2]!)) return Number(f[2]);
    }
    throw new ConfigError(`--node-user ${text}: no such user in /etc/passwd; give the numeric uid`, 'node-user');
  });
  return [...new Set(uids)];
}
