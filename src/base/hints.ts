// Hints: the likely misconfiguration behind datagrams that are dropped, said
// in a log line and in /healthz instead of only counted. The repeater and
// the agent each define their kinds (path/drop-hints.ts, agent/hints.ts).
//
// Cost and bounds: `note` is called only on drop paths already taken; it
// does one map lookup and a few increments, and logs at most once per source
// per interval. A table holds at most HINT_SOURCES sources per kind; more are
// only counted together, so a flood of spoofed sources buys at most
// HINT_SOURCES + 1 log lines per kind per interval and no memory.

import type { Fields, Logger, LogLevel } from './log.js';

/** Sources remembered per kind; the rest are counted as `others`. */
export const HINT_SOURCES = 64;
/** A source not seen for this long is forgotten (and leaves /healthz). */
export const HINT_FORGET_MS = 10 * 60_000;

export interface HintKind {
  /** Stable name: the `hint` field of the log line and of /healthz. */
  readonly name: string;
  readonly level: LogLevel;
  /** At most one log line per source this often. */
  readonly intervalMs: number;
  /** The field name `where` is given under (e.g. listener). */
  readonly whereName: string;
  /** The likely mistake and its fix, in the operator's words; read at log and view time only. */
  message(): string;
}

interface Entry {
  where: string;
  count: number;
  firstSeen: number;
  lastSeen: number;
  /** Sightings since the last log line. */
  unlogged: number;
  nextLog: number;
}

/** One kind's sightings, as /healthz shows them. */
export interface HintView {
  hint: string;
  message: string;
  /** null for the sources past HINT_SOURCES, counted together. */
  source: string | null;
  count: number;
  firstSeen: string;
  lastSeen: string;
  [where: string]: unknown;
}

export class HintTable {
  private readonly entries = new Map<string, Entry>();
  private readonly others: Entry = { where: '', count: 0, firstSeen: 0, lastSeen: 0, unlogged: 0, nextLog: 0 };
  private nextForget = 0;

  constructor(
    readonly kind: HintKind,
    private readonly log: Logger,
  ) {}

  /** One more sighting of this kind from `source` at `where`. */
  note(source: string, where: string, now = Date.now()): void {
    let e = this.entries.get(source);
    if (e === undefined) {
      if (this.entries.size >= HINT_SOURCES && !this.forgetStale(now)) {
        this.seen(this.others, where, now, null);
        return;
      }
      e = { where, count: 0, firstSeen: now, lastSeen: now, unlogged: 0, nextLog: 0 };
      this.entries.set(source, e);
    }
    this.seen(e, where, now, source);
  }

  /** Forgets a source (its problem went away). */
  forget(source: string): void {
    this.entries.delete(source);
  }

  /** Entries seen within HINT_FORGET_MS, most recent first. */
  view(now = Date.now()): HintView[] {
    const out: HintView[] = [];
    const iso = (ms: number) => new Date(ms).toISOString();
    const message = this.kind.message();
    for (const [source, e] of this.entries) {
      if (e.lastSeen < now - HINT_FORGET_MS) continue;
      out.push({ hint: this.kind.name, message, source, [this.kind.whereName]: e.where, count: e.count, firstSeen: iso(e.firstSeen), lastSeen: iso(e.lastSeen) });
    }
    const o = this.others;
    if (o.count > 0 && o.lastSeen >= now - HINT_FORGET_MS) {
      out.push({ hint: this.kind.name, message, source: null, [this.kind.whereName]: o.where, count: o.count, firstSeen: iso(o.firstSeen), lastSeen: iso(o.lastSeen) });
    }
    return out.sort((a, b) => (a.lastSeen < b.lastSeen ? 1 : a.lastSeen > b.lastSeen ? -1 : 0));
  }

  private seen(e: Entry, where: string, now: number, source: string | null): void {
    if (e.count === 0) e.firstSeen = now;
    e.count++;
    e.lastSeen = now;
    e.where = where;
    if (now < e.nextLog) {
      e.unlogged++;
      return;
    }
    const fields: Fields = { hint: this.kind.name, source: source ?? `(more than ${HINT_SOURCES} sources)`, [this.kind.whereName]: where, count: e.count };
    if (e.unlogged > 0) fields['suppressed'] = e.unlogged;
    this.log.log(this.kind.level, this.kind.message(), fields);
    e.unlogged = 0;
    e.nextLog = now + this.kind.intervalMs;
  }

  /** Drops sources not seen for HINT_FORGET_MS (at most once per interval); true when room was made. */
  private forgetStale(now: number): boolean {
    if (now < this.nextForget) return false;
    this.nextForget = now + this.kind.intervalMs;
    for (const [source, e] of this.entries) if (e.lastSeen < now - HINT_FORGET_MS) this.entries.delete(source);
    return this.entries.size < HINT_SOURCES;
  }
}
