// A mode decides what travels on the wire between the generator, the fan-out
// under test and the receivers. Only `plain` exists today: uWSGI datagrams
// exactly as nodes send them.
//
// Extension point for secure mode (sealed listener + sealed subscribers).
// It is deliberately absent, not stubbed: the bench was written before the
// sealed frame format was settled, and a bench that "measured" a made-up
// frame would mislead.
// Adding it means implementing BenchMode with:
//   - repeaterArgs: `--listen-sealed 127.0.0.1:0 --key-file K` and
//     `--to 127.0.0.1:P,sealed` per static subscriber;
//   - subscribeDatagram: the sealed subscription frame an agent sends;
//   - genArgs/recvArgs/floorArgs: select a sealing codec in the C helpers
//     (bench/native/*.c take no codec flag yet). The generator must seal every
//     datagram itself (a frame carries a unique nonce/sequence, so a pool of
//     pre-sealed frames cannot be cycled without tripping the replay window),
//     the receivers must open frames to find the stamp, and the floor must
//     open once and seal once per input datagram (what DESIGN.md asks of the
//     repeater), linking libsodium (-lsodium) so the reference does the same
//     cryptographic work as the repeater.
// The driver (measure.ts) only talks to a mode through this interface, so no
// other file has to change; add the mode to MODES below.

import { encodeSubscription } from '../../src/wire/subscription.js';

export interface BenchMode {
  readonly name: string;
  readonly summary: string;
  /** `udprepeater serve` flags for its listener and static subscribers. */
  repeaterArgs(listen: string, staticPorts: readonly number[]): string[];
  /** What a dynamic subscriber at 127.0.0.1:`port` sends to subscribe. */
  subscribeDatagram(key: string, port: number): Buffer;
  /** Extra flags for the C helpers (their wire codec). */
  genArgs(): string[];
  recvArgs(): string[];
  floorArgs(): string[];
}

export const PLAIN: BenchMode = {
  name: 'plain',
  summary: 'plain uWSGI datagrams (plain listener, plain subscribers)',
  repeaterArgs: (listen, ports) => ['--listen', listen, ...ports.flatMap((p) => ['--to', `127.0.0.1:${p}`])],
  subscribeDatagram: (key, port) => encodeSubscription({ key, address: `127.0.0.1:${port}` }),
  genArgs: () => [],
  recvArgs: () => [],
  floorArgs: () => [],
};

export const MODES: Readonly<Record<string, BenchMode>> = { plain: PLAIN };

/** Modes that are planned but cannot run yet, with the reason shown to the user. */
export const PLANNED: Readonly<Record<string, string>> = {
  secure:
    'secure mode is not in the bench yet: its C generator, receivers and floor have no sealing codec ' +
    '(the bench was written before the sealed frame format was settled). ' +
    'See "Adding secure mode" in bench/README.md and the BenchMode interface in bench/lib/modes.ts.',
};
