// uWSGI subscription datagrams (modifier1 224): modifier2 0 subscribes or
// refreshes, 1 unsubscribes; the body is vars. docs/PROTOCOL.md, "Subscriptions".

import { checkHeader, decodeVars, encodePacket, encodeVars, HEADER_SIZE, MODIFIER1_SUBSCRIPTION, type WireError } from './uwsgi.js';

export const SUBSCRIBE = 0;
export const UNSUBSCRIBE = 1;
/** uWSGI refuses keys and addresses longer than this. */
export const MAX_NAME = 0xff;
/** uWSGI knows 16 subscription vars; a packet with more is hostile or broken. */
export const MAX_VARS = 32;

export interface Subscription {
  readonly unsubscribe: boolean;
  readonly key: string;
  readonly address: string;
  readonly modifier1: number;
  readonly modifier2: number;
  readonly cores: number;
  readonly load: number;
  readonly weight: number;
  /** The signer's clock (ASCII seconds) when the packet is signed. */
  readonly unix: number | null;
  readonly sign: Buffer | null;
  /** Bytes covered by `sign`: the body from the header up to the sign var. */
  readonly signed: Buffer | null;
}

function decimal(v: Buffer | undefined): number | null | 'bad' {
  if (v === undefined || v.length === 0) return null;
  if (v.length > 15) return 'bad';
  let n = 0;
  for (const c of v) {
    if (c < 0x30 || c > 0x39) return 'bad';
    n = n * 10 + (c - 0x30);
  }
  return n;
}

export function decodeSubscription(buf: Buffer): Subscription | WireError {
  const bad = checkHeader(buf);
  if (bad !== undefined) return bad;
  if (buf[0] !== MODIFIER1_SUBSCRIPTION) return 'unknown_command';
  const cmd = buf[3];
  if (cmd !== SUBSCRIBE && cmd !== UNSUBSCRIBE) return 'unknown_command';
  const vars = decodeVars(buf, HEADER_SIZE, buf.length, MAX_VARS);
  if (typeof vars === 'string') return vars;
  // Duplicates are refused and `sign` must come last: otherwise bytes outside
  // the signed region could change what a signed packet means.
  const byName = new Map<string, Buffer>();
  for (const v of vars) {
    if (byName.has(v.key)) return 'malformed';
    byName.set(v.key, v.value);
  }
  const last = vars[vars.length - 1];
  const signStart = last !== undefined && last.key === 'sign' ? last.start : -1;
  if (byName.has('sign') && signStart < 0) return 'malformed';
  const key = byName.get('key');
  const address = byName.get('address');
  if (key === undefined || key.length === 0) return 'empty_key';
  if (key.length > MAX_NAME || address === undefined || address.length === 0 || address.length > MAX_NAME) {
    return 'malformed';
  }
  const nums: number[] = [];
  for (const name of ['modifier1', 'modifier2', 'cores', 'load', 'weight', 'unix']) {
    const n = decimal(byName.get(name));
    if (n === 'bad') return 'malformed';
    nums.push(n ?? -1);
  }
  const sign = byName.get('sign') ?? null;
  return {
    unsubscribe: cmd === UNSUBSCRIBE,
    key: key.toString('latin1'),
    address: address.toString('latin1'),
    modifier1: Math.max(nums[0]!, 0),
    modifier2: Math.max(nums[1]!, 0),
    cores: Math.max(nums[2]!, 0),
    load: Math.max(nums[3]!, 0),
    weight: Math.max(nums[4]!, 0),
    unix: nums[5]! < 0 ? null : nums[5]!,
    sign,
    signed: sign === null ? null : buf.subarray(HEADER_SIZE, signStart),
  };
}

export interface SubscriptionFields {
  key: string;
  address: string;
  unsubscribe?: boolean;
  modifier1?: number;
  modifier2?: number;
  cores?: number;
  load?: number;
  weight?: number;
  /** When set, a `unix` var follows the standard vars (signed subscriptions). */
  unix?: number;
}

/** The vars uWSGI sends, in uWSGI's order, without `sign`. */
export function subscriptionVars(f: SubscriptionFields): Buffer {
  const pairs: Array<[string, string]> = [
    ['key', f.key],
    ['address', f.address],
    ['modifier1', String(f.modifier1 ?? 0)],
    ['modifier2', String(f.modifier2 ?? 0)],
    ['cores', String(f.cores ?? 1)],
    ['load', String(f.load ?? 0)],
    ['weight', String(f.weight ?? 0)],
  ];
  if (f.unix !== undefined) pairs.push(['unix', String(f.unix)]);
  return encodeVars(pairs);
}

/** A subscription packet; `sign`, when given, is appended as the last var. */
export function encodeSubscription(f: SubscriptionFields, sign?: Uint8Array): Buffer {
  let body = subscriptionVars(f);
  if (sign !== undefined) body = Buffer.concat([body, encodeVars([['sign', sign]])]);
  return encodePacket(MODIFIER1_SUBSCRIPTION, f.unsubscribe ? UNSUBSCRIBE : SUBSCRIBE, body);
}
