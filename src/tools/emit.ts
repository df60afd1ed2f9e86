// Operator tools share this: send one datagram from a fresh unbound socket
// (as uWSGI does) and print exactly what went out.

import { sendOnce } from '../net/io.js';
import type { Endpoint } from '../wire/address.js';

export function hex(buf: Uint8Array): string {
  const lines: string[] = [];
  for (let i = 0; i < buf.length; i += 16) {
    const row = buf.subarray(i, i + 16);
    const bytes = [...row].map((b) => b.toString(16).padStart(2, '0')).join(' ');
    const text = [...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${i.toString(16).padStart(4, '0')}  ${bytes.padEnd(47)}  ${text}`);
  }
  return lines.join('\n');
}

export async function emit(to: Endpoint, buf: Buffer, what: string, out: NodeJS.WritableStream = process.stdout): Promise<void> {
  await sendOnce(to, buf);
  out.write(`sent ${buf.length} bytes to ${to.text}: ${what}\n${hex(buf)}\n`);
}
