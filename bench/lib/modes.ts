// A mode decides what travels on the wire between the generator, the fan-out
// under test and the receivers:
//
//   plain   uWSGI datagrams exactly as nodes send them: a plain listener,
//           plain static (--to) or dynamic (uWSGI 224/0 announce) subscribers.
//   secure  udprepeater's sealed frames (README.md "Secure mode", "Frame
//           format"): a sealed listener (`--listen-sealed ...,key=ssl`),
//           sealed static subscribers (`--to ...,sealed,key=ssl`) or dynamic
//           ones subscribing with a sealed SUBSCRIBE Envelope, one key file
//           (made with the real `udprepeater keygen`) shared by everyone.
//           The C generator seals every datagram itself after stamping it
//           (each frame has its own nonce and sequence: a pool of pre-sealed
//           frames could not be cycled past the repeater's replay window);
//           the receivers open frames before looking for the stamp and count
//           frames that do not open apart; the floor opens once and seals
//           once per input datagram and sends that one frame to every
//           output, the same cryptographic work DESIGN.md asks of the
//           repeater. See native/sealed.h for the codec.
//   identity  link frames (docs/PROTOCOL.md "Identities and links"): the
//           repeater with --identity/--peers, a node identity per
//           subscriber and one for the writer, the handshakes made by the
//           bench (identity-mode.ts), the keys handed to the C helpers.
//
// The driver (measure.ts) talks to a mode only through this interface; which
// mode a scenario runs in is part of the scenario (plan.ts).

import { KeyRing } from '../../src/crypto/keyring.js';
import { sodiumReady } from '../../src/crypto/secretbox.js';
import { SecureSession } from '../../src/crypto/session.js';
import { EnvelopeKind, Role } from '../../src/wire/envelope.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import type { Linked } from './identity-mode.js';
import type { Child } from './procs.js';
import type { RepeaterFanOut } from './targets.js';

export type ModeName = 'plain' | 'secure' | 'identity';
export const MODE_NAMES: readonly ModeName[] = ['plain', 'secure', 'identity'];

/** The channel key every frame and subscription of the bench carries (uWSGI's cache name in the capture). */
export const CHANNEL_KEY = 'ssl';

export interface BenchMode {
  readonly name: ModeName;
  readonly summary: string;
  /** `udprepeater serve` flags for its listener and static subscribers. */
  repeaterArgs(listen: string, staticPorts: readonly number[]): string[];
  /** What a dynamic subscriber at 127.0.0.1:`port` sends to subscribe. */
  subscribeDatagram(key: string, port: number): Buffer;
  /** Extra flags for the C helpers (their wire codec). */
  genArgs(): string[];
  recvArgs(): string[];
  floorArgs(): string[];
  /** Identity mode: links the generator and every receiver with a repeater once it started (keys per repeater start). */
  link?(rep: RepeaterFanOut, ports: readonly number[], recv: Child): Promise<Linked>;
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

export interface SecureOptions {
  /** The key file everyone uses (32 raw bytes, mode 0600). */
  readonly keyFile: string;
  /** Receivers open every frame instead of trusting a byte-identical copy of one that opened. */
  readonly openEvery: boolean;
}

/**
 * Secure mode with one key file. Subscriptions are sealed by the project's
 * own SecureSession (src/crypto/session.ts), exactly as an agent seals them.
 */
export async function secureMode(o: SecureOptions): Promise<BenchMode> {
  await sodiumReady();
  const ring = KeyRing.load([o.keyFile]);
  const session = new SecureSession(Role.Agent);
  const key = ['--key-file', o.keyFile];
  return {
    name: 'secure',
    summary: `sealed frames (sealed listener, sealed subscribers; key file ${o.keyFile.split('/').pop()}, channel key "${CHANNEL_KEY}")`,
    repeaterArgs: (listen, ports) => [
      '--listen-sealed',
      `${listen},key=${CHANNEL_KEY}`,
      ...key,
      ...ports.flatMap((p) => ['--to', `127.0.0.1:${p},sealed,key=${CHANNEL_KEY}`]),
    ],
    subscribeDatagram: (channelKey, port) => {
      const frame = session.seal(ring, { kind: EnvelopeKind.Subscribe, channelKey, datagram: null, address: `127.0.0.1:${port}` });
      if (frame === null) throw new Error('a sealed SUBSCRIBE does not fit a datagram');
      return frame;
    },
    genArgs: () => [...key, '--channel-key', CHANNEL_KEY],
    recvArgs: () => [...key, ...(o.openEvery ? ['--open-every'] : [])],
    floorArgs: () => [...key, '--channel-key', CHANNEL_KEY],
  };
}
