// The checks both daemons' configs share, so the same option is refused by
// the same rule with the same words in serve and in agent.

import { ConfigError } from '../base/errors.js';
import type { LogFormat, LogLevel } from '../base/log.js';
import { keyDirFiles } from '../crypto/keydir.js';
import { MAX_SOCKET_BUFFER } from '../net/io.js';
import { type Endpoint, parseEndpoint } from '../wire/address.js';
import type { RawOptions } from './options.js';

export function str(raw: RawOptions, name: string): string | undefined {
  const v = raw[name];
  return v === undefined ? undefined : String(v);
}

export function list(raw: RawOptions, name: string): string[] {
  const v = raw[name];
  return Array.isArray(v) ? v : [];
}

export function bool(raw: RawOptions, name: string): boolean {
  return raw[name] === true;
}

/** A number option within [min, max]; `above` makes min exclusive. */
export function num(raw: RawOptions, name: string, min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER, above = false): number {
  const v = raw[name];
  if (typeof v !== 'number') throw new ConfigError(`--${name} is missing or not a number`, name);
  if (above ? !(v > min) : !(v >= min)) throw new ConfigError(above ? `--${name} must be above ${min}, got ${v}` : `--${name} must be between ${min} and ${max}, got ${v}`, name);
  if (v > max) throw new ConfigError(`--${name} must be between ${min} and ${max}, got ${v}`, name);
  return v;
}

/** A required string option. */
export function need(raw: RawOptions, name: string, who: string): string {
  const v = raw[name];
  if (v === undefined || v === '') throw new ConfigError(`${who} needs --${name}`, name);
  return String(v);
}

export function endpointOption(name: string, text: string, bindable = false): Endpoint {
  const ep = parseEndpoint(text, bindable);
  if (typeof ep === 'string') throw new ConfigError(`--${name} ${ep}`, name);
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
    if (!allowed.includes(k)) throw new ConfigError(`--${name} ${text}: unknown parameter "${k}" (known: ${allowed.join(', ')})`, name);
    if (params.has(k)) throw new ConfigError(`--${name} ${text}: "${k}" given twice`, name);
    params.set(k, v);
  }
  return { addr: (addr ?? '').trim(), params };
}

export interface CommonSettings {
  readonly recvBuffer: number;
  readonly sendBuffer: number;
  readonly maxDatagram: number;
  readonly sendQueue: number;
  /**
   * The key ring's files, the sealing one first: the --key-file flags, or
   * what --key-dir holds now (a reload builds the config again, so lists it again).
   */
  readonly keyFiles: readonly string[];
  readonly maxSkewMs: number;
  /** Identity mode (--identity and --peers, both or neither; never with keys): the files, read at start and on reload. */
  readonly identity: { readonly file: string; readonly peers: string } | null;
  readonly metrics: Endpoint | null;
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
}

const LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];
const FORMATS: readonly LogFormat[] = ['json', 'text'];

/** The options serve and agent have in common, checked alike. */
export function commonSettings(raw: RawOptions, opts: { keysWithIdentity?: boolean } = {}): CommonSettings {
  const logLevel = str(raw, 'log-level') ?? 'info';
  if (!(LEVELS as readonly string[]).includes(logLevel)) throw new ConfigError(`--log-level "${logLevel}": want debug, info, warn or error`, 'log-level');
  const logFormat = str(raw, 'log-format') ?? 'json';
  if (!(FORMATS as readonly string[]).includes(logFormat)) throw new ConfigError(`--log-format "${logFormat}": want json or text`, 'log-format');
  const metricsText = str(raw, 'metrics') ?? 'off';
  return {
    recvBuffer: num(raw, 'recv-buffer', 0, MAX_SOCKET_BUFFER),
    sendBuffer: num(raw, 'send-buffer', 0, MAX_SOCKET_BUFFER),
    maxDatagram: num(raw, 'max-datagram', 4, 65535),
    sendQueue: num(raw, 'send-queue', 1),
    keyFiles: keyFiles(raw),
    identity: identityFiles(raw, opts.keysWithIdentity === true),
    maxSkewMs: num(raw, 'max-skew', 0, 86_400, true) * 1000,
    metrics: metricsText === 'off' ? null : endpointOption('metrics', metricsText, true),
    logLevel: logLevel as LogLevel,
    logFormat: logFormat as LogFormat,
  };
}

/**
 * The key ring's files. --key-dir and --key-file exclude each other: which
 * key seals is said in one place only (DIR/sealing, or the first --key-file).
 */
function keyFiles(raw: RawOptions): readonly string[] {
  const files = list(raw, 'key-file');
  const dir = str(raw, 'key-dir');
  if (dir === undefined) return files;
  if (dir === '') throw new ConfigError('--key-dir is empty: give the directory of the key files', 'key-dir');
  if (files.length > 0) {
    throw new ConfigError(
      `--key-dir ${dir} and --key-file ${files.join(', ')}: give one (every *.key in the directory opens, and ${dir}/sealing names the one that seals)`,
      'key-dir',
    );
  }
  try {
    return keyDirFiles(dir);
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigError(err.message, 'key-dir');
    throw err;
  }
}

/**
 * --identity and --peers. A sealed listener (and an agent) either
 * authenticates identities or holds the shared key, never both, so no frame
 * is ever judged by two rules. An agent takes one or the other; a repeater
 * may take both (`keysWithIdentity`) while a fleet migrates, each sealed
 * listener then in one mode (config/sealed-modes.ts).
 */
function identityFiles(raw: RawOptions, keysWithIdentity: boolean): CommonSettings['identity'] {
  const file = str(raw, 'identity');
  const peers = str(raw, 'peers');
  if (file === undefined && peers === undefined) return null;
  if (file === undefined || file === '') throw new ConfigError('--peers needs --identity (this host\'s own key pair: udprepeater keygen --identity FILE)', 'identity');
  if (peers === undefined || peers === '') throw new ConfigError('--identity needs --peers (the identities this host trusts)', 'peers');
  if (!keysWithIdentity && (list(raw, 'key-file').length > 0 || str(raw, 'key-dir') !== undefined)) {
    throw new ConfigError('--identity and --key-file/--key-dir: give one; a sealed listener (or an agent) uses identities or the shared key, not both', 'identity');
  }
  return { file, peers };
}
