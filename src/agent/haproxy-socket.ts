// Keeps one running HAProxy holding the fleet's ticket keys through its
// runtime API (--haproxy-socket), without a reload: read the ring
// (`show tls-keys FILE`), push what it lacks (`set ssl tls-key FILE KEY`).
//
// Invariants:
// - One exchange at a time per socket; a change during one queues one more,
//   which reads the ring again. The plan is made from the keys wanted at the
//   moment the ring was read, never from older ones.
// - The ring is read again at every change and every --haproxy-check-interval,
//   so an HAProxy that was down, restarted or changed by someone else is
//   caught up; a socket that is missing or refuses is never fatal.
// - The pushes of one plan are sent back to back. Between two of them
//   HAProxy may encrypt for an instant with the previous key, which every
//   server still decrypts; after the last, it holds the ring wanted.
// - Every read and push is counted by result, failures are logged throttled
//   (a rejected key as an error: it will not go away by itself).

import { describe } from '../base/errors.js';
import type { Logger } from '../base/log.js';
import { haproxyCommand } from './haproxy-cli.js';
import { answerText, parseRing, planPushes, pushAccepted } from './haproxy-keys.js';

export interface HaproxySocketOptions {
  /** The `tls-ticket-keys` file as HAProxy names it: the ring's reference. */
  readonly keysFile: string;
  readonly checkMs: number;
  readonly timeoutMs: number;
}

export type Failure = 'refused' | 'rejected' | 'timeout';

export class HaproxySocket {
  /** `show tls-keys` reads: current (held the ring wanted), behind (needed pushes), or failed. */
  readonly checks = { current: 0, behind: 0, refused: 0, rejected: 0, timeout: 0 };
  /** `set ssl tls-key` commands by outcome. */
  readonly pushes = { ok: 0, rejected: 0, refused: 0, timeout: 0 };
  /** The last exchange left HAProxy holding the ring wanted. */
  inSync = false;
  lastError: string | null = null;
  lastCheckMs = 0;
  private wanted: Buffer[] | null = null;
  /** The encrypting key's id, for logs. */
  private encrypting = '';
  private running = false;
  private pending = false;
  private closed = false;
  private readonly timer: NodeJS.Timeout;

  constructor(
    readonly path: string,
    private readonly opts: HaproxySocketOptions,
    private readonly log: Logger,
  ) {
    this.timer = setInterval(() => void this.sync(), opts.checkMs);
    this.timer.unref();
  }

  /** The ring HAProxy should hold (base64 lines, taken over: zeroed when replaced). */
  want(lines: Buffer[], encrypting: string): void {
    if (this.closed) {
      for (const l of lines) l.fill(0);
      return;
    }
    const old = this.wanted;
    if (old !== null && old.length === lines.length && old.every((l, i) => l.equals(lines[i]!))) {
      for (const l of lines) l.fill(0);
      return;
    }
    this.wanted = lines;
    this.encrypting = encrypting;
    for (const l of old ?? []) l.fill(0);
    void this.sync();
  }

  private async sync(): Promise<void> {
    if (this.closed || this.wanted === null) return;
    if (this.running) {
      this.pending = true;
      return;
    }
    this.running = true;
    try {
      do {
        this.pending = false;
        await this.exchange();
      } while (this.pending && !this.closed);
    } catch (err) {
      // A bug, not HAProxy's answer: never let it escape a timer.
      this.fail('check', 'rejected', `internal error: ${describe(err)}`);
    } finally {
      this.running = false;
    }
  }

  private command(...parts: Array<string | Buffer>): Buffer {
    return Buffer.concat([...parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : p)), Buffer.from('\n')]);
  }

  private async exchange(): Promise<void> {
    const ref = this.opts.keysFile;
    const shown = await haproxyCommand(this.path, this.command('show tls-keys ', ref), this.opts.timeoutMs);
    this.lastCheckMs = Date.now();
    if ('failure' in shown) return this.fail('check', shown.failure, shown.error);
    const ring = parseRing(shown.answer);
    shown.answer.fill(0);
    if (typeof ring === 'string') return this.fail('check', 'rejected', ring);
    if (this.closed || this.wanted === null) {
      for (const l of ring) l.fill(0);
      return;
    }
    const plan = planPushes(ring, this.wanted).map((l) => Buffer.from(l));
    for (const l of ring) l.fill(0);
    if (plan.length === 0) {
      this.checks.current++;
      this.succeeded(0);
      return;
    }
    this.checks.behind++;
    try {
      for (const key of plan) {
        const cmd = this.command('set ssl tls-key ', ref, ' ', key);
        const r = await haproxyCommand(this.path, cmd, this.opts.timeoutMs);
        cmd.fill(0);
        if ('failure' in r) return this.fail('push', r.failure, r.error);
        const ok = pushAccepted(r.answer);
        const text = answerText(r.answer);
        r.answer.fill(0);
        if (!ok) return this.fail('push', 'rejected', text);
        this.pushes.ok++;
      }
    } finally {
      for (const l of plan) l.fill(0);
    }
    this.succeeded(plan.length);
  }

  private succeeded(pushed: number): void {
    const was = this.inSync;
    this.inSync = true;
    this.lastError = null;
    if (pushed > 0) this.log.info('haproxy ticket keys pushed', { socket: this.path, pushed, encrypting: this.encrypting });
    else if (!was) this.log.info('haproxy holds the ticket keys', { socket: this.path, encrypting: this.encrypting });
  }

  private fail(what: 'check' | 'push', result: Failure, error: string): void {
    if (what === 'check') this.checks[result]++;
    else this.pushes[result]++;
    this.inSync = false;
    this.lastError = `${what} ${result}: ${error}`;
    const fields = { socket: this.path, result, error, retry: `at the next change or within ${this.opts.checkMs / 1000} s` };
    if (result === 'rejected') this.log.throttle('error', `haproxy:${this.path}:${result}`, 'haproxy refused the ticket keys', fields, 60_000);
    else this.log.throttle('warn', `haproxy:${this.path}:${result}`, 'cannot reach haproxy to hand it the ticket keys', fields, 60_000);
  }

  status(): { socket: string; inSync: boolean; lastCheck: string | null; lastError: string | null } {
    return { socket: this.path, inSync: this.inSync, lastCheck: this.lastCheckMs > 0 ? new Date(this.lastCheckMs).toISOString() : null, lastError: this.lastError };
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    for (const l of this.wanted ?? []) l.fill(0);
    this.wanted = null;
  }
}
