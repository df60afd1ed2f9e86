// libsodium secretbox through the raw WebAssembly exports of
// libsodium-wrappers: keys and scratch buffers are allocated in the wasm heap
// once, so a seal or open costs two copies and one call, with no allocation
// and no exception on a failed open (a forged frame must stay cheap).

import sodium from 'libsodium-wrappers';
import { MAC_BYTES, NONCE_BYTES } from '../wire/frame.js';

export const KEY_BYTES = 32;
/** Largest plaintext/ciphertext handled; a UDP payload is smaller. */
const SCRATCH = 65536 + MAC_BYTES;

interface RawSodium {
  HEAPU8: Uint8Array;
  _malloc(n: number): number;
  _free(p: number): void;
  _crypto_secretbox_easy(c: number, m: number, mlenLo: number, mlenHi: number, n: number, k: number): number;
  _crypto_secretbox_open_easy(m: number, c: number, clenLo: number, clenHi: number, n: number, k: number): number;
}

let raw: RawSodium | null = null;

/** Must be awaited once before any Secretbox is created. */
export async function sodiumReady(): Promise<void> {
  await sodium.ready;
  raw = (sodium as unknown as { libsodium: RawSodium }).libsodium;
  if (sodium.crypto_secretbox_KEYBYTES !== KEY_BYTES || sodium.crypto_secretbox_NONCEBYTES !== NONCE_BYTES || sodium.crypto_secretbox_MACBYTES !== MAC_BYTES) {
    throw new Error('libsodium secretbox parameters are not XSalsa20-Poly1305');
  }
}

function lib(): RawSodium {
  if (raw === null) throw new Error('sodiumReady() was not awaited');
  return raw;
}

/** A key held in the wasm heap. Unsafe for concurrent use (JS is single-threaded). */
export class BoxKey {
  private ptr: number;

  constructor(key: Uint8Array) {
    if (key.length !== KEY_BYTES) throw new Error(`a secretbox key is ${KEY_BYTES} bytes, got ${key.length}`);
    const l = lib();
    this.ptr = l._malloc(KEY_BYTES);
    l.HEAPU8.set(key, this.ptr);
  }

  get pointer(): number {
    if (this.ptr === 0) throw new Error('key was destroyed');
    return this.ptr;
  }

  /** Zeroes and frees the key. */
  destroy(): void {
    if (this.ptr === 0) return;
    const l = lib();
    l.HEAPU8.fill(0, this.ptr, this.ptr + KEY_BYTES);
    l._free(this.ptr);
    this.ptr = 0;
  }
}

/** Scratch space for seal/open; one per process is enough. */
export class Secretbox {
  private readonly nonce: number;
  private readonly input: number;
  private readonly output: number;

  constructor() {
    const l = lib();
    this.nonce = l._malloc(NONCE_BYTES);
    this.input = l._malloc(SCRATCH);
    this.output = l._malloc(SCRATCH);
  }

  /**
   * Seals `plain` under `key` and `nonce`, writing MAC + ciphertext
   * (plain.length + 16 bytes) into `out` at `at`.
   */
  seal(key: BoxKey, nonce: Uint8Array, plain: Uint8Array, out: Uint8Array, at: number): void {
    if (plain.length + MAC_BYTES > SCRATCH) throw new RangeError('plaintext too large to seal');
    const l = lib();
    l.HEAPU8.set(nonce, this.nonce);
    l.HEAPU8.set(plain, this.input);
    if (l._crypto_secretbox_easy(this.output, this.input, plain.length, 0, this.nonce, key.pointer) !== 0) {
      throw new Error('crypto_secretbox_easy failed');
    }
    const heap = l.HEAPU8;
    out.set(heap.subarray(this.output, this.output + plain.length + MAC_BYTES), at);
  }

  /** Opens `boxed` (MAC + ciphertext); null when it is not authentic. */
  open(key: BoxKey, nonce: Uint8Array, boxed: Uint8Array): Buffer | null {
    if (boxed.length < MAC_BYTES || boxed.length > SCRATCH) return null;
    const l = lib();
    l.HEAPU8.set(nonce, this.nonce);
    l.HEAPU8.set(boxed, this.input);
    if (l._crypto_secretbox_open_easy(this.output, this.input, boxed.length, 0, this.nonce, key.pointer) !== 0) return null;
    const n = boxed.length - MAC_BYTES;
    return Buffer.from(l.HEAPU8.subarray(this.output, this.output + n));
  }
}
