// Metrics and status of the fleet's ticket keys, for serve and agent.

import type { Registry } from 'prom-client';
import { counterFrom, gaugeFrom } from '../base/prom.js';
import type { TicketService } from '../repeater/ticket-service.js';

/** The repeater's schedule (registered always; zero while no listener has `tickets`). */
export function registerTicketMetrics(register: Registry, service: () => TicketService | null, store: { saves: number; saveErrors: number } | null): void {
  gaugeFrom(register, 'udprepeater_ticket_keys', 'TLS ticket keys held (the next, the current, and those still decrypting)', [], () => [[{}, service()?.keys.size ?? 0]]);
  gaugeFrom(register, 'udprepeater_ticket_key_age_seconds', 'Seconds since the ticket key that encrypts now started (above --ticket-rotate: the schedule is stuck); -1 without one', [], () => [[{}, service()?.encryptingAge() ?? -1]]);
  gaugeFrom(register, 'udprepeater_ticket_rotate_seconds', 'The --ticket-rotate period in seconds; 0 while no listener has tickets', [], () => [[{}, service()?.rotateSeconds ?? 0]]);
  counterFrom(register, 'udprepeater_ticket_keys_generated_total', 'TLS ticket keys this repeater generated', [], () => [[{}, service()?.generated ?? 0]]);
  counterFrom(register, 'udprepeater_ticket_keys_refused_total', 'Ticket keys refused as beyond this schedule (further ahead than one rotation, or living longer than rotation + lifetime), by source (file: tickets.pb at start; bus)', ['source'], () => [
    [{ source: 'file' }, service()?.refused.file ?? 0],
    [{ source: 'bus' }, service()?.refused.bus ?? 0],
  ]);
  counterFrom(register, 'udprepeater_ticket_key_frames_sent_total', 'Sealed TICKET_KEYS frames sent to subscribers', [], () => [[{}, service()?.framesSent ?? 0]]);
  counterFrom(register, 'udprepeater_ticket_key_saves_total', 'Ticket-key schedule files written (--state-dir), by result', ['result'], () => [
    [{ result: 'ok' }, store?.saves ?? 0],
    [{ result: 'error' }, store?.saveErrors ?? 0],
  ]);
}
