// Prometheus metrics via prom-client. The datagram path only bumps plain
// numbers (see base/stats.ts); everything here runs on scrape.

import { collectDefaultMetrics, type Metric, Registry } from 'prom-client';
import { counterFrom, gaugeFrom } from '../base/prom.js';
import { type ChannelStats, DROP_REASONS, EVENTS, type FastHistogram, KINDS } from '../base/stats.js';
import { socketInode, udpSocketStats } from '../net/kernel.js';
import type { Cluster } from '../cluster/cluster.js';
import type { Repeater } from '../repeater/repeater.js';

export { counterFrom, gaugeFrom };

export interface ChannelView {
  readonly name: string;
  readonly stats: ChannelStats;
  readonly subscribers: number;
  /** Subscribers taken out of service for being unreachable (repeater only). */
  readonly suspended?: number;
}

/** Exposes a FastHistogram in the Prometheus histogram shape. */
export function histogramFrom(register: Registry, name: string, help: string, h: FastHistogram): void {
  const metric = {
    name,
    help,
    type: 'histogram',
    aggregator: 'sum',
    get: async () => {
      const values: Array<{ labels: Record<string, string | number>; value: number; metricName: string }> = [];
      let cumulative = 0;
      h.bounds.forEach((le, i) => {
        cumulative += h.counts[i]!;
        values.push({ labels: { le }, value: cumulative, metricName: `${name}_bucket` });
      });
      values.push({ labels: { le: '+Inf' }, value: h.count, metricName: `${name}_bucket` });
      values.push({ labels: {}, value: h.sum, metricName: `${name}_sum` });
      values.push({ labels: {}, value: h.count, metricName: `${name}_count` });
      return { name, help, type: 'histogram', aggregator: 'sum', values };
    },
    reset: () => undefined,
  };
  register.registerMetric(metric as unknown as Metric);
}

function* perChannel<T>(channels: () => Iterable<ChannelView>, f: (c: ChannelView) => Iterable<T>): Iterable<T> {
  for (const c of channels()) yield* f(c);
}

/**
 * The datagram-path metrics shared by the repeater and the agent (the agent
 * presents its directions as channels). `prefix` is `udprepeater` or
 * `udprepeater_agent`.
 */
export function registerChannelMetrics(register: Registry, prefix: string, channels: () => Iterable<ChannelView>, fanout: FastHistogram): void {
  counterFrom(register, `${prefix}_datagrams_received_total`, 'Datagrams received, by what their header says', ['channel', 'kind'], () =>
    perChannel(channels, (c) => KINDS.map((kind, i) => [{ channel: c.name, kind }, c.stats.received[i]!] as const)),
  );
  counterFrom(register, `${prefix}_datagrams_accepted_total`, 'Input datagrams that passed every check and were fanned out (forwarded / accepted = copies per datagram)', ['channel'], () =>
    perChannel(channels, (c) => [[{ channel: c.name }, c.stats.accepted] as const]),
  );
  counterFrom(register, `${prefix}_datagrams_forwarded_total`, 'Output datagrams handed to the kernel (one per subscriber per accepted datagram)', ['channel'], () =>
    perChannel(channels, (c) => [[{ channel: c.name }, c.stats.forwarded] as const]),
  );
  counterFrom(
    register,
    `${prefix}_datagrams_dropped_total`,
    'Datagrams not forwarded, by reason (queue_full and send_error count output copies)',
    ['channel', 'reason'],
    () => perChannel(channels, (c) => DROP_REASONS.map((reason, i) => [{ channel: c.name, reason }, c.stats.dropped[i]!] as const)),
  );
  counterFrom(register, `${prefix}_bytes_received_total`, 'Bytes received', ['channel'], () =>
    perChannel(channels, (c) => [[{ channel: c.name }, c.stats.bytesReceived] as const]),
  );
  counterFrom(register, `${prefix}_bytes_forwarded_total`, 'Bytes sent in output datagrams', ['channel'], () =>
    perChannel(channels, (c) => [[{ channel: c.name }, c.stats.bytesForwarded] as const]),
  );
  histogramFrom(register, `${prefix}_fanout_seconds`, 'Time from receiving a datagram to handing its last copy to the kernel', fanout);
}

export function registerSubscriptionMetrics(register: Registry, channels: () => Iterable<ChannelView>): void {
  gaugeFrom(register, 'udprepeater_subscribers', 'Current subscribers (dynamic and static, suspended included)', ['channel'], () =>
    perChannel(channels, (c) => [[{ channel: c.name }, c.subscribers] as const]),
  );
  gaugeFrom(register, 'udprepeater_subscribers_suspended', 'Subscribers suspended now for answering with ICMP unreachable', ['channel'], () =>
    perChannel(channels, (c) => [[{ channel: c.name }, c.suspended ?? 0] as const]),
  );
  counterFrom(register, 'udprepeater_subscription_events_total', 'Subscription events', ['channel', 'event'], () =>
    perChannel(channels, (c) => EVENTS.map((event, i) => [{ channel: c.name, event }, c.stats.events[i]!] as const)),
  );
}

/** Reload outcomes and build info, common to both daemons. */
export class OpsMetrics {
  reloadsOk = 0;
  reloadsFailed = 0;
  lastReloadOk = 1;
  lastReloadTime = Date.now() / 1000;

  constructor(register: Registry, prefix: string, version: string) {
    counterFrom(register, `${prefix}_config_reloads_total`, 'Config reloads (SIGHUP), by result', ['result'], () => [
      [{ result: 'ok' }, this.reloadsOk],
      [{ result: 'error' }, this.reloadsFailed],
    ]);
    gaugeFrom(register, `${prefix}_config_last_reload_successful`, '1 when the last reload was applied', [], () => [[{}, this.lastReloadOk]]);
    gaugeFrom(register, `${prefix}_config_last_reload_timestamp_seconds`, 'When the config was last (re)loaded', [], () => [[{}, this.lastReloadTime]]);
    gaugeFrom(register, `${prefix}_build_info`, 'Version of the running build', ['version'], () => [[{ version }, 1]]);
  }

  reloaded(ok: boolean): void {
    if (ok) this.reloadsOk++;
    else this.reloadsFailed++;
    this.lastReloadOk = ok ? 1 : 0;
    if (ok) this.lastReloadTime = Date.now() / 1000;
  }
}

export function newRegistry(): Registry {
  const register = new Registry();
  collectDefaultMetrics({ register });
  return register;
}

/** Secure mode's key ring size: one sealing key, every key opens. */
export function registerKeyMetrics(register: Registry, name: string, ids: () => readonly string[]): void {
  gaugeFrom(register, name, 'Keys in the ring, by role', ['role'], () => {
    const n = ids().length;
    return [
      [{ role: 'sealing' }, n > 0 ? 1 : 0],
      [{ role: 'opening' }, n],
    ];
  });
}

/** Kernel-side drops and queue depth of each listener socket, read on scrape. */
export function registerListenerKernelMetrics(register: Registry, listeners: () => Array<{ address: string; fd: number | null }>): void {
  const read = () => {
    const stats = udpSocketStats();
    return listeners().map((l) => {
      const ino = l.fd === null ? null : socketInode(l.fd);
      return { address: l.address, s: ino === null ? undefined : stats.get(ino) };
    });
  };
  counterFrom(register, 'udprepeater_listener_kernel_drops_total', 'Datagrams the kernel dropped at a listener before the repeater read them (receive buffer full)', ['listener'], () =>
    read().flatMap((l) => (l.s === undefined ? [] : [[{ listener: l.address }, l.s.drops] as const])),
  );
  gaugeFrom(register, 'udprepeater_listener_receive_queue_bytes', 'Bytes waiting in a listener socket', ['listener'], () =>
    read().flatMap((l) => (l.s === undefined ? [] : [[{ listener: l.address }, l.s.rxQueue] as const])),
  );
}

/** Cluster mode: the bus, the peers, and who serves what. */
export function registerClusterMetrics(register: Registry, cluster: Cluster, repeater: Repeater): void {
  const c = cluster.counters;
  gaugeFrom(register, 'udprepeater_cluster_info', 'Always 1: the cluster this repeater belongs to and its id on the bus', ['cluster', 'id'], () => [[{ cluster: cluster.clusterName, id: cluster.id.toString(16) }, 1]]);
  gaugeFrom(register, 'udprepeater_cluster_connected', '1 while connected to a NATS server of the bus', [], () => [[{}, cluster.bus.connected ? 1 : 0]]);
  gaugeFrom(register, 'udprepeater_cluster_peers', 'Other repeaters of the cluster heard within the peer timeout', [], () => [[{}, cluster.livePeers().length]]);
  gaugeFrom(register, 'udprepeater_cluster_owned_subscribers', 'Subscribers this repeater serves', [], () => [[{}, cluster.ownedSubscribers()]]);
  counterFrom(register, 'udprepeater_cluster_messages_published_total', 'Bus messages published, by kind', ['kind'], () => [...c.published].map(([kind, v]) => [{ kind }, v] as const));
  counterFrom(register, 'udprepeater_cluster_messages_received_total', 'Bus messages received from other repeaters, by kind', ['kind'], () => [...c.received].map(([kind, v]) => [{ kind }, v] as const));
  counterFrom(register, 'udprepeater_cluster_datagrams_published_total', 'Datagrams published on the bus, whatever the batching (messages_published counts bus messages)', [], () => [[{}, c.datagramsPublished]]);
  counterFrom(register, 'udprepeater_cluster_datagrams_received_total', 'Datagrams taken off the bus from other repeaters, whatever the batching (not_deliverable ones included)', [], () => [[{}, c.datagramsReceived]]);
  counterFrom(register, 'udprepeater_cluster_messages_dropped_total', 'Bus messages dropped, by reason', ['reason'], () => [...c.dropped].map(([reason, v]) => [{ reason }, v] as const));
  counterFrom(register, 'udprepeater_cluster_publish_skipped_total', 'Datagrams not published because the bus was down', [], () => [[{}, c.publishSkipped]]);
  counterFrom(register, 'udprepeater_cluster_duplicates_total', 'Updates that came in a second time through another repeater, delivered once', [], () => [[{}, repeater.clusterDuplicates]]);
  counterFrom(register, 'udprepeater_cluster_failovers_total', 'Subscribers this repeater took over from a repeater that died', [], () => [[{}, c.failovers]]);
  counterFrom(register, 'udprepeater_cluster_disconnects_total', 'Times the bus connection was lost', [], () => [[{}, cluster.bus.disconnects]]);
  const f = cluster.stateFetch;
  const a = cluster.stateAnswers;
  counterFrom(register, 'udprepeater_cluster_state_fetches_total', "Fetches of the cluster's live state at start, by result (complete, no_peer, bus_down, timeout, incomplete, declined, overflow)", ['result'], () => [...f.results].map(([result, v]) => [{ result }, v] as const));
  counterFrom(register, 'udprepeater_cluster_state_entries_received_total', 'Live-state entries fetched from a peer, by what they did (set; live_newer: the live path had a newer value; others refused)', ['outcome'], () => [...f.entries].map(([outcome, v]) => [{ outcome }, v] as const));
  gaugeFrom(register, 'udprepeater_cluster_state_fetch_seconds', 'How long the fetch at start took, or has taken so far', [], () => [[{}, (f.describe()['ms'] as number) / 1000]]);
  counterFrom(register, 'udprepeater_cluster_state_answers_total', 'Requests for our live state from starting peers, by result (complete, declined, failed, replaced)', ['result'], () => [...a.results].map(([result, v]) => [{ result }, v] as const));
  counterFrom(register, 'udprepeater_cluster_state_entries_sent_total', 'Live-state entries sent to starting peers', [], () => [[{}, a.entriesSent]]);
  counterFrom(register, 'udprepeater_cluster_state_entries_too_large_total', 'Live-state entries left out of answers: too large for a sealed chunk', [], () => [[{}, a.entriesTooLarge]]);
}
