// Metrics of the live state and warm joins (README.md, "Warm join"), read
// from the repeater's own numbers on scrape.

import type { Registry } from 'prom-client';
import type { Repeater } from '../repeater/repeater.js';
import { counterFrom, gaugeFrom } from './metrics.js';

export function registerWarmMetrics(register: Registry, r: Repeater): void {
  const each = <T>(f: (name: string) => T) => [...r.channels.keys()].map(f);
  gaugeFrom(register, 'udprepeater_live_state_entries', 'Keys in the live state (the latest set of each), per channel', ['channel'], () =>
    each((channel) => [{ channel }, r.warm.state(channel)?.size ?? 0] as const),
  );
  gaugeFrom(register, 'udprepeater_live_state_bytes', 'Bytes the live state holds, as --state-max-bytes counts them', ['channel'], () =>
    each((channel) => [{ channel }, r.warm.state(channel)?.bytes ?? 0] as const),
  );
  counterFrom(register, 'udprepeater_live_state_evictions_total', 'Live-state entries evicted (oldest first) to stay under --state-max-bytes', ['channel'], () =>
    each((channel) => [{ channel }, (r.warm.statsOf(channel)?.evicted ?? 0) + (r.warm.state(channel)?.evictions ?? 0)] as const),
  );
  counterFrom(register, 'udprepeater_live_state_expired_total', 'Live-state entries dropped when the expiry they carried passed', ['channel'], () =>
    each((channel) => [{ channel }, (r.warm.statsOf(channel)?.expired ?? 0) + (r.warm.state(channel)?.expired ?? 0)] as const),
  );
  counterFrom(
    register,
    'udprepeater_warm_joins_total',
    'Warm joins, by event: started, resumed (of those started: went on from what their address was sent within --warm-cooldown), repair and takeover (of those started, cluster mode: a subscriber taken over from another repeater was sent what changed since it was last heard, or the whole join it never completed), completed, ended (before the end: subscriber gone or replaced), restarted (sent again what a closed port lost), refused (no join: the subscription did not come from its address, or too many destinations)',
    ['channel', 'event'],
    () =>
      each((channel) => {
        const s = r.warm.statsOf(channel);
        return [
          [{ channel, event: 'started' }, s?.started ?? 0],
          [{ channel, event: 'resumed' }, s?.resumed ?? 0],
          [{ channel, event: 'repair' }, s?.repairs ?? 0],
          [{ channel, event: 'takeover' }, s?.takeovers ?? 0],
          [{ channel, event: 'completed' }, s?.completed ?? 0],
          [{ channel, event: 'ended' }, s?.ended ?? 0],
          [{ channel, event: 'restarted' }, s?.restarted ?? 0],
          [{ channel, event: 'refused' }, s?.refused ?? 0],
        ] as const;
      }).flat(),
  );
  gaugeFrom(register, 'udprepeater_warm_joins_active', 'Warm joins in progress', ['channel'], () => each((channel) => [{ channel }, r.warm.activeIn(channel)] as const));
  counterFrom(register, 'udprepeater_warm_datagrams_total', 'Datagrams sent by warm joins (not counted in udprepeater_datagrams_forwarded_total)', ['channel'], () =>
    each((channel) => [{ channel }, r.warm.statsOf(channel)?.datagrams ?? 0] as const),
  );
  counterFrom(register, 'udprepeater_warm_bytes_total', 'Bytes sent by warm joins', ['channel'], () => each((channel) => [{ channel }, r.warm.statsOf(channel)?.bytes ?? 0] as const));
  gaugeFrom(register, 'udprepeater_warm_destinations', 'Plain subscriber addresses (channel and IP) within their --warm-cooldown: each is sent one live state at most per cooldown', [], () => [[{}, r.warm.destinations.size]]);
}
