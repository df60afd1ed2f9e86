// Reads a daemon's options: defaults, then the config file, then the flags.

import { layerOptions, readConfigFile } from './config-file.js';
import { ConfigError, describe } from '../base/errors.js';
import { defaultsOf, type OptionSpec, type RawOptions } from './options.js';

export interface Invocation {
  /** Values given on the command line (and only those). */
  readonly cli: RawOptions;
  readonly configFile: string | null;
}

/**
 * Layers and validates options with `build`; errors name the config file
 * when there is one, so an operator knows where to look.
 */
export function loadConfig<T>(inv: Invocation, specs: readonly OptionSpec[], build: (raw: RawOptions, explicit: ReadonlySet<string>) => T): T {
  const file = inv.configFile === null ? {} : readConfigFile(inv.configFile, specs);
  const raw = layerOptions(defaultsOf(specs), file, inv.cli);
  const explicit = new Set([...Object.keys(file), ...Object.keys(inv.cli)]);
  try {
    return build(raw, explicit);
  } catch (err) {
    if (err instanceof ConfigError && inv.configFile !== null) throw new ConfigError(`${inv.configFile} (with flags): ${err.message}`);
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(describe(err));
  }
}
