// Metrics of the agent's HAProxy pushes (--haproxy-socket), one series per socket.

import type { Registry } from 'prom-client';
import { counterFrom, gaugeFrom } from '../base/prom.js';
import type { HaproxyFeed } from '../agent/haproxy.js';

export function registerHaproxyMetrics(register: Registry, feed: () => HaproxyFeed | null): void {
  const sockets = () => feed()?.sockets ?? [];
  gaugeFrom(register, 'udprepeater_agent_haproxy_in_sync', 'Whether the last exchange with each --haproxy-socket left HAProxy holding the ticket keys it should (1) or not (0)', ['socket'], () =>
    sockets().map((s) => [{ socket: s.path }, s.inSync ? 1 : 0] as const),
  );
  counterFrom(register, 'udprepeater_agent_haproxy_checks_total', 'Reads of the ticket keys HAProxy holds (show tls-keys), by result: current, behind (keys were pushed), refused, rejected, timeout', ['socket', 'result'], () =>
    sockets().flatMap((s) => Object.entries(s.checks).map(([result, n]) => [{ socket: s.path, result }, n] as const)),
  );
  counterFrom(register, 'udprepeater_agent_haproxy_pushes_total', 'Ticket keys pushed to HAProxy (set ssl tls-key), by result: ok, rejected (HAProxy refused the key), refused (no connection), timeout', ['socket', 'result'], () =>
    sockets().flatMap((s) => Object.entries(s.pushes).map(([result, n]) => [{ socket: s.path, result }, n] as const)),
  );
}
