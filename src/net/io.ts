// The socket layer's whole surface: everything above net/ that sends or
// receives a datagram does it through this file (test/architecture.test.ts
// checks it). It chooses and opens a backend, and is the only place that
// knows both; what a backend implements is in socket-api.ts.

import { isMulticast, type Endpoint } from '../wire/address.js';
import { checkBufferSize, DgramListener } from './dgram-listener.js';
import { DgramFanout } from './dgram-outlet.js';
import { DgramPort, sendOnce } from './dgram-port.js';
import type { Backend, BatchEndHandler, DatagramHandler, DatagramListener, DatagramPort, Fanout, FanoutOptions, ListenOptions, PortOptions } from './socket-api.js';
import { DEFAULT_BACKEND, NATIVE_PATH, native, nativeStatus, requireNative } from './native.js';
import { NativeFanout } from './native-fanout.js';
import { NativeListener } from './native-listener.js';

export * from './socket-api.js';
export { checkBufferSize, DEFAULT_BACKEND, sendOnce };

/**
 * Opens a listener. Multicast groups always use node:dgram (the group is
 * joined per socket); everything else follows `backend`. `onBatchEnd` runs
 * after the last datagram of each receive batch (socket-api.ts).
 */
export async function openListener(backend: Backend, ep: Endpoint, opts: ListenOptions, onMessage: DatagramHandler, onBatchEnd: BatchEndHandler | null = null): Promise<DatagramListener> {
  const multicast = isMulticast(ep.host);
  if (backend === 'native' && !multicast) return new NativeListener(ep, requireNative(), opts, onMessage, onBatchEnd);
  return DgramListener.open(ep, multicast, opts, onMessage, onBatchEnd);
}

/** Opens a port (socket-api.ts DatagramPort) bound to `ep`: node:dgram on every backend. */
export function openPort(ep: Endpoint, opts: PortOptions, onMessage: DatagramHandler): Promise<DatagramPort> {
  return DgramPort.open(ep, opts, onMessage);
}

export function createFanout(backend: Backend, opts: FanoutOptions): Fanout {
  return backend === 'native' ? new NativeFanout(requireNative(), opts) : new DgramFanout(opts);
}

/**
 * What a daemon's start line says about its sockets: the backend, and why
 * (the addon loaded; or why node:dgram runs instead).
 */
export function describeBackend(backend: Backend): { backend: 'native' | 'node:dgram'; native: string } {
  if (backend === 'native') return { backend: 'native', native: `loaded ${NATIVE_PATH}` };
  return { backend: 'node:dgram', native: native === null ? nativeStatus : 'loaded, but node:dgram was asked for' };
}
