// The small typed set of errors the daemon reports to operators.

/** A config, flag, or key file problem. The message names the source. */
export class ConfigError extends Error {
  /**
   * @param option the option at fault (long name), when the message alone
   *   does not say it first: a config file error then names its line.
   */
  constructor(
    message: string,
    readonly option?: string,
  ) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** Formats any thrown value for a log line or a refusal message. */
export function describe(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
