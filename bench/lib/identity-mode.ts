// Identity mode (docs/PROTOCOL.md, "Identities and links"): the repeater runs
// with `--identity --peers` and a sealed listener; every node is an identity
// of its own, made with the real `udprepeater keygen --identity`, listed in
// the repeater's peers file (a writer, one node per subscriber, and the
// writers the revocation measurement revokes).
//
// The handshakes are made here, in the bench's Node process, with the
// project's own code (crypto/link-initiator.ts, wire/handshake.ts,
// wire/envelope.ts), from one UDP socket of the harness, as an agent makes
// them from its one port: the repeater answers a HELLO and a SUBSCRIBE to
// their source (path/link-door.ts) and never requires the HELLO to come from
// the address its LinkHello names, so the harness speaks for every node and
// names the C receiver's socket as where to send. Then:
//   - the writer's link is confirmed by one cache set sealed under it (the
//     repeater logs "link confirmed"); the C generator gets its send key
//     k_ir, the repeater's link id and a counter to start above, and seals
//     every datagram as a link frame (native/sealed.h);
//   - each subscriber's link is confirmed by a sealed SUBSCRIBE naming its
//     receiver socket, answered by a MEMBERSHIP to the harness; the C
//     receivers get each link's receive key k_ri and link id (recv's LINK
//     command) and open the copies sealed for them;
//   - with the MEMBERSHIP comes the channel's group key (GROUP_KEY, under the
//     link): the harness takes it as an agent does (member/member-groups.ts:
//     a stale one is ignored, the same one acknowledged again), hands it to
//     that subscriber's receiver socket (recv's GROUP command) and only then
//     acknowledges it under the link (GROUP_KEY_ACK, the agent's fields), so
//     no group frame reaches a receiver before it holds the key; from the ack
//     on the repeater sends that subscriber group frames (type 4);
//   - the harness sends every subscriber's SUBSCRIBE again each announce
//     interval (10 s, the agent's default; the repeater forgets after 30 s).
// Keys go to the C helpers over a stdin pipe (receivers) or a mode-0600
// file in the run's scratch directory (generator), never on a command line.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createSocket, type Socket } from 'node:dgram';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Identity, loadIdentity, type PeerKey, peerKeyFromText } from '../../src/crypto/identity.js';
import { LinkInitiator } from '../../src/crypto/link-initiator.js';
import type { LinkCipher } from '../../src/crypto/link-keys.js';
import { sodiumReady } from '../../src/crypto/secretbox.js';
import { MemberGroups } from '../../src/member/member-groups.js';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { bigintToLong, decodeEnvelope, encodeEnvelope, type Envelope, EnvelopeKind, type GroupKeyAckFields, Role } from '../../src/wire/envelope.js';
import { decodeDataHeader, LinkType, receiverLinkOf } from '../../src/wire/handshake.js';
import { type BenchMode, CHANNEL_KEY } from './modes.js';
import { REPEATER_CLI } from './paths.js';
import { BenchError, type Child, sleep } from './procs.js';
import type { RepeaterFanOut } from './targets.js';

/** How often the harness re-sends each subscriber's SUBSCRIBE (the agent's default --subscribe-interval). */
export const ANNOUNCE_MS = 10_000;

export interface NodeId {
  readonly name: string;
  readonly file: string;
  readonly pub: string;
  readonly identity: Identity;
}

/** A new identity written by the real CLI, and its public key as `pubkey` prints it. */
export function keygenIdentity(dir: string, name: string): { file: string; pub: string } {
  const file = join(dir, `${name}.id`);
  const run = (args: string[]) => {
    try {
      return execFileSync(process.execPath, [REPEATER_CLI, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      throw new BenchError(`udprepeater ${args.join(' ')} failed: ${(err as { stderr?: string }).stderr ?? String(err)}`);
    }
  };
  run(['keygen', '--identity', file]);
  return { file, pub: run(['pubkey', file]).trim() };
}

/** A peers file the repeater accepts (ours, not writable by group or others). */
export function writePeers(file: string, nodes: readonly { name: string; pub: string }[]): void {
  writeFileSync(file, nodes.map((n) => `${n.pub} ${n.name}`).join('\n') + '\n', { mode: 0o644 });
}

/** What a linked repeater gives the driver: the generator's flags (its link), and how to let go. */
export interface Linked {
  genArgs(): string[];
  close(): void;
  readonly note: string;
}

/** The repeater's log lines the harness waits for ("link confirmed", "identities revoked: links dropped"). */
export class LogWatch {
  readonly lines: Array<Record<string, unknown>> = [];
  constructor(child: Child) {
    const prev = child.onStderrLine;
    child.onStderrLine = (line) => {
      prev?.(line);
      if (!line.includes('"link confirmed"') && !line.includes('"identities revoked')) return;
      try {
        if (this.lines.length < 10_000) this.lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        /* not JSON: the repeater's own warnings collect it */
      }
    };
  }

  async wait(match: (r: Record<string, unknown>) => boolean, ms: number, what: string): Promise<Record<string, unknown>> {
    const deadline = Date.now() + ms;
    for (;;) {
      const hit = this.lines.find(match);
      if (hit !== undefined) return hit;
      if (Date.now() > deadline) throw new BenchError(`identity mode: no ${what} from udprepeater within ${ms} ms`);
      await sleep(10);
    }
  }
}

/** A group key the harness took for one subscriber's link, as recv's GROUP command wants it. */
export interface TakenKey {
  readonly link: number;
  readonly keyId: number;
  readonly hexKey: string;
}

/**
 * One UDP socket speaking for many node identities to one repeater: the
 * handshakes, frames sealed under each link, and what the repeater answers
 * (WELCOMEs by the HELLO's link id; MEMBERSHIPs and GROUP_KEYs opened under
 * their link, each GROUP_KEY taken and acknowledged as an agent does).
 */
export class LinkHarness {
  private readonly waiting = new Map<number, (msg: Buffer) => void>();
  private readonly ciphers = new Map<number, LinkCipher>();
  private readonly originLong = bigintToLong(randomBytes(8).readBigUInt64LE(0) | 1n);
  private sequence = 0;
  /** The group keys each link was handed (keyed by its link id, as an agent keys them by repeater). */
  private readonly groups = new MemberGroups();
  /** MEMBERSHIP answers that opened, GROUP_KEYs taken (new) and acknowledged, and frames for us that did not. */
  memberships = 0;
  groupKeys = 0;
  acks = 0;
  refused = 0;
  private lastMembership = new Map<number, number>();
  /** The key id each link acknowledged last. */
  private readonly acked = new Map<number, number>();
  /**
   * Called with a new group key before it is acknowledged (the ack waits for
   * its promise): where the linkRepeater hands it to the receiver socket.
   */
  onGroupKey: ((k: TakenKey) => Promise<unknown> | void) | null = null;

  private constructor(
    private readonly sock: Socket,
    private readonly repeaterPort: number,
  ) {
    sock.on('error', () => undefined);
    sock.on('message', (msg) => this.take(msg));
  }

  static open(repeaterPort: number): Promise<LinkHarness> {
    const s = createSocket({ type: 'udp4', recvBufferSize: 1 << 20 });
    return new Promise((resolve, reject) => {
      s.once('error', reject);
      s.bind(0, '127.0.0.1', () => {
        s.off('error', reject);
        resolve(new LinkHarness(s, repeaterPort));
      });
    });
  }

  get port(): number {
    return this.sock.address().port;
  }

  private take(msg: Buffer): void {
    const id = receiverLinkOf(msg);
    if (id === null) return void this.refused++;
    const w = this.waiting.get(id);
    if (w !== undefined) return w(msg);
    const c = this.ciphers.get(id);
    const opened = c?.open(msg);
    if (c === undefined || opened === undefined || typeof opened === 'string') return void this.refused++;
    const env = decodeEnvelope(opened.plain);
    if (typeof env !== 'string' && env.kind === EnvelopeKind.Membership) {
      this.memberships++;
      this.lastMembership.set(id, Date.now());
    } else if (typeof env === 'string' || !this.takeGroupKey(c, env)) this.refused++;
  }

  /**
   * A GROUP_KEY that opened under `cipher`'s link (to the harness, or pushed
   * to a subscription address after a revocation): taken as an agent takes
   * it (member/member-links.ts takeGroupKey: a stale one is not acknowledged,
   * the same one is again), handed on (onGroupKey) and acknowledged under the
   * link. False when `env` is no GROUP_KEY.
   */
  takeGroupKey(cipher: LinkCipher, env: Envelope): boolean {
    if (env.kind !== EnvelopeKind.GroupKey || env.groupKey === undefined || env.role !== Role.Repeater) return false;
    const g = env.groupKey;
    const link = cipher.secrets.localLink;
    const taken: TakenKey = { link, keyId: g.keyId, hexKey: Buffer.from(g.key).toString('hex') };
    const took = this.groups.take(String(link), g, Date.now());
    if (took === 'stale') return true;
    const ack: GroupKeyAckFields = { keyId: g.keyId, epoch: g.epoch };
    const send = () => {
      this.send(this.seal(cipher, { kind: EnvelopeKind.GroupKeyAck, channelKey: env.channelKey, groupKeyAck: ack }));
      this.acks++;
      this.acked.set(link, g.keyId);
    };
    if (took === 'same') return void send(), true;
    this.groupKeys++;
    void Promise.resolve(this.onGroupKey?.(taken)).then(send, () => undefined);
    return true;
  }

  /** Waits until `cipher`'s link acknowledged a group key (at most `ms`); its key id. */
  async groupAcked(cipher: LinkCipher, ms: number, what: string): Promise<number> {
    const deadline = Date.now() + ms;
    for (;;) {
      const k = this.acked.get(cipher.secrets.localLink);
      if (k !== undefined) return k;
      if (Date.now() > deadline) throw new BenchError(`identity mode: no GROUP_KEY for ${what} within ${ms} ms`);
      await sleep(10);
    }
  }

  /**
   * What reached a subscription address of `cipher`'s link (the revocation
   * measurement's observer, opened in Node): a link frame under the link, or
   * a group frame under a key the link took, as its Envelope; a GROUP_KEY
   * pushed there is taken and acknowledged. Null for anything else.
   */
  openAt(cipher: LinkCipher, msg: Uint8Array): { env: Envelope; group: boolean } | null {
    const h = decodeDataHeader(msg);
    if (typeof h === 'string') return null;
    let plain: Uint8Array;
    if (h.type === LinkType.GroupData) {
      const o = this.groups.open(String(cipher.secrets.localLink), msg, Date.now());
      if (typeof o === 'string') return null;
      plain = o;
    } else {
      const o = cipher.open(msg);
      if (typeof o === 'string') return null;
      plain = o.plain;
    }
    const env = decodeEnvelope(plain);
    if (typeof env === 'string' || this.takeGroupKey(cipher, env)) return null;
    return { env, group: h.type === LinkType.GroupData };
  }

  send(buf: Uint8Array): void {
    this.sock.send(buf, this.repeaterPort, '127.0.0.1');
  }

  /** HELLO and WELCOME for `node`, the LinkHello naming `address`; retried (a HELLO or WELCOME lost) up to 5 times. */
  async link(node: NodeId, repeater: PeerKey, address: string): Promise<LinkCipher> {
    const init = new LinkInitiator(node.identity, repeater);
    try {
      for (let attempt = 0; attempt < 5; attempt++) {
        const hello = init.hello(Date.now(), { channelKey: CHANNEL_KEY, address });
        const id = init.pendingLink;
        const got = new Promise<Buffer | null>((resolve) => {
          const t = setTimeout(() => resolve(null), 1500);
          this.waiting.set(id, (m) => {
            clearTimeout(t);
            resolve(m);
          });
        });
        this.send(hello);
        const w = await got;
        this.waiting.delete(id);
        if (w === null) continue;
        const done = init.welcome(w, Date.now());
        if (typeof done === 'string') throw new BenchError(`identity mode: the WELCOME to ${node.name} was refused (${done})`);
        this.ciphers.set(done.cipher.secrets.localLink, done.cipher);
        return done.cipher;
      }
      throw new BenchError(`identity mode: no WELCOME for ${node.name} after 5 HELLOs`);
    } finally {
      init.destroy();
    }
  }

  /** An Envelope sealed under `cipher`, as an agent seals it (member/member-links.ts seal). */
  seal(cipher: LinkCipher, f: { kind: EnvelopeKind; datagram?: Buffer; address?: string; channelKey?: string; groupKeyAck?: GroupKeyAckFields }): Buffer {
    const plain = encodeEnvelope(
      {
        kind: f.kind,
        channelKey: f.channelKey ?? CHANNEL_KEY,
        sequence: ++this.sequence,
        sentAtMs: Date.now(),
        role: Role.Agent,
        datagram: f.datagram ?? null,
        trace: null,
        address: f.address ?? null,
        receiver: `127.0.0.1:${this.repeaterPort}`,
        ...(f.groupKeyAck === undefined ? {} : { groupKeyAck: f.groupKeyAck }),
      },
      this.originLong,
    );
    return Buffer.from(cipher.seal(plain));
  }

  /** A sealed SUBSCRIBE naming `address`, sent until its MEMBERSHIP comes back (at most 5 s). */
  async subscribe(cipher: LinkCipher, address: string): Promise<void> {
    const id = cipher.secrets.localLink;
    const since = Date.now();
    for (let i = 0; i < 10; i++) {
      this.send(this.seal(cipher, { kind: EnvelopeKind.Subscribe, address }));
      for (let t = 0; t < 50; t++) {
        if ((this.lastMembership.get(id) ?? 0) >= since) return;
        await sleep(10);
      }
    }
    throw new BenchError(`identity mode: no MEMBERSHIP answered the SUBSCRIBE for ${address}`);
  }

  close(): void {
    this.onGroupKey = null;
    this.groups.destroy();
    for (const c of this.ciphers.values()) c.destroy();
    this.ciphers.clear();
    try {
      this.sock.close();
    } catch {
      /* closed already */
    }
  }
}

export interface IdentitySetup {
  readonly dir: string;
  readonly repeater: { file: string; pub: string; key: PeerKey };
  readonly peersFile: string;
  readonly writer: NodeId;
  readonly nodes: readonly NodeId[];
  /** Writers the revocation measurement revokes, one per repetition. */
  readonly revocable: readonly NodeId[];
}

/** Every identity of the run, made by the real CLI, and the repeater's peers file listing the nodes. */
export async function makeIdentities(dir: string, subscribers: number, revocable: number): Promise<IdentitySetup> {
  await sodiumReady();
  const node = (name: string): NodeId => {
    const k = keygenIdentity(dir, name);
    return { name, ...k, identity: loadIdentity(k.file) };
  };
  const r = keygenIdentity(dir, 'repeater');
  const key = peerKeyFromText(r.pub);
  if (typeof key === 'string') throw new BenchError(`udprepeater pubkey printed a key the project refuses: ${key}`);
  const writer = node('writer');
  const nodes = Array.from({ length: subscribers }, (_, i) => node(`node-${i + 1}`));
  const rev = Array.from({ length: revocable }, (_, i) => node(`revoked-${i + 1}`));
  const peersFile = join(dir, 'peers');
  writePeers(peersFile, [writer, ...nodes, ...rev]);
  return { dir, repeater: { ...r, key }, peersFile, writer, nodes, revocable: rev };
}

/** A cache set the writer seals to confirm its link (no receiver is armed for it). */
export const confirmSet = (tag: string) => encodeCacheSet(Buffer.from(`bench-link-confirm-${tag}`), Buffer.from('confirm'), 0);

let linkFiles = 0;

/**
 * Links the writer and one node per receiver port with a started repeater
 * and hands the keys to the C helpers: the generator's in a file, each
 * receiver's through `recv`'s LINK command.
 */
export async function linkRepeater(s: IdentitySetup, rep: RepeaterFanOut, ports: readonly number[], recv: Child): Promise<Linked> {
  if (ports.length > s.nodes.length) throw new BenchError(`identity mode: ${ports.length} subscribers, ${s.nodes.length} node identities made`);
  const log = new LogWatch(rep.child);
  const h = await LinkHarness.open(rep.inputPort);
  let timer: NodeJS.Timeout | undefined;
  try {
    const t0 = Date.now();
    const writer = await h.link(s.writer, s.repeater.key, `127.0.0.1:${h.port}`);
    h.send(h.seal(writer, { kind: EnvelopeKind.CacheDatagram, datagram: confirmSet(String(rep.inputPort)) }));
    await log.wait((r) => r['msg'] === 'link confirmed' && r['peer'] === s.writer.name, 5000, `"link confirmed" for ${s.writer.name}`);
    const subs: Array<{ cipher: LinkCipher; address: string }> = [];
    // Which receiver socket each link subscribed; during the setup a key is acknowledged only once
    // recv holds it (one command at a time: recv's answers are read in order). Later keys (the
    // repeater hands new ones only after a restart or revocation, neither of which happens during
    // a measurement) are handed over without waiting, so no answer interleaves with a DUMP.
    const portOf = new Map<number, number>();
    let setup = true;
    h.onGroupKey = (k) => {
      const port = portOf.get(k.link);
      if (port === undefined) return undefined;
      recv.send(`GROUP ${port} ${k.keyId} ${k.hexKey}`);
      return setup ? recv.nextLine((l) => l === `OK GROUP ${port} ${k.keyId}`, 10_000, `OK GROUP ${port} from the receivers`) : undefined;
    };
    const keyIds = new Set<number>();
    for (const [i, port] of ports.entries()) {
      const address = `127.0.0.1:${port}`;
      const cipher = await h.link(s.nodes[i]!, s.repeater.key, address);
      const id = cipher.secrets.localLink;
      recv.send(`LINK ${port} ${id} ${Buffer.from(cipher.secrets.receive).toString('hex')}`);
      await recv.nextLine((l) => l === `OK LINK ${port} ${id}`, 10_000, `OK LINK ${port} from the receivers`);
      portOf.set(id, port);
      await h.subscribe(cipher, address);
      keyIds.add(await h.groupAcked(cipher, 5000, `${s.nodes[i]!.name}'s link`));
      subs.push({ cipher, address });
    }
    setup = false;
    const deadline = Date.now() + 10_000;
    while (((await rep.metrics()).get('udprepeater_subscribers') ?? 0) < ports.length) {
      if (Date.now() > deadline) throw new BenchError(`identity mode: udprepeater does not count ${ports.length} subscribers`);
      await sleep(50);
    }
    timer = setInterval(() => {
      for (const x of subs) h.send(h.seal(x.cipher, { kind: EnvelopeKind.Subscribe, address: x.address }));
    }, ANNOUNCE_MS);
    timer.unref();
    const keyFile = join(s.dir, `writer-link-${++linkFiles}.key`);
    writeFileSync(keyFile, writer.secrets.send, { mode: 0o600 });
    const remote = writer.secrets.remoteLink;
    // Counters the generator starts above: far above the one the harness used, and above every earlier run's (each sends < 1000 frames per ms).
    let last = 1;
    const note = `identity mode: writer and ${ports.length} node identities linked in ${Date.now() - t0} ms (handshakes by the harness, keys to gen and recv; group key ${[...keyIds].join(', ')} taken and acknowledged for every subscriber)`;
    return {
      note,
      genArgs: () => {
        last = Math.max(Date.now() * 1000, last + 1e9);
        return ['--link-key', keyFile, '--link-id', String(remote), '--link-counter', String(last), '--channel-key', CHANNEL_KEY];
      },
      close: () => {
        clearInterval(timer);
        h.close();
      },
    };
  } catch (err) {
    clearInterval(timer);
    h.close();
    throw err;
  }
}

/** Identity mode over a setup: the repeater's flags, the receivers' --links, and linkRepeater for each started repeater. */
export function identityMode(s: IdentitySetup): BenchMode {
  const fail = (what: string) => (): never => {
    throw new BenchError(`internal: identity mode has no ${what}`);
  };
  return {
    name: 'identity',
    summary: `link and group frames (sealed listener with --identity/--peers; a writer and one node identity per subscriber, handshakes by the bench; channel key "${CHANNEL_KEY}")`,
    repeaterArgs: (listen) => ['--listen-sealed', `${listen},key=${CHANNEL_KEY}`, '--identity', s.repeater.file, '--peers', s.peersFile],
    subscribeDatagram: fail('subscription datagram (the harness links and subscribes)'),
    genArgs: () => [],
    recvArgs: () => ['--links'],
    floorArgs: fail('floor (the floor speaks no links)'),
    link: (rep, ports, recv) => linkRepeater(s, rep, ports, recv),
  };
}
