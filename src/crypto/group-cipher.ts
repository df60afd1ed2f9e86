// A channel's group key in identity mode (docs/PROTOCOL.md, "Group keys and
// revocation"):
// the repeater seals each live datagram once under it, for every member that
// holds it; members open those frames (version 3, type 4: the key id in the
// header where a link frame has the receiver's link id).
//
// Invariants:
// - The nonce is the 16-byte header (key id, counter) and 8 zero bytes; the
//   counter starts at 1 and never repeats under a key, and only the repeater
//   that drew the key seals with it.
// - A receiver moves the key's replay window only after the MAC, and refuses
//   a frame of another key id without trial decryption.
// - destroy() zeroes the key in both places it lives (JS and the wasm heap).

import sodium from 'libsodium-wrappers';
import { ReplayWindow } from '../judge/replay.js';
import { MAC_BYTES } from '../wire/frame.js';
import { DATA_HEADER, dataNonce, decodeDataHeader, type HandshakeError, LinkType, writeDataHeader } from '../wire/handshake.js';
import { stageForLinks } from './link-keys.js';
import { BoxKey, KEY_BYTES, type Staged, scratchBox } from './secretbox.js';

export type GroupRefusal = HandshakeError | 'unknown_key' | 'auth_failed' | 'replay';

export class GroupCipher {
  private counter = 0;
  private readonly window = new ReplayWindow();
  private box: BoxKey | null = null;

  constructor(
    /** Random, never 0: the id in the headers of frames under this key. */
    readonly keyId: number,
    private readonly key: Uint8Array,
  ) {
    if (keyId === 0 || key.length !== KEY_BYTES) throw new RangeError('a group key has a non-zero id and 32 bytes');
  }

  /** A new key drawn by a repeater. */
  static draw(usedIds: (id: number) => boolean): GroupCipher {
    let id = 0;
    while (id === 0 || usedIds(id)) id = sodium.randombytes_buf(4).reduce((a, b) => a * 256 + b, 0) >>> 0;
    return new GroupCipher(id, sodium.randombytes_buf(KEY_BYTES));
  }

  /** The key's bytes, for the GroupKey envelope that hands it to one member under its link. */
  get secret(): Uint8Array {
    return this.key;
  }

  /** The first counter not sealed yet (a replacement says the old key ends there). */
  get nextCounter(): number {
    return this.counter + 1;
  }

  seal(plain: Uint8Array): Buffer {
    return this.sealStaged(stageForLinks(plain));
  }

  /** A plaintext staged for links (link-keys.ts stageForLinks) sealed as this key's next group frame. */
  sealStaged(staged: Staged): Buffer {
    const out = Buffer.allocUnsafe(DATA_HEADER + MAC_BYTES + staged.length);
    writeDataHeader(out, { type: LinkType.GroupData, id: this.keyId, counter: ++this.counter });
    this.box ??= new BoxKey(this.key);
    scratchBox().sealStaged(this.box, out.subarray(0, DATA_HEADER), out, DATA_HEADER, staged);
    return out;
  }

  /** The plaintext and counter of a group frame under this key, or why not. */
  open(frame: Uint8Array): { plain: Uint8Array; counter: number } | GroupRefusal {
    const h = decodeDataHeader(frame);
    if (typeof h === 'string') return h;
    if (h.type !== LinkType.GroupData || h.id !== this.keyId) return 'unknown_key';
    let plain: Uint8Array;
    try {
      plain = sodium.crypto_secretbox_open_easy(frame.subarray(DATA_HEADER), dataNonce(frame), this.key);
    } catch {
      return 'auth_failed';
    }
    if (!this.window.accept(h.counter)) return 'replay';
    return { plain, counter: h.counter };
  }

  destroy(): void {
    this.key.fill(0);
    this.box?.destroy();
    this.box = null;
  }
}
