// Loads the optional native datagram path (src/native/udpfast.c, built by
// `npm install` with node-gyp). When it is missing, or UDPREPEATER_NATIVE=0,
// the repeater uses node:dgram for everything: same behaviour, more CPU.

import { constants } from 'node:os';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../base/package.js';

export interface NativeListenerHandle {
  readonly handle: unknown;
  readonly arena: ArrayBuffer;
  readonly meta: ArrayBuffer;
  readonly port: number;
  readonly fd: number;
  readonly slots: number;
  readonly slotSize: number;
  readonly metaWords: number;
}

export interface UdpFast {
  listen(family: 4 | 6, ip: Buffer, port: number, rcvbuf: number, onBatch: (n: number) => void): NativeListenerHandle;
  unlisten(handle: unknown): void;
  listenerErrors(handle: unknown): [number, number];
  connect(family: 4 | 6, ip: Buffer, port: number, sndbuf: number): number;
  closeFd(fd: number): void;
  sendEach(fds: Int32Array, n: number, data: Uint8Array, errs: Int32Array): number;
}

export const NATIVE_PATH = join(PACKAGE_ROOT, 'src', 'native', 'build', 'Release', 'udpfast.node');

function load(): { api: UdpFast | null; why: string } {
  if (process.env['UDPREPEATER_NATIVE'] === '0') return { api: null, why: 'disabled by UDPREPEATER_NATIVE=0' };
  if (process.platform !== 'linux') return { api: null, why: `not built for ${process.platform}` };
  try {
    return { api: require(NATIVE_PATH) as UdpFast, why: 'loaded' };
  } catch (err) {
    return { api: null, why: `not built (${(err as Error).message.split('\n')[0]}); run npm run build:native` };
  }
}

const loaded = load();
/** The native path, or null when the pure TypeScript path is in use. */
export const native: UdpFast | null = loaded.api;
export const nativeStatus: string = loaded.why;

const ERRNO_NAMES = new Map<number, string>(Object.entries(constants.errno).map(([name, n]) => [n, name]));

export function errnoName(n: number): string {
  return ERRNO_NAMES.get(n) ?? `E${n}`;
}

/** Errors that mean "the socket buffer is full", not "the peer is gone". */
export const FULL = new Set([constants.errno.EAGAIN, constants.errno.EWOULDBLOCK, constants.errno.ENOBUFS]);

/** An IP literal as the 4 or 16 bytes the native calls take. */
export function ipBytes(host: string, family: 4 | 6): Buffer {
  if (family === 4) return Buffer.from(host.split('.').map(Number));
  const out = Buffer.alloc(16);
  const [head, tail] = host.includes('::') ? host.split('::') : [host, undefined];
  const words = (s: string | undefined) => (s === undefined || s === '' ? [] : s.split(':'));
  let h = words(head);
  let t = words(tail);
  const v4 = (parts: string[]) => {
    const last = parts[parts.length - 1];
    if (last === undefined || !last.includes('.')) return parts;
    const b = last.split('.').map(Number);
    return [...parts.slice(0, -1), ((b[0]! << 8) | b[1]!).toString(16), ((b[2]! << 8) | b[3]!).toString(16)];
  };
  if (tail === undefined) h = v4(h);
  else t = v4(t);
  const all = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  all.forEach((w, i) => out.writeUInt16BE(parseInt(w, 16), i * 2));
  return out;
}
