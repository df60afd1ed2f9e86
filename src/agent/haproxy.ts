// The agent's HAProxy side of the fleet's ticket keys: DIR/haproxy.keys for
// HAProxy to read at start (`tls-ticket-keys`), and every --haproxy-socket
// kept holding the same ring at run time (README, "HAProxy: ticket keys
// pushed over the runtime API").
//
// Invariants:
// - The file is the ring wanted now (haproxy-keys.ts), written whole (temp
//   file, mode 0600, rename) and only when its bytes change, before any
//   socket is told: an HAProxy starting at any moment reads what the running
//   ones are being given.
// - A failed write is counted and logged, and retried at the next change;
//   the sockets are still told (the runtime API does not read the file).

import { readFileSync } from 'node:fs';
import { describe } from '../base/errors.js';
import { writeAtomically } from '../base/files.js';
import type { Logger } from '../base/log.js';
import type { TicketFilesConfig } from '../config/agent-config.js';
import { ticketKeyId, type TicketView } from '../crypto/ticket-schedule.js';
import { haproxyKeyLine, haproxyKeysFile, wantedRing } from './haproxy-keys.js';
import { HaproxySocket } from './haproxy-socket.js';

export class HaproxyFeed {
  writes = 0;
  writeErrors = 0;
  readonly sockets: readonly HaproxySocket[];
  private written: Buffer;

  constructor(
    private readonly cfg: TicketFilesConfig,
    private readonly log: Logger,
  ) {
    this.sockets = cfg.haproxy.sockets.map((p) => new HaproxySocket(p, { keysFile: cfg.haproxy.keysFile, checkMs: cfg.haproxy.checkMs, timeoutMs: cfg.haproxy.timeoutMs }, log));
    // What is on disk already counts as written: an agent restart rewrites only on change.
    try {
      this.written = readFileSync(cfg.haproxy.keysFile);
    } catch {
      this.written = Buffer.alloc(0);
    }
  }

  /** What HAProxy should hold now (called at every change of the fleet's view). */
  update(view: TicketView): void {
    const ring = wantedRing(view);
    if (ring === null) return;
    if (view.older.length > 1) {
      this.log.throttle('warn', 'haproxy-ring', 'more ticket keys still decrypt than HAProxy holds (the previous, the current, the next): the oldest are left out (keep --ticket-lifetime at most --ticket-rotate)', { older: view.older.length }, 600_000);
    }
    const lines = ring.map((k) => haproxyKeyLine(k, this.cfg.size));
    const content = haproxyKeysFile(lines);
    const ids = ring.map(ticketKeyId);
    if (!content.equals(this.written)) {
      try {
        writeAtomically(this.cfg.haproxy.keysFile, content);
        this.written.fill(0);
        this.written = content;
        this.writes++;
        this.log.info('haproxy ticket key file written', { file: this.cfg.haproxy.keysFile, encrypting: ids[1], ring: ids });
      } catch (err) {
        content.fill(0);
        this.writeErrors++;
        this.written.fill(0);
        this.written = Buffer.alloc(0);
        this.log.error('cannot write the haproxy ticket key file; retrying at the next change', { file: this.cfg.haproxy.keysFile, error: describe(err) });
      }
    } else content.fill(0);
    for (const s of this.sockets) s.want(lines.map((l) => Buffer.from(l)), ids[1]!);
    for (const l of lines) l.fill(0);
  }

  close(): void {
    for (const s of this.sockets) s.close();
    this.written.fill(0);
  }
}
