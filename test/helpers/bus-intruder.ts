// An identity that tries to speak on the identity bus, through the project's
// own code paths: the same IdentityBusSeal the repeaters use, loaded with its
// identity file and a peers file that lists the repeaters as role=repeater
// (an agent's peers file), over a real NATS connection. It announces its bus
// sending key sealed for every repeater and seals bus messages with it, as a
// repeater would. Given a node's identity (listed role=node by the
// repeaters), what the repeaters refuse is the role, not a malformed frame:
// given a repeater's identity, the same helper is let in (the control of
// test/system/cluster.identity.test.ts).

import { connect, type NatsConnection } from '@nats-io/transport-node';
import { IdentityBusSeal } from '../../src/cluster/bus-identity.js';
import { Logger } from '../../src/base/log.js';
import { loadPeersFile } from '../../src/config/peers-file.js';
import { loadIdentity } from '../../src/crypto/identity.js';
import { sodiumReady } from '../../src/crypto/secretbox.js';
import { decodeBusKey, isBusKey } from '../../src/wire/bus-key.js';
import { type BusBody, encodeBus } from '../../src/wire/bus.js';

export class BusIntruder {
  /** Bus origins of the announcements heard, by sender identity id (hex). */
  readonly origins = new Map<string, bigint>();
  private beat: NodeJS.Timeout | null = null;

  private constructor(
    readonly seal: IdentityBusSeal,
    readonly nc: NatsConnection,
    readonly cluster: string,
  ) {}

  static async join(url: string, cluster: string, identityFile: string, peersFile: string): Promise<BusIntruder> {
    await sodiumReady();
    const seal = new IdentityBusSeal(loadIdentity(identityFile), loadPeersFile(peersFile), 30_000, new Logger('error', 'json', { write: () => undefined }));
    const nc = await connect({ servers: url, noEcho: true });
    const me = new BusIntruder(seal, nc, cluster);
    seal.attach({
      publish: (p) => {
        nc.publish(`${cluster}.ctl`, p);
        return true;
      },
      whenConnected: (fn) => fn(),
      count: () => undefined,
      forget: () => undefined,
    });
    nc.subscribe(`${cluster}.ctl`, {
      callback: (err, m) => {
        if (err !== null || !isBusKey(m.data)) return;
        const a = decodeBusKey(m.data);
        if (typeof a !== 'string') me.origins.set(a.senderIdHex, a.origin);
      },
    });
    await nc.flush();
    return me;
  }

  get origin(): bigint {
    return this.seal.origin;
  }

  /** Announces its sending key again (a repeater answers a newcomer's; this one keeps trying). */
  async announce(): Promise<void> {
    this.seal.announce();
    await this.nc.flush();
  }

  /** Seals `body` as a repeater would and publishes it on `subject` (default: the control subject). */
  async publish(body: BusBody, subject = `${this.cluster}.ctl`): Promise<void> {
    this.nc.publish(subject, this.seal.seal(encodeBus({ sender: this.seal.origin, sentAtMs: Date.now(), body }))!);
    await this.nc.flush();
  }

  /** Heartbeats every 300 ms as a repeater that holds the state and has been steady for a day (the best peer to ask). */
  heartbeat(name: string): void {
    const body = (): BusBody => ({ type: 'heartbeat', name, startedAtMs: Date.now() - 86_400_000, intervalMs: 300, subscribers: 0, stateReady: true, steadyMs: 86_400_000 });
    void this.publish(body()).catch(() => undefined);
    this.beat = setInterval(() => void this.publish(body()).catch(() => undefined), 300);
  }

  async close(): Promise<void> {
    if (this.beat !== null) clearInterval(this.beat);
    await this.nc.close();
    this.seal.dispose();
  }
}
