// uWSGI-signed subscriptions on plain listeners (subscriptions-sign-check):
// an RSA PKCS#1 v1.5 signature with the named digest over the vars before
// `sign`, verified with DIR/<key>.pem; `unix` must stay within the clock
// tolerance and grow for each (key, address), so a captured announce cannot
// be replayed.

import { createPublicKey, getHashes, type KeyObject, verify } from 'node:crypto';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, describe } from '../base/errors.js';
import { checkTrustedDir, readTrusted } from '../base/trust.js';
import type { Logger } from '../base/log.js';
import type { SignCheckConfig } from '../config/serve-config.js';
import type { Subscription } from '../wire/subscription.js';
import type { DropReason } from '../base/stats.js';
import type { SignatureCheck } from './subscriptions.js';

const CACHE_LIMIT = 4096;
const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;

export class UwsgiSignatureCheck implements SignatureCheck {
  private readonly digest: string;
  private readonly keys = new Map<string, KeyObject | null>();

  /**
   * @param lastUnix the newest accepted `unix` per (key, address); owned by
   *   the caller so it survives reloads (else a reload would reopen replays).
   */
  constructor(
    private readonly cfg: SignCheckConfig,
    private readonly log: Logger,
    private readonly lastUnix: Map<string, number>,
  ) {
    const digest = cfg.digest.toLowerCase();
    if (!getHashes().includes(digest)) throw new ConfigError(`--subscriptions-sign-check: unknown digest "${cfg.digest}"`);
    this.digest = digest;
    let st;
    try {
      st = statSync(cfg.dir);
    } catch (err) {
      throw new ConfigError(`--subscriptions-sign-check: ${cfg.dir}: ${describe(err)}`);
    }
    if (!st.isDirectory()) throw new ConfigError(`--subscriptions-sign-check: ${cfg.dir} is not a directory`);
    // A public key planted here lets its holder sign subscriptions: the directory must be ours (base/trust.ts).
    checkTrustedDir(cfg.dir, '--subscriptions-sign-check');
  }

  /** DIR/<key>.pem, loaded once per config (a reload re-reads it). */
  private publicKey(key: string): KeyObject | null {
    const cached = this.keys.get(key);
    if (cached !== undefined) return cached;
    let pub: KeyObject | null = null;
    if (SAFE_NAME.test(key)) {
      const file = join(this.cfg.dir, `${key}.pem`);
      try {
        const pem = readTrusted(file, '--subscriptions-sign-check key');
        if (pem === null) throw new Error('no such file');
        pub = createPublicKey(pem);
      } catch (err) {
        this.log.throttle('warn', `signkey:${key}`, 'no usable public key for signed subscriptions', { key, file, error: describe(err) });
      }
    }
    if (this.keys.size >= CACHE_LIMIT) this.keys.clear();
    this.keys.set(key, pub);
    return pub;
  }

  verify(sub: Subscription, nowMs: number): DropReason | null {
    if (sub.sign === null || sub.signed === null || sub.unix === null) return 'bad_signature';
    const pub = this.publicKey(sub.key);
    if (pub === null) return 'bad_signature';
    let ok = false;
    try {
      ok = verify(this.digest, sub.signed, pub, sub.sign);
    } catch {
      ok = false;
    }
    if (!ok) return 'bad_signature';
    if (Math.abs(nowMs / 1000 - sub.unix) > this.cfg.tolerance) return 'stale_signature';
    // Subscribes and unsubscribes keep separate clocks: uWSGI signs its
    // unsubscribe with unix = now + 1, and a node restarted within that
    // second must still be able to subscribe again. Each kind must grow, so
    // neither a captured announce nor a captured goodbye can be replayed.
    const id = `${sub.unsubscribe ? 'u' : 's'}\0${sub.key}\0${sub.address}`;
    const last = this.lastUnix.get(id);
    if (last !== undefined && sub.unix <= last) return 'stale_signature';
    if (this.lastUnix.size >= CACHE_LIMIT * 16) this.lastUnix.delete(this.lastUnix.keys().next().value as string);
    this.lastUnix.delete(id);
    this.lastUnix.set(id, sub.unix);
    return null;
  }
}
