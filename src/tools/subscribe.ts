// `udprepeater subscribe ADDR --key K --address A [--unsubscribe]`: the
// announce a uWSGI node sends with subscribe2, optionally signed.

import { createSign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Endpoint } from '../wire/address.js';
import { encodeSubscription, type SubscriptionFields, subscriptionVars } from '../wire/subscription.js';
import { emit } from './emit.js';

export interface SignSpec {
  digest: string;
  privateKeyPem: string;
}

/** Parses `DIGEST:/path/private.pem` as uWSGI's `sign=` does. */
export function readSignSpec(text: string): SignSpec {
  const colon = text.indexOf(':');
  if (colon <= 0) throw new Error(`--sign "${text}" is not DIGEST:FILE`);
  const file = text.slice(colon + 1);
  return { digest: text.slice(0, colon), privateKeyPem: readFileSync(file, 'utf8') };
}

/** Builds a subscription; signed ones carry `unix` (now, +1 for unsubscribe, as uWSGI does) and `sign`. */
export function buildSubscription(f: SubscriptionFields, sign?: SignSpec, nowMs = Date.now()): Buffer {
  if (sign === undefined) return encodeSubscription(f);
  const fields = { ...f, unix: Math.floor(nowMs / 1000) + (f.unsubscribe ? 1 : 0) };
  const signer = createSign(sign.digest);
  signer.update(subscriptionVars(fields));
  return encodeSubscription(fields, signer.sign(sign.privateKeyPem));
}

export async function subscribeCommand(to: Endpoint, f: SubscriptionFields, sign?: SignSpec): Promise<void> {
  const buf = buildSubscription(f, sign);
  const what = `${f.unsubscribe ? 'unsubscribe' : 'subscribe'} key=${JSON.stringify(f.key)} address=${f.address}${sign ? ` signed ${sign.digest}` : ''}`;
  await emit(to, buf, what);
}
