// Worker threads for the overload test (loaded with new Worker(__filename)):
//   blast: sends small valid cache updates to a port as fast as it can until
//          told to stop, then reports how many it sent;
//   sink:  binds a UDP socket and never reads it (its event loop is parked in
//          Atomics.wait), so its receive buffer fills: a subscriber that is
//          alive but not reading.
// Loaded as a plain module (e.g. by the test runner) it does nothing.

import { createSocket } from 'node:dgram';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';

export interface BlastData {
  role: 'blast';
  port: number;
  /** Int32Array over a SharedArrayBuffer: [0] becomes 1 to stop. */
  flag: SharedArrayBuffer;
  id: number;
}

export interface SinkData {
  role: 'sink';
  flag: SharedArrayBuffer;
}

/** A cache set as uWSGI sends it, built without importing src (workers load fast). */
function cacheSet(key: string, value: string): Buffer {
  const k = Buffer.from(key);
  const v = Buffer.from(value);
  const e = Buffer.from('0');
  const body = 2 + k.length + 2 + v.length + 2 + e.length;
  const out = Buffer.alloc(4 + body);
  out[0] = 111;
  out.writeUInt16LE(body, 1);
  out[3] = 10;
  let at = out.writeUInt16LE(k.length, 4);
  at += k.copy(out, at);
  at = out.writeUInt16LE(v.length, at);
  at += v.copy(out, at);
  at = out.writeUInt16LE(e.length, at);
  e.copy(out, at);
  return out;
}

async function blast(d: BlastData): Promise<void> {
  const stop = new Int32Array(d.flag);
  const sock = createSocket('udp4');
  await new Promise<void>((resolve) => sock.connect(d.port, '127.0.0.1', resolve));
  const msgs = Array.from({ length: 64 }, (_, i) => cacheSet(`flood-${d.id}-${i}`, 'x'.repeat(24)));
  let sent = 0;
  let errors = 0;
  while (Atomics.load(stop, 0) === 0) {
    for (let i = 0; i < 63; i++) sock.send(msgs[i]!);
    // The last of each batch is awaited: the socket's queue in memory never grows.
    await new Promise<void>((resolve) =>
      sock.send(msgs[63]!, (err) => {
        if (err) errors++;
        resolve();
      }),
    );
    sent += 64;
  }
  sock.close();
  parentPort!.postMessage({ sent, errors });
}

async function sink(d: SinkData): Promise<void> {
  const sock = createSocket('udp4');
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', resolve));
  parentPort!.postMessage({ port: sock.address().port });
  // Park the thread: nothing reads the socket until we are told to go.
  Atomics.wait(new Int32Array(d.flag), 0, 0);
  sock.close();
  parentPort!.postMessage({ done: true });
}

if (!isMainThread && workerData !== null && typeof workerData === 'object' && 'role' in (workerData as object)) {
  const d = workerData as BlastData | SinkData;
  void (d.role === 'blast' ? blast(d) : sink(d));
}

/** Starts `n` blasters at `port`; stop() ends them and returns the datagrams each sent. */
export function startBlasters(port: number, n: number): { stop(): Promise<number[]> } {
  const flag = new SharedArrayBuffer(4);
  const workers = Array.from({ length: n }, (_, id) => new Worker(__filename, { workerData: { role: 'blast', port, flag, id } satisfies BlastData }));
  const done = workers.map(
    (w) =>
      new Promise<number>((resolve, reject) => {
        w.once('message', (m: { sent: number }) => resolve(m.sent));
        w.once('error', reject);
      }),
  );
  return {
    async stop() {
      Atomics.store(new Int32Array(flag), 0, 1);
      const t = setTimeout(() => workers.forEach((w) => void w.terminate()), 5000);
      try {
        return await Promise.all(done);
      } finally {
        clearTimeout(t);
      }
    },
  };
}

/** A bound socket nobody reads; close() wakes its thread and ends it. */
export async function startSink(): Promise<{ port: number; close(): Promise<void> }> {
  const flag = new SharedArrayBuffer(4);
  const w = new Worker(__filename, { workerData: { role: 'sink', flag } satisfies SinkData });
  const port = await new Promise<number>((resolve, reject) => {
    w.once('message', (m: { port: number }) => resolve(m.port));
    w.once('error', reject);
  });
  return {
    port,
    async close() {
      const ended = new Promise<void>((resolve) => w.once('exit', () => resolve()));
      Atomics.store(new Int32Array(flag), 0, 1);
      Atomics.notify(new Int32Array(flag), 0);
      const t = setTimeout(() => void w.terminate(), 2000);
      await ended;
      clearTimeout(t);
    },
  };
}
