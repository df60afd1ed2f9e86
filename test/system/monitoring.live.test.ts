// The mixin in monitoring/ against a real repeater, agent and Prometheus, all
// on loopback: every dashboard query, recording rule and alert expression
// must return data from real scrapes (a typo in a metric or label name
// returns nothing, silently, in production), and alerts we provoke must go
// pending. The daemons are driven only through the CLI and HTTP. The
// repeater runs in cluster mode with a peer over a real NATS server, so the
// cluster rules and panels are checked too (skipped loudly without
// nats-server).

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Daemon, runCli } from '../helpers/daemon.js';
import { NATS_HINT, NatsCluster, natsAvailability } from '../helpers/nats.js';
import { eventually, freePort, Receiver, Sender } from '../helpers/net.js';
import { type AlertRule, installed, loadRules, MONITORING, Prometheus, type Sample } from '../helpers/prometheus.js';
import { requirement } from '../helpers/requirement.js';

const prometheusBin = requirement(
  'prometheus',
  'monitoring live test (real Prometheus scraping a real repeater)',
  'Dashboard queries, recording rules and alert expressions are not checked against real metrics.',
  installed('prometheus'),
  'install the Debian package "prometheus"',
);

const nats = requirement(
  'nats-server',
  'the cluster part of the monitoring live test',
  'The cluster alerts, recording rules and dashboard panels are not checked against real metrics.',
  natsAvailability(),
  NATS_HINT,
);
/** The repeater's channels. */
const PLAIN = 'plain';
const SEALED = 'sealed';
/** Without nats-server the repeater runs standalone: what reads cluster metrics is left out. */
const clustered = nats.skip === false;
const forMode = (items: Array<[string, string]>): Array<[string, string]> => (clustered ? items : items.filter(([, e]) => !e.includes('udprepeater_cluster_')));

const { alerts } = loadRules(join(MONITORING, 'alerts.yml'));
const { records } = loadRules(join(MONITORING, 'rules.yml'));
const dashboard = JSON.parse(readFileSync(join(MONITORING, 'dashboards', 'udprepeater.json'), 'utf8')) as Dashboard;

/**
 * Each alert's expression with its threshold taken out, as [text, replacement]
 * pairs applied to the expression in alerts.yml: what is left must return
 * series from a healthy system, which proves every name, label and join in it
 * matches real metrics. Every alert must be listed; every text must occur.
 */
const WITHOUT_THRESHOLD: Record<string, Array<[string, string]>> = {
  UdprepeaterDown: [[' == 0', '']],
  UdprepeaterTargetMissing: [['absent(up{job="udprepeater"})', 'up{job="udprepeater"}']],
  UdprepeaterNotForwarding: [[' > 0', ''], [' == 0', '']],
  UdprepeaterDatagramsDropped: [[' > 0', '']],
  UdprepeaterKernelDrops: [[' > 0', '']],
  UdprepeaterSubscribersSuspended: [[' > 0', '']],
  UdprepeaterKeyMismatch: [[' > 0', '']],
  UdprepeaterReloadFailed: [[' == 0', '']],
  UdprepeaterStateSavesFailing: [[' > 0', '']],
  UdprepeaterAgentDown: [[' == 0', '']],
  UdprepeaterAgentKeyMismatch: [[' > 0', '']],
  UdprepeaterAgentNotReceiving: [[' == 0', ''], [' > 0', '']],
  UdprepeaterAgentDatagramsDropped: [[' > 0', '']],
  UdprepeaterClusterBusDown: [[' == 0', '']],
  UdprepeaterClusterBusFlapping: [[' > 3', '']],
  UdprepeaterClusterPeerLost: [['  < on (job) group_left ()', '  - on (job) group_left ()'], [' == 1', '']],
  UdprepeaterClusterSplit: [[' == 1', ''], [') > 0', ')']],
  UdprepeaterClusterBusRejects: [[' > 0', '']],
  UdprepeaterClusterMessagesDropped: [[' > 0', '']],
  UdprepeaterClusterFailover: [[' > 0', '']],
  UdprepeaterTicketKeysStuck: [
    [' > on (job, instance) udprepeater_ticket_rotate_seconds{job="udprepeater"} + 60', ' - on (job, instance) udprepeater_ticket_rotate_seconds{job="udprepeater"}'],
    [' < 0 and', ' and'],
    ['{job="udprepeater"} > 0)', '{job="udprepeater"})'],
  ],
  UdprepeaterTicketKeySavesFailing: [[' > 0', '']],
  UdprepeaterAgentTicketFilesFailing: [['> 0', '']],
  UdprepeaterAgentHaproxyKeysBehind: [[' == 0', '']],
};

interface Target {
  expr: string;
  datasource?: { uid?: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { uid?: string };
  targets?: Target[];
  panels?: Panel[];
}
interface Variable {
  name: string;
  type: string;
  query: string | { query: string };
}
interface Dashboard {
  schemaVersion: number;
  panels: Panel[];
  templating: { list: Variable[] };
}

const allPanels = (ps: Panel[]): Panel[] => ps.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);

/** Escapes a label value the way Grafana interpolates one into a regex matcher. */
const regexValue = (v: string) => v.replace(/[.*+?^${}()|[\]\\]/g, '\\\\$&');

/** Replaces $var and ${var} from `vars`; an unknown variable is an error. */
function substitute(expr: string, vars: Record<string, string>): string {
  return expr.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a: string | undefined, b: string | undefined) => {
    const name = (a ?? b)!;
    const v = vars[name];
    if (v === undefined) throw new Error(`unknown dashboard variable $${name} in ${expr}`);
    return v;
  });
}

function withoutThreshold(a: AlertRule): string {
  const edits = WITHOUT_THRESHOLD[a.name];
  if (edits === undefined) throw new Error(`${a.name}: add it to WITHOUT_THRESHOLD`);
  let expr = a.expr;
  for (const [from, to] of edits) {
    if (!expr.includes(from)) throw new Error(`${a.name}: "${from}" is not in its expression any more; update WITHOUT_THRESHOLD`);
    expr = expr.split(from).join(to);
  }
  if (/(==|!=|>=|<=|>|<)\s*-?[\d.]|absent\(/.test(expr)) throw new Error(`${a.name}: a threshold is left in ${expr}`);
  return expr;
}

describe('monitoring against a live repeater, agent and Prometheus', { skip: prometheusBin.skip, timeout: 45_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'udprepeater-monitoring-'));
  const sender = Sender.open();
  const cleanup: Array<() => unknown> = [];
  let traffic: NodeJS.Timeout | undefined;
  let prom: Prometheus;
  let vars: Record<string, string>;
  let listen = 0;
  let sealed = 0;
  let dead = 0;
  let repeaterInstance = '';
  let peerInstance = '';

  after(async () => {
    clearInterval(traffic);
    for (const c of cleanup.reverse()) await c();
    sender.close();
    rmSync(dir, { recursive: true, force: true });
  });

  before(async () => {
    prometheusBin.require();
    const [ka, kb, kc] = [join(dir, 'ka'), join(dir, 'kb'), join(dir, 'kc')];
    for (const k of await Promise.all([ka, kb, kc].map((f) => runCli(['keygen', f])))) assert.equal(k.code, 0, k.stderr);
    [listen, sealed, dead] = await Promise.all([freePort(), freePort(), freePort()]);
    const agentLocal = await freePort();
    const node = await Receiver.open();
    cleanup.push(() => node.close());

    // Cluster mode: the repeater and a peer with the same cluster key (kc) on
    // one NATS server. The peer's only channel has another name, so the
    // datagrams the repeater publishes are not deliverable there (drops by
    // design), and a third repeater on the same cluster name seals the bus
    // with kb, a key the cluster does not hold: its messages are rejected.
    let bus: string[] = [];
    if (clustered) {
      nats.require();
      const server = await NatsCluster.start(1, 'monitoring');
      cleanup.push(() => server.close());
      bus = ['--cluster', server.urls[0]!, '--cluster-name', 'monitoring', '--cluster-key-file', kc];
    }

    // The repeater opens with ka only; the agent seals with kb, so its
    // announces (and the updates it seals) are a key mismatch by design.
    // Channels are named, as cluster mode requires.
    const repeater = await Daemon.serve([
      '--listen', `127.0.0.1:${listen},channel=${PLAIN}`,
      '--listen-sealed', `127.0.0.1:${sealed},channel=${SEALED}`,
      '--key-file', ka,
      '--metrics', '127.0.0.1:0',
      '--state-dir', join(dir, 'state'),
      '--dead-retry', '0.5',
      ...bus,
    ]);
    cleanup.push(() => repeater.stop());
    repeaterInstance = `127.0.0.1:${await repeater.metricsPort()}`;
    const targets = [repeaterInstance];
    if (clustered) {
      const [peerPort, roguePort] = await Promise.all([freePort(), freePort()]);
      const peer = await Daemon.serve(['--listen', `127.0.0.1:${peerPort},channel=other`, '--metrics', '127.0.0.1:0', ...bus]);
      cleanup.push(() => peer.stop());
      const rogue = await Daemon.serve(['--listen', `127.0.0.1:${roguePort},channel=${PLAIN}`, '--metrics', 'off', ...bus.slice(0, -1), kb]);
      cleanup.push(() => rogue.stop());
      await Promise.all([repeater, peer, rogue].map((d) => d.log.waitFor('cluster bus connected')));
      await Promise.all([repeater, peer].map((d) => d.log.waitFor('cluster peer joined')));
      peerInstance = `127.0.0.1:${await peer.metricsPort()}`;
      targets.push(peerInstance);
    }
    const agent = Daemon.spawn([
      'agent',
      '--repeater', `127.0.0.1:${sealed}`,
      '--local', `127.0.0.1:${agentLocal}`,
      '--deliver', node.address,
      '--channel-key', 'ssl',
      '--key-file', kb,
      '--subscribe-interval', '0.5',
      // An HAProxy socket with nobody behind it: out of sync by design.
      '--ticket-key-dir', join(dir, 'tickets'),
      '--haproxy-socket', join(dir, 'no-haproxy.sock'),
      '--metrics', '127.0.0.1:0',
      '--log-format', 'json',
    ]);
    cleanup.push(() => agent.stop());
    await agent.log.waitFor('udprepeater agent running');
    const [rport, aport] = await Promise.all([repeater.metricsPort(), agent.metricsPort()]);

    const config = join(dir, 'prometheus.yml');
    // JSON is YAML: no quoting questions for the paths.
    writeFileSync(
      config,
      JSON.stringify({
        global: { scrape_interval: '1s', scrape_timeout: '1s', evaluation_interval: '1s' },
        rule_files: [join(MONITORING, 'rules.yml'), join(MONITORING, 'alerts.yml')],
        scrape_configs: [
          { job_name: 'udprepeater', static_configs: [{ targets }] },
          { job_name: 'udprepeater-agent', static_configs: [{ targets: [`127.0.0.1:${aport}`] }] },
        ],
      }),
    );
    prom = await Prometheus.start(config, dir);
    cleanup.push(() => prom.stop());
    // Counters must have a sample from before the traffic, or their first
    // increase is invisible to rate() and increase().
    await eventually('a successful scrape of every daemon', async () => ((await prom.query('up == 1')).length === targets.length + 1 ? true : undefined), 10_000);

    // One real cache set, as the CLI builds it, replayed by the test.
    const capture = await Receiver.open();
    cleanup.push(() => capture.close());
    const sent = await runCli(['send', capture.address, 'set', 'monitoring', 'value']);
    assert.equal(sent.code, 0, sent.stderr);
    const set = await capture.next();

    // A live subscriber, and one at a port nobody listens on: it draws ICMP
    // errors, is suspended, resumed after --dead-retry, suspended again.
    const live = await Receiver.open();
    cleanup.push(() => live.close());
    const deadAddress = `127.0.0.1:${dead}`;
    for (const address of [live.address, deadAddress]) {
      const r = await runCli(['subscribe', `127.0.0.1:${listen}`, '--key', 'ssl', '--address', address]);
      assert.equal(r.code, 0, r.stderr);
      await repeater.log.waitFor('subscribed', { address });
    }

    // Steady traffic while Prometheus watches: sets (forwarded), garbage
    // (dropped), and sets through the agent (sealed under the unknown key).
    const garbage = Buffer.from('not a uwsgi datagram');
    const ignore = () => undefined;
    traffic = setInterval(() => {
      sender.send(set, listen).catch(ignore);
      sender.send(garbage, listen).catch(ignore);
      sender.send(set, agentLocal).catch(ignore);
    }, 50);
    await live.waitFor(3);
    await repeater.log.waitFor('subscriber suspended: unreachable', { address: deadAddress });

    // What Grafana would put in the variables, read back from Prometheus.
    vars = { __rate_interval: '1m', job: 'udprepeater', agent_job: 'udprepeater-agent' };
    vars['instance'] = regexValue(`127.0.0.1:${rport}`);
    vars['agent_instance'] = regexValue(`127.0.0.1:${aport}`);
    vars['channel'] = regexValue(PLAIN);
  });

  /** Runs `exprs` until each returned a series, or the deadline; returns those that never did. */
  async function empty(exprs: Array<[string, string]>, ms = 10_000): Promise<string[]> {
    const deadline = Date.now() + ms;
    let left = exprs;
    for (;;) {
      const results = await Promise.all(left.map(async ([what, e]) => [what, e, await prom.query(e)] as const));
      left = results.filter(([, , r]) => r.length === 0).map(([what, e]) => [what, e]);
      if (left.length === 0 || Date.now() > deadline) return left.map(([what, e]) => `${what}: ${e}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  test('Prometheus loaded every rule and evaluates each without error', async () => {
    type Rule = { name: string; type: string; health: string; lastError?: string };
    const rules = await eventually(
      'every rule evaluated',
      async () => {
        const groups = await prom.api<{ groups: Array<{ rules: Rule[] }> }>('/api/v1/rules');
        const all = groups.groups.flatMap((g) => g.rules);
        const bad = all.filter((r) => r.health === 'err');
        if (bad.length > 0) throw new Error(`rules failing: ${bad.map((r) => `${r.name}: ${r.lastError}`).join('; ')}`);
        return all.every((r) => r.health === 'ok') ? all : undefined;
      },
      10_000,
    );
    const names = (type: string) => rules.filter((r) => r.type === type).map((r) => r.name).sort();
    assert.deepEqual(names('alerting'), alerts.map((a) => a.name).sort());
    assert.deepEqual(names('recording'), records.map((r) => r.name).sort());
  });

  test('every recording rule expression returns data', async () => {
    assert.deepEqual(await empty(forMode(records.map((r) => [r.name, r.expr]))), []);
  });

  test('every alert expression returns data once its threshold is removed', async () => {
    assert.deepEqual(Object.keys(WITHOUT_THRESHOLD).sort(), alerts.map((a) => a.name).sort(), 'WITHOUT_THRESHOLD must list exactly the alerts');
    assert.deepEqual(await empty(forMode(alerts.map((a) => [a.name, withoutThreshold(a)]))), []);
  });

  test('the dashboard: datasource variable, template queries, and every panel query returns data', async () => {
    assert.ok(dashboard.schemaVersion >= 36, `schemaVersion ${dashboard.schemaVersion}`);
    const list = dashboard.templating.list;
    assert.ok(list.some((v) => v.name === 'datasource' && v.type === 'datasource'), 'a datasource variable');
    const panels = allPanels(dashboard.panels);
    assert.equal(new Set(panels.map((p) => p.id)).size, panels.length, 'panel ids are unique');

    // Template variables: label_values(selector, label) must find the value
    // we substitute below.
    for (const v of list.filter((x) => x.type === 'query')) {
      const q = typeof v.query === 'string' ? v.query : v.query.query;
      const m = /^label_values\((.+),\s*(\w+)\)$/.exec(q);
      assert.ok(m, `${v.name}: ${q}`);
      const values = new Set((await prom.query(substitute(m[1]!, vars))).map((s: Sample) => s.metric[m[2]!]));
      const want = vars[v.name]!.replace(/\\\\/g, '');
      assert.ok(values.has(want), `$${v.name}: ${q} gave ${[...values].join(', ')}, not ${want}`);
    }

    const queries: Array<[string, string]> = [];
    for (const p of panels.filter((x) => x.type !== 'row')) {
      assert.equal(p.datasource?.uid, '${datasource}', `${p.title}: panel datasource`);
      assert.ok((p.targets ?? []).length > 0, `${p.title}: no targets`);
      for (const t of p.targets!) {
        assert.equal(t.datasource?.uid, '${datasource}', `${p.title}: target datasource`);
        queries.push([p.title, substitute(t.expr, vars)]);
      }
    }
    assert.deepEqual(await empty(forMode(queries)), []);
  });

  test('label values the rules and dashboard name exist in the daemons output', async () => {
    // A renamed reason or event would otherwise leave a matcher that never
    // matches. Only literal alternatives are checked, not regexes.
    const exprs = [...alerts.map((a) => a.expr), ...records.map((r) => r.expr), ...allPanels(dashboard.panels).flatMap((p) => (p.targets ?? []).map((t) => t.expr))];
    const named = new Set<string>();
    for (const e of exprs) {
      for (const m of e.matchAll(/\b(reason|event|kind|result|role|channel)\s*(?:=|!=|=~|!~)\s*"([a-z_|]+)"/g)) {
        for (const v of m[2]!.split('|')) named.add(`${m[1]}=${v}`);
      }
    }
    const exposed = new Set<string>();
    for (const s of await prom.query('{__name__=~"udprepeater_.+"}')) {
      for (const [k, v] of Object.entries(s.metric)) exposed.add(`${k}=${v}`);
    }
    assert.ok(named.size > 10, `matchers found: ${[...named].join(' ')}`);
    assert.deepEqual([...named].filter((n) => !exposed.has(n)), []);
  });

  test('provoked problems raise their alerts (pending or firing)', async () => {
    const want: Record<string, (l: Record<string, string>) => boolean> = {
      // The garbage datagrams.
      UdprepeaterDatagramsDropped: (l) => l['channel'] === PLAIN && !['no_subscribers', 'unknown_key', 'auth_failed'].includes(l['reason']!),
      // The agent's frames, sealed under a key the repeater does not have.
      UdprepeaterKeyMismatch: (l) => l['channel'] === SEALED && l['reason'] === 'unknown_key',
      // The subscriber at a dead port.
      UdprepeaterSubscribersSuspended: (l) => l['channel'] === PLAIN,
      // The agent's --haproxy-socket with no HAProxy behind it.
      UdprepeaterAgentHaproxyKeysBehind: (l) => l['socket'] === join(dir, 'no-haproxy.sock'),
      ...(clustered
        ? {
            // The third repeater's messages, sealed under kb.
            UdprepeaterClusterBusRejects: (l: Record<string, string>) => l['instance'] === repeaterInstance && l['reason'] === 'unknown_key',
            // The repeater's datagrams, for a channel the peer does not have.
            UdprepeaterClusterMessagesDropped: (l: Record<string, string>) => l['instance'] === peerInstance && l['reason'] === 'not_deliverable',
          }
        : {}),
    };
    const seen = await eventually(
      `alerts ${Object.keys(want).join(', ')}`,
      async () => {
        const active = await prom.alerts();
        const ok = Object.entries(want).every(([name, match]) => active.some((a) => a.labels['alertname'] === name && match(a.labels)));
        return ok ? active : undefined;
      },
      15_000,
    );
    for (const a of seen.filter((x) => x.labels['alertname']! in want)) assert.match(a.state, /^(pending|firing)$/);
    // Nothing we did should look like a dead daemon, a lost bus or a
    // partitioned cluster: the repeater and its peer hear each other.
    assert.deepEqual(seen.filter((a) => /Down$|TargetMissing$|ClusterPeerLost$|ClusterSplit$/.test(a.labels['alertname']!)), []);
  });
});
