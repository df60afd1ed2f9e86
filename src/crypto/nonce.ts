// Nonces that never repeat under a key: a 16-byte random prefix drawn once
// per process, then a 64-bit counter. Drawing 24 random bytes per datagram
// would cost ~50 us in libsodium-wrappers; a counter costs nothing.

import { randomBytes } from 'node:crypto';
import { NONCE_BYTES } from '../wire/frame.js';

const PREFIX = 16;

export class NonceSource {
  private readonly prefix: Buffer;
  private counter = 0;

  constructor(prefix: Buffer = randomBytes(PREFIX)) {
    if (prefix.length !== PREFIX) throw new Error(`nonce prefix must be ${PREFIX} bytes`);
    this.prefix = prefix;
  }

  /** Writes the next nonce into `out` at `at` (24 bytes). */
  next(out: Buffer, at: number): void {
    const n = ++this.counter;
    if (n > Number.MAX_SAFE_INTEGER) throw new Error('nonce counter exhausted; restart the process');
    this.prefix.copy(out, at);
    out.writeUInt32LE(n % 0x1_0000_0000, at + PREFIX);
    out.writeUInt32LE(Math.floor(n / 0x1_0000_0000), at + PREFIX + 4);
  }

  get used(): number {
    return this.counter;
  }
}

export { NONCE_BYTES };
