// Which sealed listeners speak identities and which the shared key
// (README, "Moving a fleet from the shared key to identities").
//
// Invariants:
// - A listener is in one mode only: its frames are judged by the link door
//   or by the key ring, never both (path/in-door.ts picks by the listener).
// - With --identity alone every sealed listener links agents by identity;
//   with the shared key alone none does. Both at once is the migration's
//   middle step, and only where each identity listener says so
//   (`--listen-sealed ADDR,identity`): the shared key never silently stops
//   serving a listener its agents still use.

import { ConfigError } from '../base/errors.js';
import type { CommonSettings } from './checks.js';
import type { Endpoint } from '../wire/address.js';

/** A listener as config/serve-config.ts builds it (not imported: serve-config imports this file). */
interface Listener {
  readonly endpoint: Endpoint;
  readonly sealed: boolean;
  readonly linked?: boolean;
}

export function sealedModes<L extends Listener>(all: readonly L[], common: CommonSettings): L[] {
  const marked = all.find((l) => l.linked === true);
  if (marked !== undefined && common.identity === null) {
    throw new ConfigError(`--listen-sealed ${marked.endpoint.text},identity needs --identity and --peers`, 'listen-sealed');
  }
  const keys = common.keyFiles.length > 0;
  if (common.identity !== null && keys && marked === undefined) {
    throw new ConfigError(
      '--identity and --key-file/--key-dir: give one; or, to move a fleet from the shared key to identities, both, with `identity` on the listeners agents link to by identity (--listen-sealed ADDR,identity)',
      'identity',
    );
  }
  const identityOnly = common.identity !== null && !keys;
  return all.map((l) => ({ ...l, linked: l.sealed && (identityOnly || l.linked === true) }));
}
