// The status endpoint: the status page (/, status-page.ts), /metrics
// (Prometheus text), /healthz, and any JSON views the daemon registers (e.g.
// /subscribers). Read-only, GET only.
//
// It must never cost the daemon its data path: a view that fails answers 500
// (its body is built before any header is sent), idle and slow clients are
// cut off within seconds, and connections are capped so they cannot take the
// file descriptors subscribers and listeners need.

import { createServer, type Server } from 'node:http';
import type { Registry } from 'prom-client';
import { describe } from '../base/errors.js';
import type { Logger } from '../base/log.js';
import type { Endpoint } from '../wire/address.js';
import { COMMON_HEADERS, STATUS_PAGE } from './status-page.js';

export type JsonView = () => unknown;

/** Limits of the status server. */
export const STATUS_LIMITS = {
  /** Concurrent connections; more are refused at accept. */
  maxConnections: 64,
  /** A request's headers must arrive within this. */
  headersTimeoutMs: 5_000,
  /** The whole request within this. */
  requestTimeoutMs: 5_000,
  /** An idle kept-alive connection is closed after this. */
  keepAliveTimeoutMs: 4_000,
  /**
   * A socket with no activity at all is closed after this. Kept below the
   * headers timeout: Node 20 never fires a socket timeout longer than it.
   */
  idleTimeoutMs: 4_000,
};

export class StatusServer {
  private constructor(private readonly server: Server) {}

  get port(): number {
    const a = this.server.address();
    return typeof a === 'object' && a !== null ? a.port : 0;
  }

  static listen(ep: Endpoint, register: Registry, views: Record<string, JsonView>, log: Logger): Promise<StatusServer> {
    const server = createServer(
      {
        requestTimeout: STATUS_LIMITS.requestTimeoutMs,
        headersTimeout: STATUS_LIMITS.headersTimeoutMs,
        keepAliveTimeout: STATUS_LIMITS.keepAliveTimeoutMs,
        // Node checks the two timeouts above only this often (30 s by default).
        connectionsCheckingInterval: 1_000,
      },
      (req, res) => {
        const path = (req.url ?? '/').split('?')[0]!;
        for (const [name, value] of Object.entries(COMMON_HEADERS)) res.setHeader(name, value);
        if (req.method !== 'GET' && req.method !== 'HEAD') {
          res.writeHead(405, { allow: 'GET, HEAD' }).end();
          return;
        }
        const page = STATUS_PAGE.get(path);
        if (page !== undefined) {
          res.writeHead(200, { ...page.headers, 'content-length': page.body.length }).end(page.body);
          return;
        }
        if (path === '/metrics') {
          register.metrics().then(
            (text) => res.writeHead(200, { 'content-type': register.contentType }).end(text),
            (err: unknown) => {
              log.error('metrics collection failed', { error: describe(err) });
              if (!res.headersSent) res.writeHead(500).end();
            },
          );
          return;
        }
        const view = views[path];
        if (view === undefined) {
          res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found; try ${['/', '/metrics', ...Object.keys(views)].join(' ')}\n`);
          return;
        }
        let body: string;
        try {
          body = JSON.stringify(view(), null, 1) + '\n';
        } catch (err) {
          log.error('status view failed', { path, error: describe(err) });
          res.writeHead(500, { 'content-type': 'text/plain' }).end('internal error\n');
          return;
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end(body);
      },
    );
    server.maxConnections = STATUS_LIMITS.maxConnections;
    server.setTimeout(STATUS_LIMITS.idleTimeoutMs, (socket) => socket.destroy());
    return new Promise((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => reject(new Error(bindFailure(ep, err))));
      server.listen({ port: ep.port, host: ep.host }, () => {
        server.removeAllListeners('error');
        server.on('error', (err) => log.error('status server error', { error: err.message }));
        // A client that breaks the protocol gets an answer and is cut off, never an exception.
        server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
          const status = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
          if (socket.writable) socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\n\r\n`);
          else socket.destroy();
        });
        resolve(new StatusServer(server));
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}

/**
 * Starts the status server when an address is configured, logging where it
 * listens; on failure runs `cleanup` (the daemon's half-started parts) and
 * rethrows.
 */
export async function startStatus(
  ep: Endpoint | null,
  register: Registry,
  views: Record<string, JsonView>,
  log: Logger,
  cleanup: () => unknown,
): Promise<StatusServer | null> {
  if (ep === null) return null;
  try {
    const status = await StatusServer.listen(ep, register, views, log);
    log.info('status server listening', { address: ep.text, port: status.port });
    return status;
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** Why the status server cannot listen on `ep`, and what to say instead (--metrics). */
export function bindFailure(ep: Endpoint, err: NodeJS.ErrnoException): string {
  const head = `cannot serve metrics on ${ep.text}`;
  const instead = 'give --metrics another HOST:PORT, or --metrics off';
  if (err.code === 'EADDRINUSE') return `${head}: the address is in use (another repeater or agent on this host?); ${instead}`;
  if (err.code === 'EADDRNOTAVAIL') return `${head}: ${ep.host} is not an address of this host; ${instead}`;
  if (err.code === 'EACCES') return `${head}: permission denied (a port below 1024?); ${instead}`;
  return `${head}: ${err.message}; ${instead}`;
}
