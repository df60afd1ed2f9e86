// HAProxy's TLS ticket keys: the `tls-ticket-keys` file and the ring its
// runtime API changes (README, "HAProxy: ticket keys pushed over the runtime
// API"). Pure: bytes in, bytes out.
//
// What HAProxy 2.6 does (built with the default TLS_TICKETS_NO = 3, as
// Debian's is; test/system/tls.haproxy.test.ts checks it on the real binary):
// - A key is its name (16 bytes), its AES key, its HMAC key: 48 bytes
//   (AES-128, HMAC 16) or 80 (AES-256, HMAC 32). The 48-byte order is
//   nginx's; the 80-byte order is not (nginx: name, HMAC, AES).
// - Each listener's keys are a ring of three: `show tls-keys FILE` lists it
//   as previous, encrypting, next; all three decrypt. The file is read at
//   start (its last three lines, the middle one encrypts).
// - `set ssl tls-key FILE KEY` drops the previous key and appends KEY: the
//   old next key encrypts, the old encrypting key becomes the previous one.
//
// Invariants:
// - The ring wanted is the fleet's [older, encrypting, next] (crypto/ticket-schedule.ts
//   view); a missing older or next is the encrypting key again. So the key
//   HAProxy encrypts with is the fleet's, and the next key already decrypts.
//   HAProxy holds one older key: with --ticket-lifetime above --ticket-rotate
//   the oldest keys still decrypting elsewhere are left out.
// - Secrets stay in Buffers (base64 included), so their holders can zero them.

import type { TicketKey } from '../wire/ticket-codec.js';
import { nginxTicketKey, type TicketView } from '../crypto/ticket-schedule.js';

/** Keys in an HAProxy ring (its build default, TLS_TICKETS_NO). */
export const HAPROXY_RING = 3;

/** A key in HAProxy's layout: name (16), AES key, HMAC key. */
export function haproxyTicketKey(k: TicketKey, size: 48 | 80): Buffer {
  const n = nginxTicketKey(k, size);
  if (size === 48) return n;
  // nginx's 80 bytes are name (16), HMAC (32), AES (32): the same keys, swapped halves.
  const out = Buffer.concat([n.subarray(0, 16), n.subarray(48, 80), n.subarray(16, 48)]);
  n.fill(0);
  return out;
}

/** The ring HAProxy should hold now, in `show tls-keys` order; null until a key encrypts. */
export function wantedRing(v: TicketView): [TicketKey, TicketKey, TicketKey] | null {
  if (v.encrypting === null) return null;
  return [v.older[0] ?? v.encrypting, v.encrypting, v.next ?? v.encrypting];
}

const B64 = Buffer.from('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/');

/** Standard base64 (padded) written into a Buffer, never through a string. */
export function base64Bytes(src: Uint8Array): Buffer {
  const out = Buffer.alloc(Math.ceil(src.length / 3) * 4);
  let o = 0;
  for (let i = 0; i < src.length; i += 3) {
    const n = (src[i]! << 16) | ((src[i + 1] ?? 0) << 8) | (src[i + 2] ?? 0);
    out[o++] = B64[(n >> 18) & 63]!;
    out[o++] = B64[(n >> 12) & 63]!;
    out[o++] = i + 1 < src.length ? B64[(n >> 6) & 63]! : 0x3d;
    out[o++] = i + 2 < src.length ? B64[n & 63]! : 0x3d;
  }
  return out;
}

/** A key as HAProxy reads it from the file and from `set ssl tls-key`: base64 of its layout. */
export function haproxyKeyLine(k: TicketKey, size: 48 | 80): Buffer {
  const raw = haproxyTicketKey(k, size);
  const line = base64Bytes(raw);
  raw.fill(0);
  return line;
}

/** The `tls-ticket-keys` file: one base64 key a line, in ring order (the middle one encrypts). */
export function haproxyKeysFile(lines: readonly Buffer[]): Buffer {
  return Buffer.concat(lines.flatMap((l) => [l, Buffer.from('\n')]));
}

/** At most this much of an HAProxy error answer is kept for logs and /healthz. */
const ERROR_CHARS = 200;

/** A run of base64 this long may be a key (48 bytes are 64 characters): never shown. */
const KEYLIKE = /[A-Za-z0-9+/]{40,}={0,2}/g;

/** HAProxy's answer as one printable line, bounded, anything key-like blanked (for logs and /healthz). */
export function answerText(answer: Buffer): string {
  const text = answer.subarray(0, 4 * ERROR_CHARS).toString('latin1');
  return text.replace(/[^\x20-\x7e]+/g, ' ').replace(KEYLIKE, '[...]').trim().slice(0, ERROR_CHARS);
}

const KEY_LINE = /^\d+\.\d+ [A-Za-z0-9+/]+={0,2}$/;

/**
 * The ring in an answer to `show tls-keys FILE`: its base64 keys in the
 * order listed (previous, encrypting, next), copied out of `answer`; or, when
 * HAProxy answered anything else (an unknown file, no permission), its answer
 * as text.
 */
export function parseRing(answer: Buffer): Buffer[] | string {
  const lines: Buffer[] = [];
  let header = false;
  let start = 0;
  while (start < answer.length) {
    let end = answer.indexOf(0x0a, start);
    if (end < 0) end = answer.length;
    const line = answer.subarray(start, end);
    start = end + 1;
    if (line.length === 0) continue;
    if (line[0] === 0x23) {
      // '#': the header lines (`# id secret`, `# 0 (FILE)`).
      if (line.toString('latin1').startsWith('# id secret')) header = true;
      continue;
    }
    if (line.length > 1024 || !KEY_LINE.test(line.toString('latin1'))) {
      for (const l of lines) l.fill(0);
      return header ? `unexpected answer: ${answerText(answer)}` : answerText(answer);
    }
    const space = line.indexOf(0x20);
    lines.push(Buffer.from(line.subarray(space + 1)));
  }
  if (!header) {
    for (const l of lines) l.fill(0);
    return answerText(answer) || 'empty answer';
  }
  if (lines.length !== HAPROXY_RING) {
    for (const l of lines) l.fill(0);
    return `HAProxy holds ${lines.length} ticket keys for the file, not ${HAPROXY_RING} (built with another TLS_TICKETS_NO?)`;
  }
  return lines;
}

/**
 * The keys to push, in order, to turn the ring `current` into `wanted`: the
 * fewest, since each push shifts the ring by one. Null `current` (unknown):
 * all three. Pushing keys the ring already ends with, in the same order, is
 * what makes it equal.
 */
export function planPushes(current: readonly Buffer[] | null, wanted: readonly Buffer[]): Buffer[] {
  const n = wanted.length;
  for (let k = 0; k < n; k++) {
    if (current === null || current.length !== n) break;
    let same = true;
    for (let j = 0; j < n - k && same; j++) same = current[k + j]!.equals(wanted[j]!);
    if (same) return wanted.slice(n - k);
  }
  return [...wanted];
}

/** Whether the answer to `set ssl tls-key` says the key was taken. */
export function pushAccepted(answer: Buffer): boolean {
  return answerText(answer) === 'TLS ticket key updated!';
}
