// --state-dir/tickets.pb: the fleet's ticket keys survive a restart, so no
// ticket in flight is invalidated by one (a new schedule would be). The file
// holds secrets: written with mode 0600, atomically; one that others can
// read, that is not ours (a symbolic link, another user's: base/trust.ts), or
// that does not decode, refuses the start (exit 78) rather than be believed,
// or be replaced by a new schedule the fleet would then disagree on.

import { join } from 'node:path';
import { ConfigError, describe } from '../base/errors.js';
import { writeAtomically } from '../base/files.js';
import type { Logger } from '../base/log.js';
import { readTrusted } from '../base/trust.js';
import type { TicketPersistence } from '../repeater/ticket-service.js';
import { decodeTicketSchedule, encodeTicketSchedule, type TicketKey } from '../wire/ticket-codec.js';

export const TICKETS_FILE = 'tickets.pb';

export class TicketStore implements TicketPersistence {
  readonly file: string;
  saves = 0;
  saveErrors = 0;

  /** `dir` was checked (created, writable, ours) by the RegistryStore. */
  constructor(
    dir: string,
    private readonly log: Logger,
  ) {
    this.file = join(dir, TICKETS_FILE);
  }

  /** The saved keys ([] when there is no file yet); throws a ConfigError naming the file and the problem. */
  load(): TicketKey[] {
    let buf: Buffer | null;
    try {
      buf = readTrusted(this.file, 'saved ticket keys', { secret: true, noun: 'the ticket keys' });
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      throw new ConfigError(`${this.file}: ${describe(err)}`);
    }
    if (buf === null) return [];
    const keys = decodeTicketSchedule(buf);
    buf.fill(0);
    if (typeof keys === 'string') {
      throw new ConfigError(`${this.file}: not a ticket-key schedule (bad_payload); remove it to start a new schedule (tickets in flight then need a full handshake)`);
    }
    return keys;
  }

  save(keys: readonly TicketKey[]): void {
    const data = encodeTicketSchedule(keys);
    try {
      writeAtomically(this.file, data);
      this.saves++;
    } catch (err) {
      this.saveErrors++;
      this.log.error('cannot save the ticket keys', { file: this.file, error: describe(err) });
      throw err;
    } finally {
      data.fill(0);
    }
  }
}
