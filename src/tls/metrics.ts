// The session cache's numbers for a prom-client registry, read on scrape.

import type { Registry } from 'prom-client';
import { counterFrom, gaugeFrom } from '../base/prom.js';
import type { SessionCache } from './session-cache.js';

/** Registers the cache's metrics (names start with `prefix`) in `registry`. */
export function registerSessionCacheMetrics(registry: Registry, cache: SessionCache, prefix = 'udprepeater_tls_session_cache'): void {
  const s = cache.stats;
  counterFrom(registry, `${prefix}_lookups_total`, 'resumeSession lookups, by result (hit, miss)', ['result'], () => [
    [{ result: 'hit' }, s.hits],
    [{ result: 'miss' }, s.misses],
  ]);
  counterFrom(registry, `${prefix}_stored_total`, 'Sessions our servers created, stored and published', [], () => [[{}, s.stored]]);
  counterFrom(registry, `${prefix}_applied_total`, 'Cache sets and deletes from the repeater applied', [], () => [[{}, s.applied]]);
  counterFrom(registry, `${prefix}_dropped_total`, 'Datagrams from the repeater refused, by reason', ['reason'], () => Object.entries(s.dropped).map(([reason, n]) => [{ reason }, n] as const));
  counterFrom(registry, `${prefix}_evictions_total`, 'Entries evicted to stay within the bounds', [], () => [[{}, cache.evictions]]);
  counterFrom(registry, `${prefix}_ticket_key_changes_total`, 'Fleet ticket keys loaded into the servers', [], () => [[{}, s.ticketKeyChanges]]);
  gaugeFrom(registry, `${prefix}_entries`, 'Entries held', [], () => [[{}, cache.size]]);
  gaugeFrom(registry, `${prefix}_ticket_keys`, 'Fleet ticket keys held', [], () => [[{}, cache.ticketKeys().length]]);
}
