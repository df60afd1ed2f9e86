// TLS session tickets read byte by byte, to prove which key a real server
// (nginx, HAProxy, Node) encrypted one with, and in which layout.

import { createDecipheriv, createHmac } from 'node:crypto';
import { connect } from 'node:tls';

/** The ticket a Node client gets from `port` (TLS `version`), read before the connection closes. */
export function fetchTicket(port: number, version: 'TLSv1.2' | 'TLSv1.3'): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, servername: 'localhost', rejectUnauthorized: false, minVersion: version, maxVersion: version }, () => s.write('GET / HTTP/1.0\r\n\r\n'));
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error('no ticket within 5 s'));
    }, 5000);
    s.on('session', () => {
      const ticket = s.getTLSTicket();
      if (ticket === undefined) return;
      clearTimeout(t);
      s.destroy();
      resolve(ticket);
    });
    s.on('data', () => undefined);
    s.on('error', (err) => {
      clearTimeout(t);
      reject(err);
    });
  });
}

/**
 * Checks an OpenSSL ticket (key name 16, IV 16, AES-CBC ciphertext, HMAC-SHA256 32)
 * against key material read as name, HMAC key, AES key.
 */
export function opensTicket(ticket: Buffer, name: Buffer, hmac: Buffer, aes: Buffer): boolean {
  if (!ticket.subarray(0, 16).equals(name)) return false;
  const mac = createHmac('sha256', hmac).update(ticket.subarray(0, ticket.length - 32)).digest();
  if (!mac.equals(ticket.subarray(ticket.length - 32))) return false;
  const d = createDecipheriv(aes.length === 32 ? 'aes-256-cbc' : 'aes-128-cbc', aes, ticket.subarray(16, 32));
  const plain = Buffer.concat([d.update(ticket.subarray(32, ticket.length - 32)), d.final()]);
  return plain[0] === 0x30; // a DER SSL_SESSION
}
