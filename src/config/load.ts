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
 * Layers and validates options with `build`. An error about an option set in
 * the config file names the file and the line; one about a flag says so.
 */
export function loadConfig<T>(inv: Invocation, specs: readonly OptionSpec[], build: (raw: RawOptions, explicit: ReadonlySet<string>) => T): T {
  const file = inv.configFile === null ? null : readConfigFile(inv.configFile, specs);
  const values = file?.values ?? {};
  const raw = layerOptions(defaultsOf(specs), values, inv.cli);
  const explicit = new Set([...Object.keys(values), ...Object.keys(inv.cli)]);
  try {
    return build(raw, explicit);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw new ConfigError(describe(err));
    if (inv.configFile === null) throw err;
    // The option at fault: the one the error names, else the first the message mentions that the file (not a flag) set.
    const mentioned = [...(err.option === undefined ? [] : [err.option]), ...[...err.message.matchAll(/--([a-z][a-z-]*)/g)].map((m) => m[1]!)];
    const named = mentioned.find((o) => inv.cli[o] === undefined && file?.lines.has(o));
    const line = named === undefined ? undefined : file?.lines.get(named);
    if (line !== undefined) throw new ConfigError(`${inv.configFile}:${line}: ${err.message}`);
    throw new ConfigError(`${inv.configFile} (with flags): ${err.message}`);
  }
}
