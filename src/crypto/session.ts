// A process's sealed-mode identity and the gate every sealed frame passes.
// The origin id, sequence counter, nonce source, replay windows and start
// time live for the whole process (a key-ring reload must not reset them: a
// receiver would take the restarted sequence for replays); the key ring is
// passed per call.
//
// Replay across restarts: replay windows die with the process, so a frame
// sealed before this process started is refused (`before_start`) by the
// sender's clock. What remains is the clock offset between the two hosts
// (SECURITY.md, "Secure mode"): with NTP, milliseconds.
//
// Replay to another receiver: a frame sealed for one receiver names it
// (Envelope.receiver) and is refused by any other (`wrong_receiver`); a group
// frame (one seal for every subscriber of a channel key) names nobody, and a
// receiver that knows from which sequence it is a member of an origin's
// groups (a MEMBERSHIP frame, judge/membership.ts) refuses older ones
// (`before_join`). docs/PROTOCOL.md, "Sealed frames".

import { randomBytes } from 'node:crypto';
import { type Envelope, EnvelopeKind, Role, bigintToLong, decodeEnvelope, encodeEnvelope } from '../wire/envelope.js';
import type { TicketKey } from '../wire/ticket-codec.js';
import type { TraceFields } from '../wire/trace.js';
import { FRAME_HEADER, FRAME_OVERHEAD, MAX_UDP_PAYLOAD, NONCE_BYTES, frameKeyId, writeFrameHeader } from '../wire/frame.js';
import type { KeyLookup } from './keyring.js';
import { NonceSource } from './nonce.js';
import { ReplayGuard } from '../judge/replay.js';
import { Secretbox } from './secretbox.js';

/** Why a sealed frame was refused. Stable strings: they become metric labels. */
export type OpenError =
  | 'unsealed' // not a frame at all (e.g. a plain datagram on a sealed port)
  | 'too_short'
  | 'bad_version'
  | 'unknown_key' // key id not in the ring
  | 'auth_failed' // the MAC does not verify
  | 'bad_payload' // authentic, but not a valid Envelope
  | 'own_origin' // one of our own frames, reflected back
  | 'wrong_role' // sealed by our own kind (a repeater's frame sent to a repeater, an agent's to an agent)
  | 'stale' // sent_at outside the allowed clock skew
  | 'before_start' // sealed before this process started: a capture replayed after a restart
  | 'wrong_receiver' // sealed for another receiver (or naming one where none is expected)
  | 'before_join' // a group frame sealed before we were a member of its origin's group
  | 'replay'; // sequence already seen, or older than the window

/**
 * Who opens a frame: the name frames sealed for it carry, and from which
 * sequence it is a member of each origin's group frames. Structural, so the
 * layers below (judge/membership.ts) and beside (the repeater's listeners) can
 * provide one without importing this file.
 */
export interface Receiver {
  /** True when `name`, a frame's non-empty receiver, is this receiver. */
  named(name: string): boolean;
  /** Frames of `origin` below this sequence were sealed before we were a member (0: none known). */
  fence(origin: bigint): number;
}

export interface SealFields {
  readonly kind: EnvelopeKind;
  readonly channelKey: string;
  readonly datagram: Buffer | null;
  readonly trace?: TraceFields | null;
  readonly address: string | null;
  readonly bus?: Uint8Array | null;
  readonly tickets?: readonly TicketKey[] | null;
  /** The one receiver this frame is for (docs/PROTOCOL.md, "Envelope"); absent or '' for a group frame. */
  readonly receiver?: string;
  /** MEMBERSHIP only. */
  readonly memberFrom?: number;
}

export class SecureSession {
  readonly origin: bigint;
  /** Frames sealed before this (by the sender's clock) are refused. */
  readonly startedAtMs: number;
  private readonly peer: Role;
  private readonly originLong: ReturnType<typeof bigintToLong>;
  private sequence = 0;
  private readonly nonces = new NonceSource();
  private readonly box = new Secretbox();
  private readonly replay = new ReplayGuard();
  private readonly nonceView = Buffer.alloc(NONCE_BYTES);

  /**
   * @param role what this process is: it seals as that role and opens only
   *   frames sealed by the other one (`peer`, for the cluster bus).
   */
  constructor(
    readonly role: Role,
    opts: { origin?: bigint; startedAtMs?: number; peer?: Role } = {},
  ) {
    let o = opts.origin ?? randomBytes(8).readBigUInt64LE(0);
    if (o === 0n) o = 1n;
    this.origin = o;
    this.originLong = bigintToLong(o);
    this.startedAtMs = opts.startedAtMs ?? Date.now();
    // The cluster bus is repeater to repeater; every other leg is agent to repeater.
    this.peer = opts.peer ?? (role === Role.Agent ? Role.Repeater : Role.Agent);
  }

  get framesSealed(): number {
    return this.sequence;
  }

  /** The sequence the next frame sealed will carry. */
  get nextSequence(): number {
    return this.sequence + 1;
  }

  /** Seals one Envelope under the ring's first key; null when it would not fit a UDP datagram. */
  seal(ring: KeyLookup, f: SealFields, nowMs = Date.now()): Buffer | null {
    const plain = encodeEnvelope(
      { kind: f.kind, channelKey: f.channelKey, sequence: this.sequence + 1, sentAtMs: nowMs, role: this.role, datagram: f.datagram, trace: f.trace ?? null, address: f.address, bus: f.bus ?? null, tickets: f.tickets ?? null, receiver: f.receiver, memberFrom: f.memberFrom },
      this.originLong,
    );
    if (plain.length + FRAME_OVERHEAD > MAX_UDP_PAYLOAD) return null;
    this.sequence++;
    const key = ring.sealing;
    const out = Buffer.allocUnsafe(FRAME_OVERHEAD + plain.length);
    writeFrameHeader(out, key.id);
    this.nonces.next(out, FRAME_HEADER);
    this.box.seal(key.box, out.subarray(FRAME_HEADER, FRAME_HEADER + NONCE_BYTES), plain, out, FRAME_HEADER + NONCE_BYTES);
    return out;
  }

  /**
   * The gate: header, key, one open, payload, origin, role, skew, start,
   * receiver, membership, then replay. Anything unauthenticated costs at most
   * one failed open and changes no state; the replay window is updated only
   * for frames that pass all else. `me` null (the cluster bus) refuses every
   * frame that names a receiver.
   */
  open(ring: KeyLookup, frame: Buffer, maxSkewMs: number, nowMs = Date.now(), me: Receiver | null = null): Envelope | OpenError {
    const id = frameKeyId(frame);
    if (typeof id === 'string') return id === 'unknown_version' ? 'bad_version' : id;
    const key = ring.get(id);
    if (key === undefined) return 'unknown_key';
    frame.copy(this.nonceView, 0, FRAME_HEADER, FRAME_HEADER + NONCE_BYTES);
    const plain = this.box.open(key.box, this.nonceView, frame.subarray(FRAME_HEADER + NONCE_BYTES));
    if (plain === null) return 'auth_failed';
    const env = decodeEnvelope(plain);
    if (typeof env === 'string') return env;
    if (env.origin === this.origin) return 'own_origin';
    if (env.role !== this.peer) return 'wrong_role';
    if (Math.abs(nowMs - env.sentAtMs) > maxSkewMs) return 'stale';
    if (env.sentAtMs < this.startedAtMs) return 'before_start';
    if (env.receiver.length > 0 && (me === null || !me.named(env.receiver))) return 'wrong_receiver';
    // A MEMBERSHIP frame is what moves the fence: it is judged by the replay window alone.
    if (me !== null && env.kind !== EnvelopeKind.Membership && env.sequence < me.fence(env.origin)) return 'before_join';
    if (!this.replay.accept(env.origin, env.sequence)) return 'replay';
    return env;
  }

  get origins(): number {
    return this.replay.origins;
  }
}
