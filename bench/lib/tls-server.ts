// One HTTPS server of the TLS bench (bench/tls.ts), in its own process so its
// CPU time is its own. With --repeater it joins the repeater through the
// session cache (sealed: session ids and the fleet's ticket keys); without,
// it is a lone server (OpenSSL's own session cache, a ticket key of its own).
// Reports on stdin "report": {handshakes, resumed, cpuMs} as one JSON line.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { constants } from 'node:crypto';
import { parseArgs } from 'node:util';
import { Logger } from '../../src/base/log.js';
import { SessionCache, sessionIdContext } from '../../src/tls/session-cache.js';

const { values } = parseArgs({
  options: { cert: { type: 'string' }, key: { type: 'string' }, repeater: { type: 'string' }, 'key-file': { type: 'string' }, 'no-ticket': { type: 'boolean', default: false } },
});

async function main(): Promise<void> {
  const cache = values.repeater === undefined ? null : await SessionCache.start({ repeater: values.repeater, bind: '127.0.0.1:0', keyFiles: [values['key-file']!], logger: new Logger('error', 'json') });
  let handshakes = 0;
  let resumed = 0;
  const server = createServer(
    {
      cert: readFileSync(values.cert!),
      key: readFileSync(values.key!),
      sessionIdContext: sessionIdContext('ssl'),
      ...(values['no-ticket'] ? { secureOptions: constants.SSL_OP_NO_TICKET } : {}),
    },
    (_req, res) => res.end('ok\n'),
  );
  server.on('secureConnection', (s) => {
    handshakes++;
    if (s.isSessionReused()) resumed++;
  });
  cache?.attach(server);
  if (cache !== null) {
    // Ready once the fleet's key is loaded: every server then encrypts with the same one.
    await new Promise<void>((resolve) => (cache.ticketKeys().some((k) => k.encrypting) ? resolve() : cache.once('ticketKeys', () => resolve())));
  }
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  let cpu0 = process.cpuUsage();
  process.stdout.write(`${JSON.stringify({ port: (server.address() as AddressInfo).port })}\n`);
  process.stdin.setEncoding('utf8').on('data', (d: string) => {
    for (const line of d.split('\n')) {
      if (line === 'reset') {
        handshakes = 0;
        resumed = 0;
        cpu0 = process.cpuUsage();
        process.stdout.write('{"reset":true}\n');
      } else if (line === 'report') {
        const c = process.cpuUsage(cpu0);
        process.stdout.write(`${JSON.stringify({ handshakes, resumed, cpuMs: (c.user + c.system) / 1000 })}\n`);
      }
    }
  });
  process.stdin.on('end', () => {
    server.closeAllConnections();
    server.close();
    void cache?.close().then(() => process.exit(0));
    if (cache === null) process.exit(0);
  });
}

main().catch((err: unknown) => {
  process.stderr.write(`tls-server: ${String(err)}\n`);
  process.exit(1);
});
