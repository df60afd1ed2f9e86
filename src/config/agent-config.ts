// The typed, validated config of `udprepeater agent`.

import { ConfigError } from '../base/errors.js';
import { type Endpoint, isLoopback } from '../wire/address.js';
import { type CommonSettings, commonSettings, endpointOption, list, need, num, str } from './checks.js';
import type { RawOptions } from './options.js';

export interface AgentConfig extends CommonSettings {
  readonly repeaters: readonly Endpoint[];
  readonly local: Endpoint;
  readonly deliver: Endpoint;
  readonly channelKey: string;
  /** Address of the socket that talks to the repeaters. */
  readonly bind: Endpoint;
  /** Where the repeaters should send (named in every subscription); null: worked out per repeater. */
  readonly advertise: string | null;
  readonly subscribeIntervalMs: number;
  readonly repairDeletes: boolean;
}

export function buildAgentConfig(raw: RawOptions): AgentConfig {
  const common = commonSettings(raw);
  const repeaters = list(raw, 'repeater').map((t) => endpointOption('repeater', t));
  if (repeaters.length === 0) throw new ConfigError('agent needs at least one --repeater', 'repeater');
  if (new Set(repeaters.map((r) => r.family)).size > 1) throw new ConfigError('--repeater addresses must all be IPv4 or all IPv6');
  // Plain datagrams never leave the host: both plain sides must be loopback.
  const local = endpointOption('local', need(raw, 'local', 'agent'), true);
  if (!isLoopback(local.host)) throw new ConfigError(`--local ${local.text} must be a loopback address: plain traffic never leaves the host`);
  const deliver = endpointOption('deliver', need(raw, 'deliver', 'agent'));
  if (!isLoopback(deliver.host)) throw new ConfigError(`--deliver ${deliver.text} must be a loopback address: plain traffic never leaves the host`);
  if (deliver.text === local.text) throw new ConfigError(`--deliver ${deliver.text} is --local: the agent would send the node's updates to itself`);
  const channelKey = need(raw, 'channel-key', 'agent');
  if (channelKey.length > 255) throw new ConfigError('--channel-key is longer than 255 bytes');
  const family = repeaters[0]!.family;
  const bind = endpointOption('bind', str(raw, 'bind') ?? (family === 6 ? '[::]:0' : '0.0.0.0:0'), true);
  if (bind.family !== family) throw new ConfigError(`--bind ${bind.text} is not IPv${family} like the repeaters`);
  const advertiseText = str(raw, 'advertise');
  const advertise = advertiseText === undefined ? null : endpointOption('advertise', advertiseText).text;
  if (common.keyFiles.length === 0) throw new ConfigError('agent needs at least one --key-file', 'key-file');
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
  };
}
