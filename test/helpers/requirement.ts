// Suites that need something from the machine (uWSGI, tcpdump, root) skip
// loudly when it is missing, and fail instead under CI, which sets
// UDPREPEATER_REQUIRE_UWSGI=1.

export const REQUIRED = process.env['UDPREPEATER_REQUIRE_UWSGI'] === '1';

export type Availability = { ok: true } | { ok: false; reason: string };

export interface Requirement {
  readonly avail: Availability;
  /** The skip reason for node:test, or false when the suite runs. */
  readonly skip: string | false;
  /** Throws when the requirement is missing (call it where a required suite starts). */
  require(): void;
}

/**
 * @param label short name used in skip reasons
 * @param suite what is skipped, for the banner
 * @param lost what goes untested, for the banner
 * @param banner false to decide without printing (a caller combining reasons prints once)
 */
export function requirement(label: string, suite: string, lost: string, avail: Availability, hint: string, banner = true): Requirement {
  const skip: string | false = !avail.ok && !REQUIRED ? `${label}: ${avail.reason}` : false;
  if (skip && banner) {
    const bar = '!'.repeat(78);
    process.stderr.write(
      `\n${bar}\n!! SKIPPED: ${suite}.\n!! ${avail.ok ? '' : avail.reason}\n!! ${lost}\n!! ${hint}\n` +
        `!! (set UDPREPEATER_REQUIRE_UWSGI=1 to make this a failure instead)\n${bar}\n\n`,
    );
  }
  return {
    avail,
    skip,
    require() {
      if (!avail.ok) throw new Error(`UDPREPEATER_REQUIRE_UWSGI=1 but ${avail.reason}; ${hint}`);
    },
  };
}
