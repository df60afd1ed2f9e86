// libsodium secretbox through the raw WebAssembly exports of
// libsodium-wrappers: keys and scratch buffers are allocated in the wasm heap
// once, so a seal or open costs two copies and one call, with no allocation
// and no exception on a failed open (a forged frame must stay cheap).
//
// Those exports and their calling convention are not libsodium-wrappers'
// public API: package.json pins the package (and its libsodium) exactly, and
// sodiumReady() proves the raw path against the public API with known-answer
// seals and opens before anything uses it, refusing to go on if they differ.

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

/** Must be awaited once before any Secretbox is created; throws when the raw path cannot be trusted. */
export async function sodiumReady(): Promise<void> {
  if (raw !== null) return;
  await sodium.ready;
  if (sodium.crypto_secretbox_KEYBYTES !== KEY_BYTES || sodium.crypto_secretbox_NONCEBYTES !== NONCE_BYTES || sodium.crypto_secretbox_MACBYTES !== MAC_BYTES) {
    throw new Error('libsodium secretbox parameters are not XSalsa20-Poly1305');
  }
  const candidate = (sodium as unknown as { libsodium?: Partial<RawSodium> }).libsodium;
  if (
    candidate === undefined ||
    !(candidate.HEAPU8 instanceof Uint8Array) ||
    typeof candidate._malloc !== 'function' ||
    typeof candidate._crypto_secretbox_easy !== 'function' ||
    typeof candidate._crypto_secretbox_open_easy !== 'function'
  ) {
    throw new Error('libsodium-wrappers no longer exposes the raw secretbox exports this build uses; install the pinned version');
  }
  raw = candidate as RawSodium;
  try {
    const why = knownAnswers();
    if (why !== null) throw new Error(`libsodium raw secretbox disagrees with its public API: ${why}`);
  } catch (err) {
    raw = null;
    throw err;
  }
}

/** Deterministic bytes for the known-answer test. */
function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed * 17 + 7) & 0xff;
  return out;
}

const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((v, i) => v === b[i]);

/**
 * Seals and opens through the raw path and through libsodium-wrappers'
 * public API, for several lengths, and checks they agree; a tampered box must
 * fail to open. Returns null when all agree, else what differed.
 */
export function knownAnswers(): string | null {
  const key = new BoxKey(pattern(KEY_BYTES, 1));
  const box = new Secretbox();
  try {
    for (const len of [0, 1, 300, 4096, 65000]) {
      const nonce = pattern(NONCE_BYTES, len);
      const plain = pattern(len, 3);
      const viaApi = sodium.crypto_secretbox_easy(plain, nonce, pattern(KEY_BYTES, 1));
      const viaRaw = new Uint8Array(len + MAC_BYTES);
      box.seal(key, nonce, plain, viaRaw, 0);
      if (!same(viaApi, viaRaw)) return `seal of ${len} bytes`;
      const opened = box.open(key, nonce, viaApi);
      if (opened === null || !same(opened, plain)) return `open of ${len} bytes`;
      const forged = Uint8Array.from(viaApi);
      forged[forged.length - 1]! ^= 1;
      if (box.open(key, nonce, forged) !== null) return `a tampered box of ${len} bytes opened`;
    }
    return null;
  } finally {
    key.destroy();
    box.destroy();
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

/** A plaintext in the scratch space, for Secretbox.sealStaged. */
export interface Staged {
  readonly ticket: number;
  readonly length: number;
}

/** Scratch space for seal/open; one per process is enough. */
export class Secretbox {
  private readonly nonce: number;
  private readonly input: number;
  private readonly output: number;
  /** The plaintext stage() left in the input scratch; any later stage, seal or open replaces the ticket. */
  private staged: Staged = { ticket: 0, length: -1 };
  private tickets = 0;

  constructor() {
    const l = lib();
    this.nonce = l._malloc(NONCE_BYTES);
    this.input = l._malloc(SCRATCH);
    this.output = l._malloc(SCRATCH);
  }

  /** Frees the scratch space; the box must not be used afterwards. */
  destroy(): void {
    const l = lib();
    l.HEAPU8.fill(0, this.input, this.input + SCRATCH);
    l.HEAPU8.fill(0, this.output, this.output + SCRATCH);
    l._free(this.nonce);
    l._free(this.input);
    l._free(this.output);
  }

  /**
   * Seals `plain` under `key` and `nonce`, writing MAC + ciphertext
   * (plain.length + 16 bytes) into `out` at `at`.
   */
  seal(key: BoxKey, nonce: Uint8Array, plain: Uint8Array, out: Uint8Array, at: number): void {
    const staged = this.stage(plain);
    const l = lib();
    l.HEAPU8.set(nonce, this.nonce);
    this.sealStagedAt(key, out, at, staged);
  }

  /**
   * Copies `plain` into the scratch space once, for any number of
   * sealStaged() calls under different keys (one datagram to many links).
   * Any stage(), seal() or open() in between takes the scratch: the ticket
   * returned here is then refused.
   */
  stage(plain: Uint8Array): Staged {
    if (plain.length + MAC_BYTES > SCRATCH) throw new RangeError('plaintext too large to seal');
    lib().HEAPU8.set(plain, this.input);
    this.staged = { ticket: ++this.tickets, length: plain.length };
    return this.staged;
  }

  /**
   * Seals the staged plaintext under `key`, with the nonce `prefix` (16
   * bytes, a frame header) followed by 8 zero bytes, writing MAC +
   * ciphertext into `out` at `at`. Throws when `staged` is not what the
   * scratch holds now.
   */
  sealStaged(key: BoxKey, prefix: Uint8Array, out: Uint8Array, at: number, staged: Staged): void {
    if (prefix.length !== NONCE_BYTES - 8) throw new RangeError('a staged nonce prefix is 16 bytes');
    const heap = lib().HEAPU8;
    heap.set(prefix, this.nonce);
    heap.fill(0, this.nonce + NONCE_BYTES - 8, this.nonce + NONCE_BYTES);
    this.sealStagedAt(key, out, at, staged);
  }

  private sealStagedAt(key: BoxKey, out: Uint8Array, at: number, staged: Staged): void {
    if (staged.ticket !== this.staged.ticket) throw new Error('the staged plaintext was replaced before it was sealed');
    const n = staged.length;
    const l = lib();
    // The input scratch stays as staged: crypto_secretbox_easy writes only the output.
    if (l._crypto_secretbox_easy(this.output, this.input, n, 0, this.nonce, key.pointer) !== 0) {
      throw new Error('crypto_secretbox_easy failed');
    }
    out.set(l.HEAPU8.subarray(this.output, this.output + n + MAC_BYTES), at);
  }

  /** Opens `boxed` (MAC + ciphertext); null when it is not authentic. */
  open(key: BoxKey, nonce: Uint8Array, boxed: Uint8Array): Buffer | null {
    if (boxed.length < MAC_BYTES || boxed.length > SCRATCH) return null;
    this.staged = { ticket: ++this.tickets, length: -1 };
    const l = lib();
    l.HEAPU8.set(nonce, this.nonce);
    l.HEAPU8.set(boxed, this.input);
    if (l._crypto_secretbox_open_easy(this.output, this.input, boxed.length, 0, this.nonce, key.pointer) !== 0) return null;
    const n = boxed.length - MAC_BYTES;
    return Buffer.from(l.HEAPU8.subarray(this.output, this.output + n));
  }
}

let shared: Secretbox | null = null;

/**
 * The process's one sealing scratch: a plaintext staged for several links
 * and group keys (Secretbox.stage) must be sealed in the box it was staged in.
 */
export function scratchBox(): Secretbox {
  return (shared ??= new Secretbox());
}
