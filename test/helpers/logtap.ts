// Captures structured log lines (in-process Logger sink or a child's stderr)
// and lets tests await a specific line: the daemon's own events are the
// synchronisation points, never sleeps.

import { Logger } from '../../src/base/log.js';
import { WAIT_MS } from './net.js';

export type Record = { msg: string; level: string } & { [k: string]: unknown };

export class LogTap {
  readonly records: Record[] = [];
  private waiters: Array<() => void> = [];
  private partial = '';

  /** A Logger at debug level writing into this tap. */
  logger(): Logger {
    return new Logger('debug', 'json', { write: (line: string) => this.feed(line) });
  }

  feed(chunk: string): void {
    const text = this.partial + chunk;
    const lines = text.split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) {
      if (line.trim() === '') continue;
      try {
        this.records.push(JSON.parse(line) as Record);
      } catch {
        this.records.push({ msg: line, level: 'raw' });
      }
    }
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Records matching `msg` and every given field, from index `from` on. */
  matching(msg: string, fields: { [k: string]: unknown } = {}, from = 0): Record[] {
    return this.records.slice(from).filter((r) => r.msg === msg && Object.entries(fields).every(([k, v]) => r[k] === v));
  }

  /** Waits for the `count`-th line matching msg/fields (counting from `from`). */
  async waitFor(msg: string, fields: { [k: string]: unknown } = {}, opts: { count?: number; from?: number; ms?: number } = {}): Promise<Record> {
    const count = opts.count ?? 1;
    const deadline = Date.now() + (opts.ms ?? WAIT_MS);
    for (;;) {
      const m = this.matching(msg, fields, opts.from ?? 0);
      if (m.length >= count) return m[count - 1]!;
      const left = deadline - Date.now();
      if (left <= 0) {
        const tail = this.records.slice(-8).map((r) => JSON.stringify(r)).join('\n  ');
        throw new Error(`no log line "${msg}" ${JSON.stringify(fields)} within ${opts.ms ?? WAIT_MS} ms; last lines:\n  ${tail}`);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Resolves with the first value `check` returns other than undefined, re-checked on every new line. */
  async until<T>(what: string, check: () => T | undefined, ms = WAIT_MS): Promise<T> {
    const deadline = Date.now() + ms;
    for (;;) {
      const v = check();
      if (v !== undefined) return v;
      const left = deadline - Date.now();
      if (left <= 0) {
        const tail = this.records.slice(-8).map((r) => JSON.stringify(r)).join('\n  ');
        throw new Error(`timed out after ${ms} ms waiting for ${what}; last lines:\n  ${tail}`);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  get length(): number {
    return this.records.length;
  }
}
