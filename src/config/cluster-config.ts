// Cluster mode's settings (`serve --cluster ...`), checked before anything
// starts: several repeaters share one fan-out over a NATS bus.

import { accessSync, constants } from 'node:fs';
import { ConfigError, describe } from '../base/errors.js';
import { bool, list, num, str } from './checks.js';
import type { RawOptions } from './options.js';

export interface BusServer {
  /** As given to the NATS client: nats://host:port or tls://host:port. */
  readonly text: string;
}

export interface ClusterConfig {
  readonly servers: readonly BusServer[];
  /** Repeaters with the same name form one cluster (a prefix of every subject). */
  readonly name: string;
  /**
   * The bus's own key ring (--cluster-key-file): the first seals, all open.
   * Never a data key (--key-file): agents hold those, and a key holder could
   * then speak as a repeater. Empty only with `insecure`.
   */
  readonly keyFiles: readonly string[];
  /** The operator accepts an unsealed bus (no cluster key). */
  readonly insecure: boolean;
  /**
   * --identity: the bus is sealed by identity (cluster/bus-identity.ts): each
   * repeater hands its own sending key to the role=repeater identities of its
   * peers file. No --cluster-key-file (refused with it), never insecure.
   */
  readonly byIdentity: boolean;
  readonly credsFile: string | null;
  readonly user: string | null;
  readonly passwordFile: string | null;
  readonly tokenFile: string | null;
  readonly tlsCa: string | null;
  readonly tlsCert: string | null;
  readonly tlsKey: string | null;
  /** How long past the oldest bus datagram still delivered a copy of an update is remembered (judge/copies.ts). */
  readonly dedupWindowMs: number;
  /** A repeater not heard from for this long is taken for dead: its subscribers move. */
  readonly peerTimeoutMs: number;
}

/** Names that are safe as NATS subject tokens. */
export const SUBJECT_TOKEN = /^[A-Za-z0-9_-]{1,64}$/;

function server(text: string): BusServer {
  const m = /^(?:(nats|tls):\/\/)?([^/\s]+):([0-9]{1,5})$/.exec(text);
  if (m === null || Number(m[3]) < 1 || Number(m[3]) > 65535) throw new ConfigError(`--cluster "${text}" is not nats://HOST:PORT (or tls://HOST:PORT)`, 'cluster');
  return { text: `${m[1] ?? 'nats'}://${m[2]}:${m[3]}` };
}

function readable(name: string, file: string | undefined): string | null {
  if (file === undefined) return null;
  try {
    accessSync(file, constants.R_OK);
  } catch (err) {
    throw new ConfigError(`--${name} ${file}: ${describe(err)}`, name);
  }
  return file;
}

/** Null when `--cluster` is not given: standalone mode. */
export function buildClusterConfig(raw: RawOptions): ClusterConfig | null {
  const urls = list(raw, 'cluster');
  if (urls.length === 0) return null;
  const name = str(raw, 'cluster-name') ?? 'udprepeater';
  if (!SUBJECT_TOKEN.test(name)) throw new ConfigError(`--cluster-name "${name}": use 1-64 letters, digits, _ or -`, 'cluster-name');
  const user = str(raw, 'cluster-user') ?? null;
  const passwordFile = readable('cluster-password-file', str(raw, 'cluster-password-file'));
  if (passwordFile !== null && user === null) throw new ConfigError('--cluster-password-file needs --cluster-user', 'cluster-password-file');
  const tlsCert = readable('cluster-tls-cert', str(raw, 'cluster-tls-cert'));
  const tlsKey = readable('cluster-tls-key', str(raw, 'cluster-tls-key'));
  if ((tlsCert === null) !== (tlsKey === null)) throw new ConfigError('--cluster-tls-cert and --cluster-tls-key go together', 'cluster-tls-cert');
  const keyFiles = list(raw, 'cluster-key-file');
  const insecure = bool(raw, 'cluster-insecure');
  const byIdentity = str(raw, 'identity') !== undefined;
  if (byIdentity) {
    // Refused rather than preferred: two answers to "who may speak on the bus" would leave the operator guessing which holds.
    if (keyFiles.length > 0) throw new ConfigError('--cluster-key-file with --identity: the bus is sealed by identity (the role=repeater keys of --peers); drop --cluster-key-file', 'cluster-key-file');
    if (insecure) throw new ConfigError('--cluster-insecure with --identity: the bus is sealed by identity (the role=repeater keys of --peers); drop --cluster-insecure', 'cluster-insecure');
  } else if (keyFiles.length === 0 && !insecure) {
    throw new ConfigError('cluster mode needs --cluster-key-file, a key of its own for the bus (never a --key-file), or an explicit --cluster-insecure', 'cluster-key-file');
  }
  if (keyFiles.length > 0 && insecure) throw new ConfigError('--cluster-insecure and --cluster-key-file contradict each other: say one', 'cluster-insecure');
  return {
    servers: urls.map(server),
    name,
    keyFiles,
    insecure,
    byIdentity,
    credsFile: readable('cluster-creds', str(raw, 'cluster-creds')),
    user,
    passwordFile,
    tokenFile: readable('cluster-token-file', str(raw, 'cluster-token-file')),
    tlsCa: readable('cluster-tls-ca', str(raw, 'cluster-tls-ca')),
    tlsCert,
    tlsKey,
    dedupWindowMs: num(raw, 'cluster-dedup-window', 0.01, 60) * 1000,
    peerTimeoutMs: num(raw, 'cluster-peer-timeout', 0.3, 60) * 1000,
  };
}
