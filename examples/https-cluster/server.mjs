#!/usr/bin/env node
// An HTTPS server that shares TLS sessions and ticket keys with the rest of
// its fleet through a udprepeater sealed listener (README, "TLS session
// resumption"):
//
//   node examples/https-cluster/server.mjs --listen 127.0.0.1:8443 \
//       --cert cert.pem --key key.pem --repeater 127.0.0.1:7272 --key-file cluster.key
//
// TLS 1.2 session ids it creates go to the repeater (sealed) and every other
// server's cache; the fleet's ticket keys arrive sealed and are loaded with
// setTicketKeys. Each answer says whether the handshake was resumed.
// Refused options exit 78, like the daemons.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { parseArgs } from 'node:util';
import { ConfigError, SessionCache, sessionIdContext } from 'udprepeater/tls';

const EX_CONFIG = 78;
const log = (msg, fields = {}) => process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), msg, ...fields })}\n`);

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      listen: { type: 'string' },
      cert: { type: 'string' },
      key: { type: 'string' },
      repeater: { type: 'string' },
      'key-file': { type: 'string', multiple: true },
      'channel-key': { type: 'string', default: 'ssl' },
      'session-timeout': { type: 'string', default: '300' },
    },
    strict: true,
  }));
  for (const need of ['listen', 'cert', 'key', 'repeater', 'key-file']) if (opts[need] === undefined) throw new ConfigError(`--${need} is required`);
} catch (err) {
  process.stderr.write(`server.mjs: ${err.message}\nusage: server.mjs --listen HOST:PORT --cert FILE --key FILE --repeater HOST:PORT --key-file FILE\n`);
  process.exit(EX_CONFIG);
}

const colon = opts.listen.lastIndexOf(':');
const host = opts.listen.slice(0, colon).replace(/^\[|\]$/g, '');
const port = Number(opts.listen.slice(colon + 1));
const timeout = Number(opts['session-timeout']);
let cache;
let tls;
try {
  if (colon < 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new ConfigError(`--listen ${opts.listen}: not HOST:PORT`);
  tls = { cert: readFileSync(opts.cert), key: readFileSync(opts.key) };
  cache = await SessionCache.start({ repeater: opts.repeater, keyFiles: opts['key-file'], channelKey: opts['channel-key'], sessionTimeout: timeout });
} catch (err) {
  process.stderr.write(`server.mjs: ${err.message}\n`);
  process.exit(EX_CONFIG);
}

// Every server of the fleet must use the same session id context (and timeout).
const server = createServer({ ...tls, sessionIdContext: sessionIdContext(opts['channel-key']), sessionTimeout: timeout }, (req, res) => {
  res.end(`hello from ${opts.listen}: ${req.socket.getProtocol()}, ${req.socket.isSessionReused() ? 'resumed' : 'full handshake'}\n`);
});
cache.attach(server);
cache.on('ticketKeys', (id) => log('ticket key loaded', { id }));
server.listen(port, host, () => log('listening', { address: server.address(), repeater: opts.repeater, cache: cache.address }));

const stop = async (signal) => {
  log('stopping', { signal, stats: cache.stats });
  server.close();
  server.closeAllConnections();
  await cache.close();
  process.exit(0);
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
