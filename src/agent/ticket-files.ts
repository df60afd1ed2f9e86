// The agent's half of the fleet's ticket keys: nginx `ssl_session_ticket_key`
// files, rewritten whenever what nginx should hold changes, then a reload:
// an operator-given command, or (under systemd, where the sandboxed agent may
// not signal nginx) a path unit watching ticket.0.key (README, "TLS session
// resumption").
//
// Invariants:
// - Slot 0 (`ticket.0.key`) is the key that encrypts now: nginx encrypts with
//   the first listed key. Slot 1 is the next key, so tickets another server
//   made with it after switching a moment earlier already decrypt here; the
//   other slots hold the older keys still decrypting, newest first. Unused
//   slots repeat slot 0 (nginx needs every configured file; a repeated key
//   changes nothing).
// - Every file is written whole (temp file, mode 0600, rename); when any
//   slot's bytes change, every slot is written, slot 0 last (a watcher of
//   ticket.0.key, such as the systemd path unit that reloads nginx, sees the
//   whole new set), and all of them before the reload command runs.
// - The write that creates the files (none existed when the agent started)
//   runs no reload command: no server can be using files that did not exist,
//   and one started after the agent reads them (README, "nginx: ticket key
//   files written by the agent").
// - HAProxy gets the same view through agent/haproxy.ts: DIR/haproxy.keys
//   and --haproxy-socket, at every change, whatever the nginx files do.
// - A key past its not_after is in no file after the next rewrite, which
//   happens at that moment by the agent's clock.
// - The reload command runs at most once at a time (a change during a run
//   queues one more run), is killed after its timeout, and its result is
//   logged and counted; it can never block or crash the agent.

import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe } from '../base/errors.js';
import { writeAtomically } from '../base/files.js';
import type { Logger } from '../base/log.js';
import { readTrusted } from '../base/trust.js';
import type { TicketFilesConfig } from '../config/agent-config.js';
import { nginxTicketKey, ticketKeyId, TicketKeys } from '../crypto/ticket-schedule.js';
import type { TicketKey } from '../wire/ticket-codec.js';
import { HaproxyFeed } from './haproxy.js';

/** Output of the reload command kept for the log. */
const OUTPUT_BYTES = 2048;

export function slotFile(dir: string, slot: number): string {
  return join(dir, `ticket.${slot}.key`);
}

export class TicketFiles {
  readonly keys = new TicketKeys();
  writes = 0;
  writeErrors = 0;
  reloads = { ok: 0, failed: 0, timeout: 0 };
  lastWriteMs = 0;
  readonly haproxy: HaproxyFeed;
  private written: Buffer[] = [];
  /** No file existed at start: the first write creates them. */
  private creating: boolean;
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  private pending = false;
  private closed = false;

  constructor(
    private readonly cfg: TicketFilesConfig,
    private readonly log: Logger,
  ) {
    // What is on disk already counts as written: an agent restart rewrites and reloads only on change.
    // The config checked the files are ours; one that is not (a symbolic link, another user's) counts as unwritten.
    for (let i = 0; i < cfg.slots; i++) {
      try {
        this.written.push(readTrusted(slotFile(cfg.dir, i), 'ticket key file', { secret: true }) ?? Buffer.alloc(0));
      } catch {
        this.written.push(Buffer.alloc(0));
      }
    }
    this.creating = this.written.every((w) => w.length === 0);
    this.haproxy = new HaproxyFeed(cfg, log);
  }

  /** A schedule from a repeater (authenticated): merged, and the files follow. */
  receive(keys: readonly TicketKey[]): void {
    const now = Date.now();
    if (this.keys.merge(keys, now)) this.refresh(now);
  }

  /** The files nginx should have now, in slot order (empty until a key encrypts). */
  private slots(now: number): TicketKey[] {
    const v = this.keys.view(now);
    if (v.encrypting === null) return [];
    const order = [v.encrypting, ...(v.next === null ? [] : [v.next]), ...v.older];
    if (order.length > this.cfg.slots) {
      this.log.throttle('warn', 'ticket-slots', 'more ticket keys than --ticket-key-slots: the oldest are left out (raise the slots and add ssl_session_ticket_key lines)', { keys: order.length, slots: this.cfg.slots }, 600_000);
    }
    const out = order.slice(0, this.cfg.slots);
    while (out.length < this.cfg.slots) out.push(v.encrypting);
    return out;
  }

  /** Rewrites what changed, runs the reload command if anything did, and wakes up at the next change. */
  private refresh(now: number): void {
    if (this.closed) return;
    this.keys.prune(now);
    const keys = this.slots(now);
    if (keys.length > 0) {
      const contents = keys.map((k) => nginxTicketKey(k, this.cfg.size));
      if (contents.some((c, i) => !c.equals(this.written[i]!))) {
        try {
          // Slot 0 last, always: its replacement is the commit a systemd path unit watches (systemd/udprepeater-nginx-reload.path).
          for (let i = contents.length - 1; i >= 0; i--) {
            writeAtomically(slotFile(this.cfg.dir, i), contents[i]!);
            this.written[i]?.fill(0);
            this.written[i] = contents[i]!;
          }
          this.writes++;
          this.lastWriteMs = now;
          this.log.info('ticket key files written', { dir: this.cfg.dir, encrypting: ticketKeyId(keys[0]!), slots: keys.map(ticketKeyId), ...(this.creating ? { created: true } : {}) });
          if (!this.creating) this.reload();
          else if (this.cfg.reloadCommand !== null) this.log.info('ticket key files created: the reload command is not run, no server can be using them yet', { dir: this.cfg.dir });
          this.creating = false;
        } catch (err) {
          this.writeErrors++;
          this.written = this.written.map(() => Buffer.alloc(0));
          this.log.error('cannot write the ticket key files; retrying at the next change', { dir: this.cfg.dir, error: describe(err) });
        }
      }
    }
    this.haproxy.update(this.keys.view(now));
    if (this.timer !== null) clearTimeout(this.timer);
    const next = this.keys.nextChange(now);
    if (next !== null) {
      this.timer = setTimeout(() => this.refresh(Date.now()), Math.min(Math.max(1, next - now + 1), 60_000));
      this.timer.unref();
    }
  }

  private reload(): void {
    const cmd = this.cfg.reloadCommand;
    if (cmd === null || this.closed) return;
    if (this.running) {
      this.pending = true;
      return;
    }
    this.running = true;
    const t0 = Date.now();
    let output = '';
    let timedOut = false;
    const child = spawn('/bin/sh', ['-c', cmd], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const keep = (d: Buffer) => {
      if (output.length < OUTPUT_BYTES) output += d.toString('utf8').slice(0, OUTPUT_BYTES - output.length);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }, this.cfg.reloadTimeoutMs);
    let finished = false;
    const done = (code: number | null, signal: string | null, error: string | null) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      const ms = Date.now() - t0;
      const ok = !timedOut && error === null && code === 0;
      if (timedOut) this.reloads.timeout++;
      else if (ok) this.reloads.ok++;
      else this.reloads.failed++;
      const fields = { command: cmd, code, signal, ms, output: output.trim(), ...(error === null ? {} : { error }) };
      if (ok) this.log.info('ticket reload command finished', { ...fields, result: 'ok' });
      else this.log.error('ticket reload command failed', { ...fields, result: timedOut ? 'timeout' : 'failed' });
      this.running = false;
      if (this.pending) {
        this.pending = false;
        this.reload();
      }
    };
    child.once('error', (err) => done(null, null, err.message));
    child.once('close', (code, signal) => done(code, signal, null));
  }

  close(): void {
    this.closed = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.haproxy.close();
    this.keys.clear();
    for (const w of this.written) w.fill(0);
  }
}
