// The typed, validated config of `udprepeater agent`.

import { MAX_SOCKET_BUFFER } from '../net/io.js';
import { type Endpoint, isLoopback } from '../wire/address.js';
import { ConfigError } from '../base/errors.js';
import type { RawOptions } from './options.js';
import { endpointOption, type LogFormat, type LogLevel } from './serve-config.js';

export interface AgentConfig {
  readonly repeaters: readonly Endpoint[];
  readonly local: Endpoint;
  readonly deliver: Endpoint;
  readonly channelKey: string;
  /** Address of the socket that talks to the repeaters. */
  readonly bind: Endpoint;
  readonly advertise: string | null;
  readonly subscribeIntervalMs: number;
  readonly repairDeletes: boolean;
  readonly sendQueue: number;
  readonly recvBuffer: number;
  readonly sendBuffer: number;
  readonly maxDatagram: number;
  readonly keyFiles: readonly string[];
  readonly maxSkewMs: number;
  readonly metrics: Endpoint | null;
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
}

function need(raw: RawOptions, name: string): string {
  const v = raw[name];
  if (v === undefined || v === '') throw new ConfigError(`agent needs --${name}`);
  return String(v);
}

function count(raw: RawOptions, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const v = raw[name];
  if (typeof v !== 'number' || !(v >= min && v <= max)) throw new ConfigError(`--${name} must be between ${min} and ${max}`);
  return v;
}

export function buildAgentConfig(raw: RawOptions): AgentConfig {
  const repeaters = ((raw['repeater'] as string[] | undefined) ?? []).map((t) => endpointOption('repeater', t));
  if (repeaters.length === 0) throw new ConfigError('agent needs at least one --repeater');
  if (new Set(repeaters.map((r) => r.family)).size > 1) throw new ConfigError('--repeater addresses must all be IPv4 or all IPv6');
  // Plain datagrams never leave the host: both plain sides must be loopback.
  const local = endpointOption('local', need(raw, 'local'), true);
  if (!isLoopback(local.host)) throw new ConfigError(`--local ${local.text} must be a loopback address: plain traffic never leaves the host`);
  const deliver = endpointOption('deliver', need(raw, 'deliver'));
  if (!isLoopback(deliver.host)) throw new ConfigError(`--deliver ${deliver.text} must be a loopback address: plain traffic never leaves the host`);
  if (deliver.text === local.text) throw new ConfigError(`--deliver ${deliver.text} is --local: the agent would send the node's updates to itself`);
  const channelKey = need(raw, 'channel-key');
  if (channelKey.length > 255) throw new ConfigError('--channel-key is longer than 255 bytes');
  const family = repeaters[0]!.family;
  const bind = endpointOption('bind', raw['bind'] === undefined ? (family === 6 ? '[::]:0' : '0.0.0.0:0') : String(raw['bind']), true);
  if (bind.family !== family) throw new ConfigError(`--bind ${bind.text} is not IPv${family} like the repeaters`);
  const advertise = raw['advertise'] === undefined ? null : endpointOption('advertise', String(raw['advertise'])).text;
  const keyFiles = (raw['key-file'] as string[] | undefined) ?? [];
  if (keyFiles.length === 0) throw new ConfigError('agent needs at least one --key-file');
  const interval = raw['subscribe-interval'];
  if (typeof interval !== 'number' || !(interval > 0)) throw new ConfigError('--subscribe-interval must be above 0');
  const logLevel = String(raw['log-level'] ?? 'info');
  if (!['debug', 'info', 'warn', 'error'].includes(logLevel)) throw new ConfigError(`--log-level "${logLevel}": want debug, info, warn or error`);
  const logFormat = String(raw['log-format'] ?? 'json');
  if (!['json', 'text'].includes(logFormat)) throw new ConfigError(`--log-format "${logFormat}": want json or text`);
  const metricsText = String(raw['metrics'] ?? 'off');
  const skew = raw['max-skew'];
  if (typeof skew !== 'number' || !(skew > 0)) throw new ConfigError('--max-skew must be above 0');
  return {
    repeaters,
    local,
    deliver,
    channelKey,
    bind,
    advertise,
    subscribeIntervalMs: interval * 1000,
    repairDeletes: raw['repair-deletes'] !== false,
    sendQueue: count(raw, 'send-queue', 1),
    recvBuffer: count(raw, 'recv-buffer', 0, MAX_SOCKET_BUFFER),
    sendBuffer: count(raw, 'send-buffer', 0, MAX_SOCKET_BUFFER),
    maxDatagram: count(raw, 'max-datagram', 4, 65535),
    keyFiles,
    maxSkewMs: skew * 1000,
    metrics: metricsText === 'off' ? null : endpointOption('metrics', metricsText, true),
    logLevel: logLevel as LogLevel,
    logFormat: logFormat as LogFormat,
  };
}
