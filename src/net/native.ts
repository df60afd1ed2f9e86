// Loads the optional native datagram path (src/native/udpfast.c, built by
// `npm install` with node-gyp). When it is missing, or UDPREPEATER_NATIVE=0,
// the dgram backend does everything: same behaviour, more CPU.

import { constants } from 'node:os';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../base/package.js';
import type { Backend } from './socket-api.js';

export interface NativeListenerHandle {
  readonly handle: unknown;
  readonly arena: ArrayBuffer;
  readonly meta: ArrayBuffer;
  readonly port: number;
  readonly fd: number;
  readonly slots: number;
  readonly slotSize: number;
  readonly metaWords: number;
  readonly rcvbuf: number;
}

/** The addon's API (src/native/udpfast.c documents each call). */
export interface UdpFast {
  listen(family: 4 | 6, ip: Buffer, port: number, rcvbuf: number, onBatch: (n: number) => void, onError: (errno: number) => void): NativeListenerHandle;
  resume(handle: unknown): boolean;
  unlisten(handle: unknown, onClosed: () => void): void;
  /** [receive errors, last errno, truncated datagrams, poll errors] */
  listenerStats(handle: unknown): [number, number, number, number];
  openSender(family: 4 | 6, sndbuf: number, rcvbuf: number): number;
  sendBatch(fds: Int32Array, dests: Uint8Array, n: number, data: Uint8Array, errs: Int32Array): number;
  /** Message i is data[offs[i], offs[i] + lens[i]) to dests[i] on fds[i]; one sendmmsg per fd (per 1024). errs[n]: ICMP hints, errs[n + 1]: sendmmsg calls. */
  sendMany(fds: Int32Array, dests: Uint8Array, offs: Int32Array, lens: Int32Array, n: number, data: Uint8Array, errs: Int32Array): number;
  drainSender(fd: number, out: Int32Array): [number, number];
  socketBuffers(fd: number): [number, number];
  closeFd(fd: number): void;
}

/** Bytes per destination record of sendBatch: family, 0, port (u16 LE), 16 address bytes. */
export const DEST_BYTES = 20;
/** Int32 words per error record of drainSender: errno, family, port, 4 words of address. */
export const ERR_WORDS = 7;

export const NATIVE_PATH = join(PACKAGE_ROOT, 'src', 'native', 'build', 'Release', 'udpfast.node');

function load(): { api: UdpFast | null; why: string } {
  if (process.env['UDPREPEATER_NATIVE'] === '0') return { api: null, why: 'disabled by UDPREPEATER_NATIVE=0' };
  if (process.platform !== 'linux') return { api: null, why: `not built for ${process.platform}` };
  try {
    const api = require(NATIVE_PATH) as Partial<UdpFast>;
    // An addon from an older build has another API: using it would crash.
    if (typeof api.openSender !== 'function' || typeof api.drainSender !== 'function' || typeof api.sendMany !== 'function') return { api: null, why: 'an outdated build; run npm run build:native' };
    return { api: api as UdpFast, why: 'loaded' };
  } catch (err) {
    // npm runs the install script (node-gyp) unless scripts are off (--ignore-scripts, npm 12's allowScripts) or the compile failed.
    return { api: null, why: `not built (${(err as Error).message.split('\n')[0]}); build it with npm run build:native in ${PACKAGE_ROOT} (needs python3, make and a C compiler)` };
  }
}

const loaded = load();
/** The native path, or null when only the dgram backend is available. */
export const native: UdpFast | null = loaded.api;
export const nativeStatus: string = loaded.why;

/** The backend used when nothing asks for one: native when it loaded. */
export const DEFAULT_BACKEND: Backend = native === null ? 'dgram' : 'native';

/** The native API, or an error saying why it cannot be used. */
export function requireNative(): UdpFast {
  if (native === null) throw new Error(`the native backend is not available: ${nativeStatus}`);
  return native;
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(constants.errno).map(([name, n]) => [n, name]));

export function errnoName(n: number): string {
  return ERRNO_NAMES.get(n) ?? `E${n}`;
}

/** Errors that mean "the socket buffer is full", not "the peer is gone". */
export const FULL: ReadonlySet<number> = new Set([constants.errno.EAGAIN, constants.errno.EWOULDBLOCK, constants.errno.ENOBUFS]);
