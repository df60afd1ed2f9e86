// Static outputs (--to): subscribers no announce adds or removes. A reload
// adds the new ones and removes the ones gone (or changed: form, TTL); one
// whose outlet cannot be opened now (no free port, too many open files) or
// was evicted is tried again at every sweep. Static outputs are checked at
// apply time never to be our own listeners (that would loop).

import { ConfigError, describe } from '../base/errors.js';
import type { Logger } from '../base/log.js';
import type { ServeConfig } from '../config/serve-config.js';
import type { OwnAddresses } from '../net/local.js';
import type { Channel } from '../path/channel.js';

/** Refuses a config whose static outputs reach our own listeners, or are no unicast address (multicast is asked for). */
export function checkStatics(next: ServeConfig, own: OwnAddresses): void {
  for (const s of next.statics) {
    const problem = own.problem(s.endpoint);
    if (problem === 'own_listener') throw new ConfigError(`--to ${s.endpoint.text} reaches one of our own listeners: that would loop`);
    if (problem === 'not_unicast' && !s.multicast) throw new ConfigError(`--to ${s.endpoint.text} is a broadcast or unspecified address`);
  }
}

/** Removes the static entries a new config no longer has (as they were), then adds what is missing. */
export function applyStatics(next: ServeConfig, channels: Iterable<Channel>, log: Logger): void {
  const list = [...channels];
  for (const ch of list) {
    const want = next.statics.filter((s) => s.channel === null || s.channel === ch.name);
    const wantKey = new Set(want.map((s) => `${s.endpoint.text}/${s.sealed ? 'sealed' : 'plain'}/${s.ttl}`));
    for (const r of [ch.plain, ch.sealed]) {
      r.removeWhere((e) => e.isStatic && !wantKey.has(`${e.endpoint.text}/${e.form}/${ch.staticTtl.get(e.endpoint.text) ?? next.multicastTtl}`));
    }
    ch.staticTtl.clear();
    for (const s of want) ch.staticTtl.set(s.endpoint.text, s.ttl);
  }
  ensureStatics(next, list, log);
}

/**
 * Adds every configured static output that is missing: at apply time, and
 * again on each sweep for those whose outlet could not be opened or was
 * evicted.
 */
export function ensureStatics(config: ServeConfig, channels: Iterable<Channel>, log: Logger): void {
  const now = Date.now();
  for (const ch of channels) {
    for (const s of config.statics) {
      if (s.channel !== null && s.channel !== ch.name) continue;
      const registry = ch.registry(s.sealed ? 'sealed' : 'plain');
      const e = registry.get(s.endpoint.text);
      if (e !== undefined && e.isStatic) continue;
      try {
        registry.addStatic(s.endpoint, now, s.sealed ? (s.key ?? ch.key ?? ch.name) : '');
      } catch (err) {
        log.throttle('error', `static:${s.endpoint.text}`, 'cannot open a socket for a static output; retrying', { channel: ch.name, address: s.endpoint.text, error: describe(err) }, 60_000);
      }
    }
  }
}
