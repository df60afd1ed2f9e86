// `udprepeater status`, `subscribers` and `peers`: read a running repeater's
// or agent's status port (--metrics HOST:PORT) and print what it says
// (tools/status-format.ts), or the JSON as it came with --json.
//
// Invariants:
// - Bounded: the whole command gives up after --timeout, and an answer larger
//   than MAX_BODY is refused; nothing waits on the network without a limit.
// - The exit code says what went wrong: EX_UNAVAILABLE when nothing usable
//   answers (refused, unreachable, silent, a connection closed unanswered:
//   also what a status server at its connection cap does), EX_PROTOCOL when
//   something answers that is not a udprepeater status server.

import { request } from 'node:http';
import { ConfigError } from '../base/errors.js';
import { parseEndpoint } from '../wire/address.js';
import { clean, type DaemonKind, formatIdentities, formatPeers, formatStatus, formatSubscribers, identify, peersJson, type Snapshot, statusJson } from './status-format.js';

/** sysexits.h */
export const EX_USAGE = 64;
export const EX_UNAVAILABLE = 69;
export const EX_PROTOCOL = 76;

/** Largest answer read: /subscribers of a full repeater is a few MiB. */
export const MAX_BODY = 64 * 1024 * 1024;

/** A failure with the exit code the command ends with. */
export class StatusError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

export interface StatusTarget {
  readonly host: string;
  readonly port: number;
  /** As given, for messages. */
  readonly text: string;
}

/** HOST:PORT or [V6]:PORT; HOST may also be a name (localhost). */
export function parseTarget(text: string): StatusTarget {
  const ep = parseEndpoint(text);
  if (typeof ep !== 'string') return { host: ep.host, port: ep.port, text };
  const named = /^([A-Za-z0-9][A-Za-z0-9.-]{0,252}):([0-9]{1,5})$/.exec(text);
  if (named !== null && Number(named[2]) >= 1 && Number(named[2]) <= 65535) return { host: named[1]!, port: Number(named[2]), text };
  throw new ConfigError(`--metrics ${ep}`, 'metrics');
}

export interface StatusOptions {
  readonly json: boolean;
  readonly timeoutMs: number;
}

interface Answer {
  readonly status: number;
  readonly type: string;
  readonly body: string;
}

const UNREACHABLE = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EADDRNOTAVAIL', 'ETIMEDOUT', 'ECONNRESET', 'EPIPE']);

function hint(t: StatusTarget): string {
  return `is a repeater or agent running with --metrics ${t.text}? Give its status address with --metrics HOST:PORT`;
}

/** The whole command's time: every request ends by `deadline`. */
interface Budget {
  readonly deadline: number;
  readonly ms: number;
}

function get(t: StatusTarget, path: string, budget: Budget): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const fail = (err: Error & { code?: string }) => {
      clearTimeout(timer);
      req.destroy();
      if (err instanceof StatusError) reject(err);
      else if (err.code !== undefined && UNREACHABLE.has(err.code)) {
        const why = err.code === 'ECONNRESET' || err.code === 'EPIPE' ? 'closed the connection without answering' : `does not answer (${err.code})`;
        reject(new StatusError(`${t.text} ${why}; ${hint(t)}`, EX_UNAVAILABLE));
      } else if (err.code?.startsWith('HPE_') === true) reject(new StatusError(`${t.text} answers, but not in HTTP (GET ${path}: ${err.message}); it is not a udprepeater status server`, EX_PROTOCOL));
      else reject(new StatusError(`${t.text}: GET ${path} failed: ${err.message}`, EX_UNAVAILABLE));
    };
    const req = request({ host: t.host, port: t.port, path, method: 'GET', agent: false, headers: { accept: 'application/json, text/plain' } }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (d: Buffer) => {
        size += d.length;
        if (size > MAX_BODY) fail(new StatusError(`${t.text} sent more than ${MAX_BODY} bytes for GET ${path}; it is not a udprepeater status server`, EX_PROTOCOL));
        else chunks.push(d);
      });
      res.on('error', fail);
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body: Buffer.concat(chunks).toString('utf8') });
      });
    });
    const timer = setTimeout(
      () => fail(new StatusError(`${t.text} did not answer GET ${path} within ${budget.ms / 1000} s (--timeout); ${hint(t)}`, EX_UNAVAILABLE)),
      Math.max(0, budget.deadline - Date.now()),
    );
    req.on('error', fail);
    req.end();
  });
}

function notUs(t: StatusTarget, path: string, why: string): StatusError {
  return new StatusError(`${t.text} answers, but not as a udprepeater status server (GET ${path}: ${why}); give a repeater's or agent's status address with --metrics HOST:PORT`, EX_PROTOCOL);
}

async function getJson(t: StatusTarget, path: string, budget: Budget): Promise<unknown> {
  const a = await get(t, path, budget);
  if (a.status !== 200) throw notUs(t, path, `HTTP ${a.status}`);
  if (!a.type.startsWith('application/json')) throw notUs(t, path, `content type "${clean(a.type)}", not JSON`);
  try {
    return JSON.parse(a.body) as unknown;
  } catch {
    throw notUs(t, path, 'not JSON');
  }
}

/** Reads /healthz (which tells a repeater from an agent) and what `want` asks besides. */
export async function readSnapshot(t: StatusTarget, timeoutMs: number, want: { subscribers?: boolean; metrics?: boolean }): Promise<Snapshot> {
  const budget = { deadline: Date.now() + timeoutMs, ms: timeoutMs };
  const health = await getJson(t, '/healthz', budget);
  const kind: DaemonKind | null = identify(health);
  if (kind === null) throw notUs(t, '/healthz', 'JSON that is not a repeater\'s or an agent\'s health');
  let subscribers: unknown[] | null = null;
  if (want.subscribers === true && kind === 'repeater') {
    const s = await getJson(t, '/subscribers', budget);
    if (!Array.isArray(s)) throw notUs(t, '/subscribers', 'not a list');
    subscribers = s;
  }
  let metrics: string | null = null;
  if (want.metrics === true) {
    const m = await get(t, '/metrics', budget);
    if (m.status !== 200 || !m.type.startsWith('text/plain')) throw notUs(t, '/metrics', m.status !== 200 ? `HTTP ${m.status}` : `content type "${clean(m.type)}"`);
    metrics = m.body;
  }
  return { address: t.text, kind, health: health as Record<string, unknown>, subscribers, metrics };
}

const print = (text: string) => process.stdout.write(text);
const json = (v: unknown) => print(JSON.stringify(v, null, 2) + '\n');

export async function statusCommand(t: StatusTarget, o: StatusOptions): Promise<void> {
  const s = await readSnapshot(t, o.timeoutMs, { subscribers: true, metrics: true });
  if (o.json) json(statusJson(s));
  else print(formatStatus(s));
}

export async function subscribersCommand(t: StatusTarget, o: StatusOptions): Promise<void> {
  const s = await readSnapshot(t, o.timeoutMs, { subscribers: true });
  if (s.kind === 'agent') {
    throw new StatusError(
      `${t.text} is an agent (channel key ${clean(s.health['channelKey'])}): agents keep no subscriber list; ` +
        `give a repeater's status address with --metrics HOST:PORT (udprepeater peers lists this agent's repeaters)`,
      EX_USAGE,
    );
  }
  if (o.json) json(s.subscribers);
  else print(formatSubscribers(s.subscribers ?? []));
}

export async function peersCommand(t: StatusTarget, o: StatusOptions): Promise<void> {
  const s = await readSnapshot(t, o.timeoutMs, {});
  if (o.json) json(peersJson(s.kind, s.health));
  else print(formatIdentities(s.kind, s.health) + formatPeers(s.kind, s.health));
}
