// The status endpoint: /metrics (Prometheus text), /healthz, and any JSON
// views the daemon registers (e.g. /subscribers). Read-only, GET only.

import { createServer, type Server } from 'node:http';
import type { Registry } from 'prom-client';
import type { Endpoint } from '../wire/address.js';
import { describe } from '../base/errors.js';
import type { Logger } from '../base/log.js';

export type JsonView = () => unknown;

export class StatusServer {
  private constructor(private readonly server: Server) {}

  get port(): number {
    const a = this.server.address();
    return typeof a === 'object' && a !== null ? a.port : 0;
  }

  static listen(ep: Endpoint, register: Registry, views: Record<string, JsonView>, log: Logger): Promise<StatusServer> {
    const server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0]!;
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      if (path === '/metrics') {
        register.metrics().then(
          (text) => res.writeHead(200, { 'content-type': register.contentType }).end(text),
          (err: unknown) => {
            log.error('metrics collection failed', { error: describe(err) });
            res.writeHead(500).end();
          },
        );
        return;
      }
      const view = views[path];
      if (view === undefined) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found; try ${['/metrics', ...Object.keys(views)].join(' ')}\n`);
        return;
      }
      try {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(view(), null, 1) + '\n');
      } catch (err) {
        log.error('status view failed', { path, error: describe(err) });
        res.writeHead(500).end();
      }
    });
    return new Promise((resolve, reject) => {
      server.once('error', (err) => reject(new Error(`cannot serve metrics on ${ep.text}: ${err.message}`)));
      server.listen({ port: ep.port, host: ep.host }, () => {
        server.removeAllListeners('error');
        server.on('error', (err) => log.error('status server error', { error: err.message }));
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
