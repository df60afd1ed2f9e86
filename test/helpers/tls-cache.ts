// Node HTTPS servers with the session cache attached, and bounded waits on
// the cache's own events (never sleeps).

import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { type SessionCache, sessionIdContext } from '../../src/tls/session-cache.js';
import type { Cert } from './tls.js';

/** A Node HTTPS server on a free loopback port; with `cache`, attached to it. */
export async function httpsServer(cert: Cert, cache: SessionCache | null, attach: { sessions?: boolean; tickets?: boolean } = {}, channelKey = 'ssl'): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  const server = createServer({ cert: readFileSync(cert.cert), key: readFileSync(cert.key), sessionIdContext: sessionIdContext(channelKey) }, (_req, res) => res.end('ok\n'));
  cache?.attach(server, attach);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Resolves once `cache` has applied an update for `key` from the repeater (bounded). */
export function untilApplied(cache: SessionCache, key: Buffer, ms = 5000): Promise<void> {
  if (cache.get(key) !== undefined) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      cache.off('update', on);
      reject(new Error(`session ${key.toString('hex').slice(0, 16)}… not applied within ${ms} ms`));
    }, ms);
    const on = (_op: string, k: Buffer) => {
      if (!k.equals(key)) return;
      clearTimeout(t);
      cache.off('update', on);
      resolve();
    };
    cache.on('update', on);
  });
}

/** Resolves with the id of the first ticket key `cache` loads that `accept` takes (bounded). */
export function untilTicketKey(cache: SessionCache, accept: (id: string) => boolean = () => true, ms = 5000): Promise<string> {
  const current = cache.ticketKeys().find((k) => k.encrypting)?.id;
  if (current !== undefined && accept(current)) return Promise.resolve(current);
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      cache.off('ticketKeys', on);
      reject(new Error(`no ticket key loaded within ${ms} ms`));
    }, ms);
    const on = (id: string) => {
      if (!accept(id)) return;
      clearTimeout(t);
      cache.off('ticketKeys', on);
      resolve(id);
    };
    cache.on('ticketKeys', on);
  });
}
