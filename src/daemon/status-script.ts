// The status page's script (served as /status.js; the page is status-page.ts).
//
// Invariants:
// - Every string shown came from the network (subscription keys, refused
//   addresses, peer names): it reaches the page only through textContent and
//   createElement, never innerHTML or an attribute; the page's CSP allows no
//   inline script either, so a slip would still not run.
// - It reads only what the JSON views and /metrics already say, and renders a
//   field (identity, served by) only when the JSON carries it.
// - Bounded: one request at a time, a refresh every PERIOD_MS at most (backing
//   off to MAX_WAIT_MS while it fails), none while the tab is hidden or
//   paused, each request given up after TIMEOUT_MS (below the status
//   server's request timeout), and at most MAX_ROWS rows per table.
//
// Written as plain browser JavaScript (no build step); String.raw keeps its
// backslashes. The Prometheus text reader is the command line's own
// (wire/prom-text.ts), embedded from its compiled source.

import { promSamples } from '../wire/prom-text.js';

export const STATUS_JS = String.raw`'use strict';
(function () {
  var PERIOD_MS = 5000, MAX_WAIT_MS = 60000, TIMEOUT_MS = 4000, MAX_ROWS = 500, MIN_MANUAL_MS = 1000;
  var promSamples = ${promSamples.toString()};
  var paused = false, busy = false, failures = 0, timer = null, lastStart = 0;

  function $(id) { return document.getElementById(id); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function arr(v) { return Array.isArray(v) ? v : []; }
  function obj(v) { return v !== null && typeof v === 'object' && !Array.isArray(v) ? v : {}; }
  function num(v) { return typeof v === 'number' && isFinite(v) ? v : 0; }
  function str(v) { return v === null || v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v); }
  function when(v) { return typeof v === 'string' ? v.replace('T', ' ').replace(/\.\d+Z$/, 'Z') : ''; }
  function yes(v) { return v === true ? 'yes' : v === false ? 'no' : str(v); }
  function duration(s) {
    s = Math.max(0, Math.round(num(s)));
    var d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + (d || h || m ? m + 'm ' : '') + (s % 60) + 's';
  }
  function has(rows, field) { return rows.some(function (r) { return obj(r)[field] !== undefined; }); }

  function section(title, parts) {
    var s = el('section');
    s.appendChild(el('h2', title));
    parts.forEach(function (p) { if (p) s.appendChild(p); });
    return s;
  }
  function pairs(list) {
    var dl = el('dl');
    list.forEach(function (p) {
      if (p === null) return;
      dl.appendChild(el('dt', p[0]));
      dl.appendChild(el('dd', str(p[1])));
    });
    return dl;
  }
  // cols: [title, row -> value, optional class]; rows beyond MAX_ROWS are counted, not drawn.
  function table(cols, rows, empty) {
    if (rows.length === 0) return el('p', empty || 'none', 'empty');
    var wrap = el('div', null, 'scroll'), t = el('table'), head = el('tr');
    cols.forEach(function (c) { head.appendChild(el('th', c[0], c[2])); });
    t.appendChild(el('thead')).appendChild(head);
    var body = t.appendChild(el('tbody'));
    rows.slice(0, MAX_ROWS).forEach(function (r) {
      var tr = el('tr');
      cols.forEach(function (c) { tr.appendChild(el('td', str(c[1](obj(r))), c[2])); });
      body.appendChild(tr);
    });
    wrap.appendChild(t);
    if (rows.length > MAX_ROWS) wrap.appendChild(el('p', 'showing the first ' + MAX_ROWS + ' of ' + rows.length, 'note'));
    return wrap;
  }
  // Sums of one metric's samples, keyed by the joined values of some labels.
  function sums(samples, name, by) {
    var out = new Map();
    samples.forEach(function (s) {
      if (s.name !== name) return;
      var k = by.map(function (l) { return s.labels[l] || ''; }).join('\u0000');
      out.set(k, (out.get(k) || 0) + s.value);
    });
    return out;
  }

  function get(path, json) {
    var ctl = new AbortController();
    var t = setTimeout(function () { ctl.abort(); }, TIMEOUT_MS);
    return fetch(path, { cache: 'no-store', credentials: 'omit', signal: ctl.signal })
      .then(function (res) {
        if (!res.ok) throw new Error(path + ' answered HTTP ' + res.status);
        return json ? res.json() : res.text();
      })
      .catch(function (e) { throw new Error(ctl.signal.aborted ? path + ' did not answer within ' + TIMEOUT_MS / 1000 + ' s' : String(e && e.message || e)); })
      .finally(function () { clearTimeout(t); });
  }

  function keySections(h) {
    var keys = arr(h.keys).map(str);
    var parts = [el('p', keys.length ? 'key ids: ' + keys.join(', ') : 'no key ring (secure mode off)')];
    if (h.ticketKeys !== undefined) {
      parts.push(el('h3', 'TLS ticket-key schedule'));
      parts.push(table([['id', function (k) { return k.id; }], ['not before', function (k) { return when(k.notBefore); }],
        ['not after', function (k) { return when(k.notAfter); }], ['encrypting', function (k) { return k.encrypting ? 'yes' : ''; }]], arr(h.ticketKeys), 'no ticket keys yet'));
    }
    return section('Keys', parts);
  }

  function dropSection(samples, prefix) {
    var rows = [];
    sums(samples, prefix + '_datagrams_dropped_total', ['reason', 'channel']).forEach(function (v, k) {
      var p = k.split('\u0000');
      if (v > 0) rows.push({ reason: p[0], where: p[1], count: v });
    });
    sums(samples, 'udprepeater_cluster_messages_dropped_total', ['reason']).forEach(function (v, k) {
      if (v > 0) rows.push({ reason: k, where: 'cluster bus', count: v });
    });
    rows.sort(function (a, b) { return b.count - a.count; });
    return section('Drops by reason', [table([['reason', function (r) { return r.reason; }], ['where', function (r) { return r.where; }],
      ['count', function (r) { return r.count; }, 'n']], rows, 'nothing dropped')]);
  }

  function channelTable(samples, prefix, names, extra) {
    var acc = sums(samples, prefix + '_datagrams_accepted_total', ['channel']);
    var fwd = sums(samples, prefix + '_datagrams_forwarded_total', ['channel']);
    var rcv = sums(samples, prefix + '_datagrams_received_total', ['channel']);
    var drop = sums(samples, prefix + '_datagrams_dropped_total', ['channel']);
    acc.forEach(function (_v, k) { if (names.indexOf(k) < 0) names.push(k); });
    var cols = [['channel', function (c) { return c.name; }]].concat(extra, [
      ['received', function (c) { return rcv.get(c.name) || 0; }, 'n'], ['accepted', function (c) { return acc.get(c.name) || 0; }, 'n'],
      ['forwarded', function (c) { return fwd.get(c.name) || 0; }, 'n'], ['dropped', function (c) { return drop.get(c.name) || 0; }, 'n']]);
    return table(cols, names.map(function (n) { return { name: n }; }), 'no channels');
  }

  function repeaterView(h, subs, refusals, samples) {
    var listeners = arr(h.listeners), cluster = h.cluster === undefined ? null : obj(h.cluster);
    var names = [];
    listeners.forEach(function (l) { var c = str(obj(l).channel); if (names.indexOf(c) < 0) names.push(c); });
    var count = sums(samples, 'udprepeater_subscribers', ['channel']), susp = sums(samples, 'udprepeater_subscribers_suspended', ['channel']);
    var warm = sums(samples, 'udprepeater_warm_joins_active', ['channel']);
    var out = [];
    out.push(section('Overview', [pairs([['daemon', 'repeater'], ['version', h.version], ['status', h.status], ['uptime', duration(h.uptimeSeconds)],
      ['channels', h.channels], ['subscribers', subs.length], cluster ? ['cluster', str(cluster.name) + (cluster.connected ? ', connected' : ', bus down')] : null])]));
    out.push(section('Listeners', [table([['address', function (l) { return l.address; }], ['bound', function (l) { return l.bound; }],
      ['channel', function (l) { return l.channel; }], ['form', function (l) { return l.sealed ? (l.identity ? 'sealed, by identity' : 'sealed') : 'plain'; }],
      ['receive buffer', function (l) { return l.recvBuffer; }, 'n']], listeners, 'no listeners')]));
    out.push(section('Channels', [channelTable(samples, 'udprepeater', names, [['subscribers', function (c) { return count.get(c.name) || 0; }, 'n'],
      ['suspended', function (c) { return susp.get(c.name) || 0; }, 'n'], ['warm joins', function (c) { return warm.get(c.name) || 0; }, 'n']])]));
    var cols = [['channel', function (s) { return s.channel; }], ['address', function (s) { return s.address; }], ['key', function (s) { return s.key; }],
      ['form', function (s) { return s.form + (s.static ? ' (static)' : ''); }]];
    if (has(subs, 'identity')) cols.push(['identity', function (s) { return s.identity; }]);
    cols.push(['source', function (s) { return s.source; }], ['last seen', function (s) { return when(s.lastSeen); }], ['expires', function (s) { return when(s.expires); }],
      ['datagrams', function (s) { return s.datagrams; }, 'n'], ['dropped', function (s) { return s.dropped; }, 'n'], ['errors', function (s) { return s.errors; }, 'n'],
      ['state', function (s) { return s.suspended ? 'suspended until ' + when(s.suspendedUntil) : s.warmJoin ? 'warm join' : 'live'; }]);
    if (has(subs, 'servedBy')) cols.push(['served by', function (s) { return s.servedBy === null ? 'nobody' : s.servedBy; }]);
    out.push(section('Subscribers', [table(cols, subs, 'no subscribers')]));
    var joins = subs.filter(function (s) { return obj(s).warmJoin; });
    out.push(section('Warm joins in progress', [table([['channel', function (s) { return s.channel; }], ['address', function (s) { return s.address; }],
      ['sent', function (s) { return obj(s.warmJoin).sent; }, 'n'], ['skipped', function (s) { return obj(s.warmJoin).skipped; }, 'n'],
      ['dropped', function (s) { return obj(s.warmJoin).dropped; }, 'n'], ['entries', function (s) { return obj(s.warmJoin).total; }, 'n'],
      ['started', function (s) { return when(obj(s.warmJoin).startedAt); }], ['waiting for', function (s) { return obj(s.warmJoin).waiting; }]], joins, 'none')]));
    if (cluster) out.push(clusterSection(cluster, subs));
    var ids = identitySection(h);
    if (ids) out.push(ids);
    out.push(keySections(h));
    out.push(dropSection(samples, 'udprepeater'));
    out.push(section('Recent refused subscriptions', [table([['at', function (r) { return when(r.at); }], ['channel', function (r) { return r.channel; }],
      ['reason', function (r) { return r.reason; }], ['source', function (r) { return r.source; }], ['key', function (r) { return r.key; }],
      ['address', function (r) { return r.address; }]], refusals.slice().reverse(), 'none')]));
    return out;
  }

  // Identity mode: one row per identity the peers file lists (and one removed lately, marked revoked).
  function identitySection(h) {
    if (!h.identity || typeof h.identity !== 'object') return null;
    var id = obj(h.identity), peers = arr(id.peers);
    return section('Identities', [
      pairs([['this host', id.publicKey], ['peers file', id.peersFingerprint], ['linked', id.links]]),
      table([['name', function (p) { return p.name; }], ['role', function (p) { return p.role; }], ['key', function (p) { return str(p.key).slice(0, 16) + '\u2026'; }],
        ['allow', function (p) { return arr(p.allow).length === 0 ? 'any' : arr(p.allow).map(str).join(', '); }],
        ['state', function (p) { return p.revokedUntil ? 'revoked until ' + when(p.revokedUntil) : p.linked ? 'linked' : 'not linked'; }],
        ['last seen', function (p) { return when(p.lastSeen) || 'never'; }],
        ['refused', function (p) { var r = obj(p.refused); return Object.keys(r).map(function (k) { return k + ' ' + num(r[k]); }).join(', ') || '-'; }]], peers, 'no identities listed'),
    ]);
  }

  function clusterSection(c, subs) {
    var peers = arr(c.peers), sf = obj(c.stateFetch);
    var cols = [['name', function (p) { return p.name; }], ['id', function (p) { return p.id; }]];
    if (has(peers, 'identity')) cols.push(['identity', function (p) { return p.identity; }]);
    cols.push(['last heard', function (p) { return (num(p.lastHeardMs) / 1000).toFixed(1) + ' s ago'; }, 'n'], ['subscribers', function (p) { return p.subscribers; }, 'n']);
    var serving = new Map();
    subs.forEach(function (s) { var k = obj(s).servedBy === null ? 'nobody' : str(obj(s).servedBy); serving.set(k, (serving.get(k) || 0) + 1); });
    var whom = [];
    serving.forEach(function (n, k) { whom.push({ by: k, n: n }); });
    return section('Cluster', [
      pairs([['name', c.name], ['this repeater', str(c.node) + ' (id ' + str(c.id) + ')'], ['bus', c.connected ? 'connected to ' + str(c.server) : 'down'],
        ['degraded', yes(c.degraded)], ['serves', c.ownedSubscribers], ['state fetch at start', str(sf.phase) + (sf.result ? ': ' + str(sf.result) : '')],
        ['state answers in progress', c.stateAnswersInProgress]]),
      el('h3', 'Peers'), table(cols, peers, 'no live peers'),
      el('h3', 'Who serves whom'), table([['served by', function (r) { return r.by; }], ['subscribers', function (r) { return r.n; }, 'n']], whom, 'no subscribers'),
    ]);
  }

  function agentView(h, samples) {
    var links = arr(h.links);
    var cols = [['repeater', function (l) { return l.repeater; }], ['advertised as', function (l) { return l.advertise; }]];
    if (has(links, 'identity')) cols.push(['identity', function (l) { return l.identity; }]);
    cols.push(['sent', function (l) { return l.sent; }, 'n'], ['received', function (l) { return l.received; }, 'n'], ['last frame', function (l) { return when(l.lastFrameAt) || 'never'; }]);
    return [
      section('Overview', [pairs([['daemon', 'agent'], ['version', h.version], ['status', h.status], ['channel key', h.channelKey], ['origin', h.origin]])]),
      section('Repeaters', [table(cols, links, 'no repeaters')]),
      section('Directions', [channelTable(samples, 'udprepeater_agent', [], [])]),
    ].concat(identitySection(h) || []).concat([
      keySections(h),
      dropSection(samples, 'udprepeater_agent'),
    ]);
  }

  var METRICS = ['datagrams_received_total', 'datagrams_accepted_total', 'datagrams_forwarded_total', 'datagrams_dropped_total'];
  async function load() {
    var h = obj(await get('healthz', true));
    var agent = Array.isArray(h.links);
    if (!agent && !Array.isArray(h.listeners)) throw new Error('healthz does not look like a udprepeater repeater or agent');
    var subs = agent ? [] : arr(await get('subscribers', true));
    var refusals = agent ? [] : arr(await get('refusals', true));
    var prefix = agent ? 'udprepeater_agent_' : 'udprepeater_';
    var names = METRICS.map(function (m) { return prefix + m; }).concat(['udprepeater_subscribers', 'udprepeater_subscribers_suspended',
      'udprepeater_warm_joins_active', 'udprepeater_cluster_messages_dropped_total']);
    var samples = promSamples(await get('metrics', false), names);
    $('kind').textContent = agent ? 'agent' : 'repeater';
    document.title = 'udprepeater ' + (agent ? 'agent' : 'repeater') + ' ' + location.host;
    $('sections').replaceChildren.apply($('sections'), agent ? agentView(h, samples) : repeaterView(h, subs, refusals, samples));
  }

  function wait() { return failures === 0 ? PERIOD_MS : Math.min(MAX_WAIT_MS, PERIOD_MS * Math.pow(2, failures)); }
  function schedule() {
    clearTimeout(timer);
    timer = null;
    if (!paused && !document.hidden) timer = setTimeout(refresh, wait());
  }
  async function refresh() {
    if (busy) return;
    busy = true;
    lastStart = Date.now();
    $('now').disabled = true;
    try {
      await load();
      failures = 0;
      document.body.dataset.state = 'ok';
      $('error').textContent = '';
      $('updated').textContent = 'updated at ' + new Date().toLocaleTimeString();
    } catch (e) {
      failures++;
      document.body.dataset.state = 'error';
      $('error').textContent = 'refresh failed: ' + String(e && e.message || e) + (paused ? '' : '; next try in ' + wait() / 1000 + ' s');
    } finally {
      busy = false;
      $('now').disabled = false;
      schedule();
    }
  }

  $('pause').addEventListener('click', function () {
    paused = !paused;
    $('pause').textContent = paused ? 'Resume' : 'Pause';
    $('pause').setAttribute('aria-pressed', String(paused));
    if (!paused && Date.now() - lastStart >= PERIOD_MS) refresh();
    else schedule();
  });
  $('now').addEventListener('click', function () { if (Date.now() - lastStart >= MIN_MANUAL_MS) refresh(); });
  document.addEventListener('visibilitychange', function () {
    if (!document.hidden && !paused && !busy && Date.now() - lastStart >= PERIOD_MS) refresh();
    else if (!busy) schedule();
  });
  refresh();
})();
`;
