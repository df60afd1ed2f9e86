// One command to HAProxy's runtime API (its `stats socket`, a UNIX stream
// socket): connect, send the line, read the answer until HAProxy closes,
// which it does after each command outside interactive mode.
//
// Invariants:
// - Bounded: the whole exchange is over within `timeoutMs` (the socket is
//   destroyed then), and an answer longer than MAX_ANSWER_BYTES is cut off
//   and refused; nothing here can hang or crash the agent.
// - The command and the answer are Buffers (they may hold ticket keys); the
//   answer's chunks are zeroed once copied into the one returned.

import { createConnection } from 'node:net';

/** Far above any answer we ask for (a ring of three keys is under 500 bytes). */
export const MAX_ANSWER_BYTES = 64 * 1024;

export type CliResult = { readonly answer: Buffer } | { readonly failure: 'refused' | 'timeout' | 'rejected'; readonly error: string };

/**
 * Sends `command` (one line, ending in a newline) to the socket at `path`.
 * refused: could not connect or the connection broke (no HAProxy there, no
 * permission); timeout: no whole answer in time; rejected: an answer too long.
 */
export function haproxyCommand(path: string, command: Buffer, timeoutMs: number): Promise<CliResult> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const sock = createConnection({ path });
    const finish = (r: CliResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      if ('failure' in r) for (const c of chunks) c.fill(0);
      resolve(r);
    };
    const timer = setTimeout(() => finish({ failure: 'timeout', error: `no answer within ${timeoutMs} ms` }), timeoutMs);
    // Not end(): HAProxy answers, then closes the connection itself.
    sock.once('connect', () => sock.write(command));
    sock.on('data', (d: Buffer) => {
      chunks.push(d);
      size += d.length;
      if (size > MAX_ANSWER_BYTES) finish({ failure: 'rejected', error: `answer longer than ${MAX_ANSWER_BYTES} bytes` });
    });
    sock.once('error', (err: NodeJS.ErrnoException) => finish({ failure: 'refused', error: err.code ?? err.message }));
    sock.once('close', () => {
      const answer = Buffer.concat(chunks);
      for (const c of chunks) c.fill(0);
      finish({ answer });
    });
  });
}
