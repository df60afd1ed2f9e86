// The agent's hints (base/hints.ts) and its one health judgement:
//
// - a repeater that never sent one authentic frame back after SILENT_AFTER
//   announces: the agent is talking to no one who answers (the repeater's
//   listener is plain, its key differs, or it cannot reach --advertise).
//   /healthz says `degraded` while it lasts. A fleet where no other node
//   writes (and no ticket keys are sent) is silent too: the message says so.
// - frames from an address that is no --repeater: dropped before any crypto
//   (not_allowed); a repeater with several addresses answers from the one on
//   its route to us.

import { HintTable, type HintView } from '../base/hints.js';
import type { Logger } from '../base/log.js';
import { looksSealed } from '../wire/frame.js';

/** Announces to a repeater with no frame back before it is called silent. */
export const SILENT_AFTER = 3;
const SILENT_LOG_MS = 10 * 60_000;

/** What the agent knows of one repeater (agent.ts Link). */
export interface LinkState {
  readonly repeater: { readonly text: string };
  readonly advertise: string | null;
  readonly lastFrameAt: number;
}

export interface SilentLink {
  hint: 'no_frames_from_repeater';
  message: string;
  repeater: string;
  advertise: string | null;
  announces: number;
}

export class AgentHints {
  readonly notARepeater: HintTable;
  /** Announces sent to each repeater (by its address) while no frame came back. */
  private readonly announces = new Map<string, number>();

  constructor(
    private readonly log: Logger,
    private readonly links: () => Iterable<LinkState>,
  ) {
    this.notARepeater = new HintTable(
      {
        name: 'not_a_repeater',
        level: 'warn',
        intervalMs: 60_000,
        whereName: 'socket',
        message: () =>
          'a sealed frame came from an address that is no --repeater and was dropped: if it is a repeater (a host with several addresses answers from the one on its route), name that address in --repeater',
      },
      log,
    );
  }

  /** A datagram from an address that is no --repeater (already dropped): a frame? */
  stranger(msg: Buffer, source: string, socket: string): void {
    if (looksSealed(msg)) this.notARepeater.note(source, socket);
  }

  /** One announce sent to `repeater`. */
  announced(repeater: string): void {
    this.announces.set(repeater, (this.announces.get(repeater) ?? 0) + 1);
  }

  /** The repeaters that never answered SILENT_AFTER announces; forgets the counts of repeaters no longer configured. */
  silent(): SilentLink[] {
    const out: SilentLink[] = [];
    const seen = new Set<string>();
    for (const l of this.links()) {
      const r = l.repeater.text;
      seen.add(r);
      const n = this.announces.get(r) ?? 0;
      if (l.lastFrameAt > 0 || n < SILENT_AFTER) continue;
      out.push({ hint: 'no_frames_from_repeater', message: silentMessage(l), repeater: r, advertise: l.advertise, announces: n });
    }
    for (const r of this.announces.keys()) if (!seen.has(r)) this.announces.delete(r);
    return out;
  }

  /** Before each round of announces: logs each silent repeater (at most every SILENT_LOG_MS). */
  review(): void {
    for (const s of this.silent()) {
      this.log.throttle('warn', `silent:${s.repeater}`, s.message, { hint: s.hint, repeater: s.repeater, advertise: s.advertise, announces: s.announces }, SILENT_LOG_MS);
    }
  }

  view(now = Date.now()): HintView[] {
    return this.notARepeater.view(now);
  }
}

function silentMessage(l: LinkState): string {
  return (
    `no frame has come back from the repeater after ${SILENT_AFTER} or more announces: is ${l.repeater.text} its --listen-sealed address (not a plain --listen)? ` +
    `does it have the same --key-file? can it reach ${l.advertise ?? 'this agent'} (a firewall, NAT: give --advertise)? ` +
    '(a fleet where no other node writes, on a channel without ticket keys, sends nothing back either)'
  );
}
