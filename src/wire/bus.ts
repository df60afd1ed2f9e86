// Cluster mode's bus messages (proto BusMessage).
// See docs/PROTOCOL.md, "The cluster bus". Pure codec: decoding garbage
// returns a reason, never throws.

import { bigintToLong, type LongLike, longToBigint, longToNumber } from './longs.js';
import { protoRoot } from './proto.js';
import { type TicketKey, ticketsFromProto, ticketsToProto } from './ticket-codec.js';
import type { TraceFields } from './trace.js';

const BusType = protoRoot.lookupType('udprepeater.BusMessage');

export interface BusDatagram {
  readonly type: 'datagram';
  readonly channel: string;
  readonly datagram: Buffer;
  readonly trace: TraceFields | null;
  /** The agent that sealed it; 0n when it came plain. */
  readonly origin: bigint;
  readonly opaque: boolean;
  /** State chunks only: how long ago the answerer learned it (absent: 0). */
  readonly ageMs?: number;
}

export interface BusHeartbeat {
  readonly type: 'heartbeat';
  readonly name: string;
  readonly startedAtMs: number;
  readonly intervalMs: number;
  readonly subscribers: number;
  /** It holds the cluster's live state and may be asked for it (absent: false). */
  readonly stateReady?: boolean;
  /** The peers it counts live; absent: it does not say (an older repeater). */
  readonly livePeers?: readonly bigint[];
  /** It was stopped long enough for its peers to take over: answer at once. */
  readonly resumed?: boolean;
  /** For how long it has been on the bus without a gap (absent: 0). */
  readonly steadyMs?: number;
}

/** A starting repeater asks `target` for its live state (cluster warm join). */
export interface BusStateRequest {
  readonly type: 'state_request';
  readonly target: bigint;
  readonly request: number;
}

/** One part of an answer to a BusStateRequest, on the requester's own subject. */
export interface BusStateChunk {
  readonly type: 'state_chunk';
  readonly request: number;
  readonly seq: number;
  /** Plain cache sets: no trace, never opaque, origin 0. */
  readonly entries: readonly BusDatagram[];
  readonly last: boolean;
  readonly total: number;
  readonly declined: boolean;
}

export interface BusSubscriber {
  readonly type: 'subscriber';
  readonly channel: string;
  readonly sealed: boolean;
  readonly address: string;
  readonly key: string;
  readonly origin: bigint;
  /** Absolute unix ms until which the sender counts it heard; 0: no longer. */
  readonly deadlineMs: number;
  readonly isStatic: boolean;
  /** The sender completed a warm join toward it, or it needed none (absent: false). */
  readonly warmed?: boolean;
}

/** Datagrams accepted in one turn of the sender's event loop, in order (at most MAX_BATCH). */
export interface BusBatch {
  readonly type: 'batch';
  readonly datagrams: readonly BusDatagram[];
}

/** The sender's ticket-key schedule (every repeater merges what it hears). */
export interface BusTickets {
  readonly type: 'tickets';
  readonly keys: readonly TicketKey[];
}

export type BusBody = BusDatagram | BusBatch | BusHeartbeat | BusSubscriber | BusTickets | BusStateRequest | BusStateChunk;

export interface BusMessage {
  readonly sender: bigint;
  readonly sentAtMs: number;
  readonly body: BusBody;
}

const MAX_NAME = 255;
/** Most peers a heartbeat may list (the peer table's bound). */
export const MAX_LISTED_PEERS = 64;
/** Largest age a state entry may claim: a tombstone is kept far less long. */
const MAX_AGE_MS = 2 ** 31;
/** Most datagrams one batch may hold: what a receiver will process for one message. */
export const MAX_BATCH = 1024;

function datagramFields(b: BusDatagram): Record<string, unknown> {
  return {
    channel: b.channel,
    datagram: b.datagram,
    origin: bigintToLong(b.origin),
    opaque: b.opaque,
    ...(b.trace === null ? {} : { trace: { ingress: b.trace.ingress, sequence: b.trace.sequence, hops: b.trace.hops } }),
    ...(b.ageMs === undefined || b.ageMs === 0 ? {} : { ageMs: b.ageMs }),
  };
}

export function encodeBus(m: BusMessage): Uint8Array {
  const b = m.body;
  const msg: Record<string, unknown> = { sender: bigintToLong(m.sender), sentAtMs: m.sentAtMs };
  if (b.type === 'datagram') {
    msg['datagram'] = datagramFields(b);
  } else if (b.type === 'batch') {
    msg['batch'] = { datagrams: b.datagrams.map(datagramFields) };
  } else if (b.type === 'heartbeat') {
    msg['heartbeat'] = {
      name: b.name,
      startedAtMs: b.startedAtMs,
      intervalMs: b.intervalMs,
      subscribers: b.subscribers,
      stateReady: b.stateReady === true,
      ...(b.livePeers === undefined ? {} : { livePeers: b.livePeers.map(bigintToLong), listsPeers: true }),
      resumed: b.resumed === true,
      steadyMs: b.steadyMs ?? 0,
    };
  } else if (b.type === 'state_request') {
    msg['stateRequest'] = { target: bigintToLong(b.target), request: b.request };
  } else if (b.type === 'state_chunk') {
    msg['stateChunk'] = { request: b.request, seq: b.seq, entries: b.entries.map(datagramFields), last: b.last, total: b.total, declined: b.declined };
  } else if (b.type === 'tickets') {
    msg['tickets'] = ticketsToProto(b.keys);
  } else {
    msg['subscriber'] = { channel: b.channel, sealed: b.sealed, address: b.address, key: b.key, origin: bigintToLong(b.origin), deadlineMs: b.deadlineMs, static: b.isStatic, warmed: b.warmed === true };
  }
  return BusType.encode(msg).finish();
}

const str = (v: unknown) => (typeof v === 'string' ? v : '');

function datagramOf(d: Record<string, unknown>): BusDatagram | null {
  const datagram = d['datagram'] as Uint8Array | null | undefined;
  const channel = str(d['channel']);
  if (datagram == null || datagram.length === 0 || channel === '' || channel.length > MAX_NAME) return null;
  const t = d['trace'] as { ingress?: LongLike; sequence?: LongLike; hops?: number } | null | undefined;
  let trace: TraceFields | null = null;
  if (t != null) {
    const ingress = longToNumber(t.ingress);
    const sequence = longToNumber(t.sequence);
    const hops = t.hops ?? 0;
    if (ingress < 1 || ingress >= 2 ** 48 || sequence < 1 || !Number.isSafeInteger(sequence) || hops < 1 || hops > 255) return null;
    trace = { ingress, sequence, hops };
  }
  const ageMs = Number(d['ageMs'] ?? 0);
  if (!Number.isSafeInteger(ageMs) || ageMs < 0 || ageMs > MAX_AGE_MS) return null;
  return {
    type: 'datagram',
    channel,
    datagram: Buffer.from(datagram.buffer, datagram.byteOffset, datagram.length),
    trace,
    origin: longToBigint(d['origin'] as LongLike),
    opaque: d['opaque'] === true,
    ...(ageMs === 0 ? {} : { ageMs }),
  };
}

/** Decodes and checks a bus message; 'bad_payload' for anything malformed. */
export function decodeBus(buf: Uint8Array): BusMessage | 'bad_payload' {
  let m: Record<string, unknown>;
  try {
    m = BusType.decode(buf) as unknown as Record<string, unknown>;
  } catch {
    return 'bad_payload';
  }
  const sender = longToBigint(m['sender'] as LongLike);
  const sentAtMs = longToNumber(m['sentAtMs'] as LongLike);
  if (sender === 0n || !Number.isSafeInteger(sentAtMs)) return 'bad_payload';
  const d = m['datagram'] as Record<string, unknown> | null | undefined;
  const h = m['heartbeat'] as Record<string, unknown> | null | undefined;
  const s = m['subscriber'] as Record<string, unknown> | null | undefined;
  const batch = m['batch'] as { datagrams?: Array<Record<string, unknown>> } | null | undefined;
  const t = m['tickets'] as unknown;
  const rq = m['stateRequest'] as Record<string, unknown> | null | undefined;
  const chunk = m['stateChunk'] as Record<string, unknown> | null | undefined;
  if (rq != null) {
    const target = longToBigint(rq['target'] as LongLike);
    const request = longToNumber(rq['request'] as LongLike);
    if (target === 0n || request < 1 || !Number.isSafeInteger(request)) return 'bad_payload';
    return { sender, sentAtMs, body: { type: 'state_request', target, request } };
  }
  if (chunk != null) return stateChunkOf(sender, sentAtMs, chunk);
  if (t != null) {
    const keys = ticketsFromProto(t);
    if (typeof keys === 'string') return keys;
    return { sender, sentAtMs, body: { type: 'tickets', keys } };
  }
  if (d != null) {
    const body = datagramOf(d);
    return body === null ? 'bad_payload' : { sender, sentAtMs, body };
  }
  if (batch != null) {
    const items = batch.datagrams ?? [];
    if (items.length === 0 || items.length > MAX_BATCH) return 'bad_payload';
    const datagrams: BusDatagram[] = [];
    for (const item of items) {
      const one = datagramOf(item);
      if (one === null) return 'bad_payload';
      datagrams.push(one);
    }
    return { sender, sentAtMs, body: { type: 'batch', datagrams } };
  }
  if (h != null) {
    const name = str(h['name']);
    if (name.length > MAX_NAME) return 'bad_payload';
    const listed = (h['livePeers'] as LongLike[] | undefined) ?? [];
    if (listed.length > MAX_LISTED_PEERS) return 'bad_payload';
    const steadyMs = longToNumber(h['steadyMs'] as LongLike);
    if (!Number.isSafeInteger(steadyMs) || steadyMs < 0) return 'bad_payload';
    const body: BusHeartbeat = {
      type: 'heartbeat',
      name,
      startedAtMs: longToNumber(h['startedAtMs'] as LongLike),
      intervalMs: Number(h['intervalMs'] ?? 0),
      subscribers: Number(h['subscribers'] ?? 0),
      ...(h['stateReady'] === true ? { stateReady: true } : {}),
      ...(h['listsPeers'] === true ? { livePeers: listed.map(longToBigint) } : {}),
      ...(h['resumed'] === true ? { resumed: true } : {}),
      ...(steadyMs === 0 ? {} : { steadyMs }),
    };
    return { sender, sentAtMs, body };
  }
  if (s != null) {
    const channel = str(s['channel']);
    const address = str(s['address']);
    const key = str(s['key']);
    if (channel === '' || address === '' || channel.length > MAX_NAME || address.length > MAX_NAME || key.length > MAX_NAME) return 'bad_payload';
    const deadlineMs = longToNumber(s['deadlineMs'] as LongLike);
    if (!Number.isSafeInteger(deadlineMs) || deadlineMs < 0) return 'bad_payload';
    const body: BusSubscriber = {
      type: 'subscriber',
      channel,
      sealed: s['sealed'] === true,
      address,
      key,
      origin: longToBigint(s['origin'] as LongLike),
      deadlineMs,
      isStatic: s['static'] === true,
      ...(s['warmed'] === true ? { warmed: true } : {}),
    };
    return { sender, sentAtMs, body };
  }
  return 'bad_payload';
}

/**
 * A state chunk: bounded (MAX_BATCH entries), and every entry a plain cache
 * update with neither trace nor origin (the live state keeps neither).
 */
function stateChunkOf(sender: bigint, sentAtMs: number, c: Record<string, unknown>): BusMessage | 'bad_payload' {
  const request = longToNumber(c['request'] as LongLike);
  const seq = Number(c['seq'] ?? 0);
  const total = Number(c['total'] ?? 0);
  const items = (c['entries'] as Array<Record<string, unknown>> | undefined) ?? [];
  if (request < 1 || !Number.isSafeInteger(request) || items.length > MAX_BATCH) return 'bad_payload';
  const entries: BusDatagram[] = [];
  for (const item of items) {
    const one = datagramOf(item);
    // A set, or a tombstone (a delete the answerer remembers): both as a node sends them.
    if (one === null || one.trace !== null || one.opaque || one.origin !== 0n) return 'bad_payload';
    entries.push(one);
  }
  return { sender, sentAtMs, body: { type: 'state_chunk', request, seq, entries, last: c['last'] === true, total, declined: c['declined'] === true } };
}
