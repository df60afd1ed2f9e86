// Hostile input: random and mutated datagrams (cache updates, subscriptions,
// sealed frames) at plain and sealed listeners. Nothing may escape, every
// datagram that arrives must be accounted for (forwarded, one drop reason, or
// an accepted subscription), and valid traffic between the garbage must keep
// flowing, in order. The stream is seeded: ADVERSARIAL_SEED reproduces it.

import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { KeyRing } from '../../src/crypto/keyring.js';
import { sodiumReady } from '../../src/crypto/secretbox.js';
import { FuzzRig } from '../helpers/adversarial-fuzz.js';
import {
  accountingProblems,
  EscapeTrap,
  ledgerFromMetrics,
  ledgerOf,
  nonZero,
  scrape,
  SEED,
  snmpUdp,
  udpDrops,
  udpSocket } from '../helpers/adversarial.js';
import { Daemon } from '../helpers/daemon.js';
import { newKeyFile } from '../helpers/keys.js';
import { freePort } from '../helpers/net.js';
import { Scope } from '../helpers/scope.js';
import type { TestRepeater } from '../helpers/repeater.js';

const scope = new Scope(() => trap.dispose());
const { sender } = scope;
const receiver = (host?: string) => scope.receiver(host);
const repeater = (args: string[]) => scope.repeater(args);

const IN_PROCESS = Number(process.env['ADVERSARIAL_DATAGRAMS'] ?? 100_000);
const CLI_SHARE = Math.round(IN_PROCESS / 4);
const BATCH = 200;
const MAX_DATAGRAM = 4096;

const trap = new EscapeTrap();
before(() => sodiumReady());
const channel = (r: TestRepeater, name: string) => r.handle.repeater.channels.get(name)!;

console.log(`adversarial seed ${SEED} (set ADVERSARIAL_SEED to reproduce or vary)`);


describe('hostile datagrams at a running repeater', () => {
  test(`${IN_PROCESS} random and mutated datagrams at plain and sealed listeners (in-process): no escape, exact accounting, valid traffic flows in order`, async () => {
    const key = newKeyFile();
    const ring = KeyRing.load([key]);
    const foreign = KeyRing.load([newKeyFile()]);
    const [pp, sp] = [await freePort(), await freePort()];
    const refPlain = await receiver();
    const refSealed = await receiver();
    const r = await repeater([
      '--listen', `127.0.0.1:${pp},channel=plain`,
      '--listen-sealed', `127.0.0.1:${sp},channel=sealed`,
      '--key-file', key,
      '--to', `${refPlain.address},channel=plain`,
      '--to', `${refSealed.address},channel=sealed,sealed`,
      '--max-datagram', String(MAX_DATAGRAM),
      '--max-subscribers', '32',
      '--subscribe-rate', '1000000',
      '--subscribe-burst', '1000000',
      '--dead-after', '1',
      '--log-level', 'info',
    ]);
    const ports = [pp, sp, refPlain.port, refSealed.port];
    const kernelBefore = udpDrops(ports);
    const snmpBefore = snmpUdp();
    const rig = new FuzzRig({ plainPort: pp, sealedPort: sp, maxDatagram: MAX_DATAGRAM, ring, foreign }, refPlain, refSealed, sender, SEED);
    rig.diagnose = () =>
      JSON.stringify({
        escaped: trap.errors.slice(0, 3),
        sent: rig.sent,
        received: { plain: ledgerOf(channel(r, 'plain').stats).received, sealed: ledgerOf(channel(r, 'sealed').stats).receivedByKind['sealed'] },
        listeners: [pp, sp].map((p) => udpSocket(p)),
        plain: nonZero(ledgerOf(channel(r, 'plain').stats).dropped),
        sealed: nonZero(ledgerOf(channel(r, 'sealed').stats).dropped),
        sealedEvents: nonZero(ledgerOf(channel(r, 'sealed').stats).events),
        refSealedOutlet: (({ sent, dropped, errors }) => ({ sent, dropped, errors }))(channel(r, 'sealed').find(refSealed.address)!.outlet),
        kernelDrops: udpDrops(ports) - kernelBefore,
        lastLog: r.tap.records.slice(-5),
      });
    const t0 = performance.now();
    await rig.run(IN_PROCESS, BATCH);
    const seconds = (performance.now() - t0) / 1000;
    const kernelDrops = udpDrops(ports) - kernelBefore;
    const snmpAfter = snmpUdp();

    const plain = ledgerOf(channel(r, 'plain').stats);
    const sealed = ledgerOf(channel(r, 'sealed').stats);
    const plainRef = channel(r, 'plain').find(refPlain.address)!.outlet;
    const sealedRef = channel(r, 'sealed').find(refSealed.address)!.outlet;
    console.log(
      JSON.stringify(
        {
          seed: SEED,
          datagrams: rig.sent.plain + rig.sent.sealed,
          plainListener: rig.sent.plain,
          sealedListener: rig.sent.sealed,
          seconds: Number(seconds.toFixed(2)),
          perSecond: Math.round((rig.sent.plain + rig.sent.sealed) / seconds),
          categories: rig.tally,
          plain: { forwarded: refPlain.received.length, dropped: nonZero(plain.dropped), events: nonZero(plain.events), received: nonZero(plain.receivedByKind) },
          sealed: { forwarded: refSealed.received.length, dropped: nonZero(sealed.dropped), events: nonZero(sealed.events), received: nonZero(sealed.receivedByKind) },
          dynamicSubscribers: { plain: channel(r, 'plain').plain.dynamicSize, sealed: channel(r, 'sealed').sealed.dynamicSize },
          kernelDropsAtOurSockets: kernelDrops,
          hostRcvbufErrors: snmpAfter['RcvbufErrors']! - snmpBefore['RcvbufErrors']!,
        },
        null,
        1,
      ),
    );

    trap.check('the hostile stream');
    assert.equal(kernelDrops, 0, 'the kernel dropped datagrams at our sockets: the pacing is too fast for this machine, accounting below would be meaningless');
    // Valid traffic kept flowing: the plain reference got exactly what the oracle says, in order.
    assert.equal(refPlain.received.length, rig.expectedPlain.length, 'plain reference: wrong number of datagrams');
    for (let i = 0; i < rig.expectedPlain.length; i++) {
      if (!refPlain.received[i]!.equals(rig.expectedPlain[i]!)) {
        assert.fail(`plain reference datagram ${i}: got ${refPlain.received[i]!.toString('hex').slice(0, 120)} want ${rig.expectedPlain[i]!.toString('hex').slice(0, 120)}`);
      }
    }
    assert.deepEqual(rig.sealedBad, [], 'the sealed reference got frames that do not open or carry garbage');
    assert.deepEqual(rig.sealedMarkers(), Array.from({ length: rig.markerCount }, (_, i) => `smarker-${i + 1}`), 'sealed markers lost or out of order');
    // The references' own counters agree with what they received: nothing was queued away.
    assert.equal(plainRef.sent, refPlain.received.length);
    assert.equal(sealedRef.sent, refSealed.received.length);
    assert.equal(plainRef.dropped + sealedRef.dropped, 0);
    // Accounting, per channel.
    const problems = [
      ...accountingProblems('plain channel', rig.sent.plain, refPlain.received.length, plain),
      ...accountingProblems('sealed channel', rig.sent.sealed, refSealed.received.length, sealed),
    ];
    assert.deepEqual(problems, []);
    ring.destroy();
    foreign.destroy();
  });

  test(`${CLI_SHARE} of them at the real binary: it keeps running, forwards the valid ones, and its /metrics balance`, async () => {
    const key = newKeyFile();
    const ring = KeyRing.load([key]);
    const foreign = KeyRing.load([newKeyFile()]);
    const [pp, sp] = [await freePort(), await freePort()];
    const refPlain = await receiver();
    const refSealed = await receiver();
    const d = await Daemon.serve([
      '--listen', `127.0.0.1:${pp},channel=plain`,
      '--listen-sealed', `127.0.0.1:${sp},channel=sealed`,
      '--key-file', key,
      '--to', `${refPlain.address},channel=plain`,
      '--to', `${refSealed.address},channel=sealed,sealed`,
      '--max-datagram', String(MAX_DATAGRAM),
      '--max-subscribers', '32',
      '--subscribe-rate', '1000000',
      '--subscribe-burst', '1000000',
      '--dead-after', '1',
      '--log-level', 'info',
      '--metrics', '127.0.0.1:0',
    ]);
    scope.track({ close: () => d.stop() });
    const mport = await d.metricsPort();
    const ports = [pp, sp, refPlain.port, refSealed.port];
    const kernelBefore = udpDrops(ports);
    const rig = new FuzzRig({ plainPort: pp, sealedPort: sp, maxDatagram: MAX_DATAGRAM, ring, foreign }, refPlain, refSealed, sender, SEED + 1);
    rig.diagnose = () => JSON.stringify({ exitCode: d.child.exitCode, fatal: d.log.matching('fatal error, exiting'), sent: rig.sent, listeners: [pp, sp].map((p) => udpSocket(p)) });
    const t0 = performance.now();
    await rig.run(CLI_SHARE, BATCH);
    const seconds = (performance.now() - t0) / 1000;
    const kernelDrops = udpDrops(ports) - kernelBefore;
    const samples = await scrape(mport);
    const plain = ledgerFromMetrics(samples, 'plain');
    const sealed = ledgerFromMetrics(samples, 'sealed');
    console.log(
      JSON.stringify({
        seed: SEED + 1,
        datagrams: rig.sent.plain + rig.sent.sealed,
        seconds: Number(seconds.toFixed(2)),
        plain: { forwarded: refPlain.received.length, dropped: nonZero(plain.dropped) },
        sealed: { forwarded: refSealed.received.length, dropped: nonZero(sealed.dropped) },
        kernelDropsAtOurSockets: kernelDrops,
      }),
    );
    assert.equal(d.child.exitCode, null, 'the repeater exited');
    assert.deepEqual(d.log.matching('fatal error, exiting'), []);
    assert.deepEqual(d.log.records.filter((x) => x.level === 'error'), [], 'error lines in the log');
    assert.equal(kernelDrops, 0, 'the kernel dropped datagrams at our sockets: pacing too fast for this machine');
    assert.equal(refPlain.received.length, rig.expectedPlain.length);
    for (let i = 0; i < rig.expectedPlain.length; i++) assert.ok(refPlain.received[i]!.equals(rig.expectedPlain[i]!), `plain reference datagram ${i} differs`);
    assert.deepEqual(rig.sealedBad, []);
    assert.equal(rig.sealedMarkers().length, rig.markerCount);
    const problems = [
      ...accountingProblems('plain channel (metrics)', rig.sent.plain, refPlain.received.length, plain),
      ...accountingProblems('sealed channel (metrics)', rig.sent.sealed, refSealed.received.length, sealed),
    ];
    const exit = await d.stop();
    assert.equal(exit.code, 0, 'the repeater did not stop cleanly');
    assert.deepEqual(problems, []);
    ring.destroy();
    foreign.destroy();
  });
});
