// Real uWSGI nodes for interop tests. Each node is a uWSGI master with one
// worker running test/fixtures/cacheapp.py, a cache "ssl" whose udp server
// listens on a loopback port, and a subscription to the repeater: exactly the
// two lines of config PROTOCOL.md says a node needs. Tests drive the cache
// over the node's HTTP socket.
//
// Variants (NodeOptions): a node behind an agent sends its cache updates to
// the agent (`cacheNode`) and subscribes nowhere (`subscribeTo: []`); a node
// of a signed-subscription setup adds `sign=DIGEST:/path/private.pem` to each
// subscribe2; a node may announce to several servers (e.g. the repeater and a
// test socket that records the exact datagrams uWSGI sends).
//
// Lifetime: every node runs in its own process group (so SIGKILL reaches the
// worker too) and, where setpriv exists, with a parent-death signal, so no
// uWSGI process outlives the test process even if that is SIGKILLed. Every
// live node is also killed on process exit and on SIGINT/SIGTERM/SIGHUP.
//
// Signals (uWSGI 2.0.21, master mode): SIGINT is the clean stop: the master
// sends the unsubscribe, stops the worker and exits 0 (about a second later).
// SIGQUIT does the same. SIGTERM is a brutal *reload* unless --die-on-term is
// given (it unsubscribes, re-execs, and subscribes again); nodes here run with
// --die-on-term so a stray SIGTERM also stops them, but stop() uses SIGINT.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { eventually, freePort } from './net.js';

/** How long a node may take to become ready, stop, or answer one request. */
export const UWSGI_START_MS = 15_000;
export const UWSGI_STOP_MS = 10_000;
export const HTTP_MS = 3_000;

/** The uWSGI binary: $UDPREPEATER_UWSGI or `uwsgi` from PATH. */
export const UWSGI_BIN = process.env['UDPREPEATER_UWSGI'] ?? 'uwsgi';

export const INSTALL_HINT = 'install with: apt-get install uwsgi-core uwsgi-plugin-python3';

/** The repository root: the nearest directory above `from` holding our package.json. */
export function repoRoot(from = __dirname): string {
  for (let dir = from; ; dir = dirname(dir)) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'udprepeater') return dir;
      } catch {
        // not ours; keep walking
      }
    }
    if (dirname(dir) === dir) throw new Error(`no udprepeater package.json above ${from}`);
  }
}

export const CACHE_APP = join(repoRoot(), 'test', 'fixtures', 'cacheapp.py');

export type Availability = { ok: true; version: string } | { ok: false; reason: string };

let probed: Availability | undefined;

/** Whether uWSGI and its python3 plugin can be loaded here (probed once, bounded). */
export function uwsgiAvailability(): Availability {
  if (probed !== undefined) return probed;
  const r = spawnSync(UWSGI_BIN, ['--need-plugin', 'python3', '--version'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error !== undefined) {
    const code = (r.error as NodeJS.ErrnoException).code;
    probed = { ok: false, reason: code === 'ENOENT' ? `"${UWSGI_BIN}" not found on PATH` : `cannot run "${UWSGI_BIN}": ${r.error.message}` };
  } else if (r.status !== 0) {
    const why = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim().split('\n').slice(-1)[0] ?? '';
    probed = { ok: false, reason: `"${UWSGI_BIN}" cannot load the python3 plugin (${why || `exit ${r.status}`})` };
  } else if (!existsSync(CACHE_APP)) {
    probed = { ok: false, reason: `fixture ${CACHE_APP} is missing` };
  } else {
    probed = { ok: true, version: r.stdout.trim() };
  }
  return probed;
}

/** `setpriv --pdeathsig KILL` when available: the node dies with the test process. */
let deathWrapper: string[] | undefined;
function parentDeathWrapper(): string[] {
  if (deathWrapper === undefined) {
    const r = spawnSync('setpriv', ['--pdeathsig', 'KILL', '--', 'true'], { timeout: 5000 });
    deathWrapper = r.error === undefined && r.status === 0 ? ['setpriv', '--pdeathsig', 'KILL', '--'] : [];
  }
  return deathWrapper;
}

// ---- process bookkeeping: nothing may outlive the run ----

const live = new Set<UwsgiNode>();
let hooksInstalled = false;

/** SIGKILLs every node still running (synchronous: safe in an exit handler). */
export function killAllUwsgi(): void {
  for (const n of live) n.killGroupSync();
}

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', killAllUwsgi);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      killAllUwsgi();
      // Nobody else handles it: die of the signal as we would have.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    });
  }
}

// ---- a node ----

export interface NodeOptions {
  /**
   * The repeater, `host:port`: by default the node's only cache-udp-node and
   * subscription server. Optional when `cacheNode` is given.
   */
  readonly repeater?: string;
  /** Where the node sends its cache updates (cache2 `node=`); default: the repeater. */
  readonly cacheNode?: string;
  /** The cache-udp-server's address (`127.0.0.1:P`), e.g. a restarted node's old one; default: a free port. */
  readonly udp?: string;
  /**
   * Subscription servers, one subscribe2 line each (same key and addr);
   * default: the repeater. `[]` sends no subscriptions (a node behind an agent).
   */
  readonly subscribeTo?: readonly string[];
  /** `DIGEST:/path/private.pem`: every subscribe2 gets `sign=` (signed subscriptions). */
  readonly sign?: string;
  /**
   * With false the node runs without --die-on-term, so SIGTERM is uWSGI's
   * default brutal reload (unsubscribe, re-exec, subscribe again). Default true.
   */
  readonly dieOnTerm?: boolean;
  /** A label for messages. */
  readonly name?: string;
  readonly cache?: string;
  readonly items?: number;
  /** Largest value the cache stores, in bytes (uWSGI refuses anything bigger). */
  readonly blocksize?: number;
  /** Seconds between announces (uWSGI's default is 10). */
  readonly subscribeFreq?: number;
  /**
   * Configure the subscriptions but send none until enableSubscriptions()
   * (uWSGI's --start-unsubscribed, toggled through its master FIFO).
   */
  readonly startUnsubscribed?: boolean;
  readonly extraArgs?: readonly string[];
  readonly ms?: number;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** One uWSGI node with the cache app, started by `UwsgiNode.start`. */
export class UwsgiNode {
  /** Everything the node wrote (stdout and stderr interleaved), capped. */
  output = '';
  readonly exited: Promise<Exit>;
  private lineWaiters: Array<() => void> = [];
  private exitInfo: Exit | null = null;
  /** Set once the master has exited and its group was swept: the pgid may be reused. */
  private groupGone = false;

  private constructor(
    readonly name: string,
    readonly child: ChildProcess,
    readonly httpPort: number,
    /** The node's cache-udp-server, `127.0.0.1:P`: what it announces and where the repeater sends. */
    readonly udpAddress: string,
    readonly cache: string,
    /** Where it sends its cache updates (cache2 `node=`). */
    readonly cacheNode: string,
    /** Its master FIFO (uWSGI creates it; removed when the node exits). */
    readonly fifo: string,
  ) {
    const feed = (d: string) => {
      this.output += d;
      if (this.output.length > 4 << 20) this.output = this.output.slice(-(2 << 20));
      const w = this.lineWaiters;
      this.lineWaiters = [];
      for (const f of w) f();
    };
    child.stdout!.setEncoding('utf8').on('data', feed);
    child.stderr!.setEncoding('utf8').on('data', feed);
    this.exited = new Promise((resolve) => {
      const done = (code: number | null, signal: NodeJS.Signals | null) => {
        if (this.exitInfo !== null) return;
        this.exitInfo = { code, signal };
        // The group may still hold a worker; it must not outlive its master.
        this.killGroupSync();
        this.groupGone = true;
        live.delete(this);
        rmSync(this.fifo, { force: true });
        const w = this.lineWaiters;
        this.lineWaiters = [];
        for (const f of w) f();
        resolve(this.exitInfo);
      };
      child.once('exit', done);
      // Never spawned (e.g. ENOENT): there will be no exit event.
      child.once('error', () => {
        if (child.pid === undefined) done(null, null);
      });
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.exitInfo === null;
  }

  /**
   * Starts a node and resolves once it serves HTTP and its cache udp server
   * runs. Retries with fresh ports if one was taken between probe and bind.
   */
  static async start(opts: NodeOptions): Promise<UwsgiNode> {
    const avail = uwsgiAvailability();
    if (!avail.ok) throw new Error(`uWSGI unavailable: ${avail.reason}; ${INSTALL_HINT}`);
    let lastErr: unknown;
    for (let attempt = 0; attempt < 3; attempt++) {
      const node = await UwsgiNode.spawn(opts);
      try {
        await node.ready(opts.ms ?? UWSGI_START_MS);
        return node;
      } catch (err) {
        lastErr = err;
        await node.kill();
        if (!/Address already in use/.test(node.output)) break;
      }
    }
    throw lastErr;
  }

  private static async spawn(opts: NodeOptions): Promise<UwsgiNode> {
    const cacheNode = opts.cacheNode ?? opts.repeater;
    if (cacheNode === undefined) throw new Error('UwsgiNode.start needs a repeater or a cacheNode');
    const servers = opts.subscribeTo ?? (opts.repeater === undefined ? [] : [opts.repeater]);
    installExitHooks();
    const cache = opts.cache ?? 'ssl';
    const httpPort = await freePort();
    let udpPort = await freePort();
    while (udpPort === httpPort) udpPort = await freePort();
    const udp = opts.udp ?? `127.0.0.1:${udpPort}`;
    const fifo = join(tmpdir(), `udprepeater-uwsgi-${process.pid}-${httpPort}.fifo`);
    const args = [
      '--plugin', 'python3',
      '--strict',
      '--master',
      ...(opts.dieOnTerm === false ? [] : ['--die-on-term']),
      // The worker dies with its master (PR_SET_PDEATHSIG), and a worker whose
      // log pipe is gone (test process killed) must not spin on SIGPIPE.
      '--no-orphans',
      '--ignore-sigpipe',
      '--processes', '1',
      '--need-app',
      '--http-socket', `127.0.0.1:${httpPort}`,
      '--wsgi-file', CACHE_APP,
      '--env', `CACHEAPP_CACHE=${cache}`,
      '--cache2', `name=${cache},items=${opts.items ?? 1000},blocksize=${opts.blocksize ?? 4096},udp=${udp},node=${cacheNode}`,
      ...servers.flatMap((server) => ['--subscribe2', `server=${server},key=${cache},addr=${udp}${opts.sign === undefined ? '' : `,sign=${opts.sign}`}`]),
      '--subscribe-freq', String(opts.subscribeFreq ?? 1),
      ...(opts.startUnsubscribed === true ? ['--start-unsubscribed', '--master-fifo', fifo] : []),
      ...(opts.extraArgs ?? []),
    ];
    const wrap = parentDeathWrapper();
    const [cmd, ...rest] = [...wrap, UWSGI_BIN, ...args];
    const child = spawn(cmd!, rest, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    const node = new UwsgiNode(opts.name ?? `uwsgi@${httpPort}`, child, httpPort, udp, cache, cacheNode, fifo);
    live.add(node);
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', (err) => {
        live.delete(node);
        reject(err);
      });
    });
    return node;
  }

  /** Ready: the cache udp server runs, the worker is up, and /health answers. */
  private async ready(ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    await this.waitForOutput(/\*\*\* udp server for cache "[^"]+" running on /, deadline - Date.now());
    await this.waitForOutput(/spawned uWSGI worker 1 /, deadline - Date.now());
    // The socket is bound before the worker starts, so a connection made now
    // is accepted as soon as the worker is; one retry covers a reset.
    for (;;) {
      try {
        const r = await this.http('GET', '/health', undefined, Math.max(100, deadline - Date.now()));
        if (r.status === 200) return;
        throw new Error(`${this.name}: /health answered ${r.status}`);
      } catch (err) {
        if (!this.running || Date.now() >= deadline) throw this.failure(`not ready: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  /** Resolves when the node's output matches `re`; rejects on exit or after `ms`. */
  async waitForOutput(re: RegExp, ms: number): Promise<RegExpMatchArray> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = this.output.match(re);
      if (m !== null) return m;
      if (!this.running) throw this.failure(`exited (${JSON.stringify(this.exitInfo)}) before printing ${re}`);
      const left = deadline - Date.now();
      if (left <= 0) throw this.failure(`no output matching ${re} within ${ms} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.lineWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  private failure(what: string): Error {
    const tail = this.output.split('\n').slice(-25).join('\n    ');
    return new Error(`${this.name} ${what}; last output:\n    ${tail}`);
  }

  // ---- the cache, through the app ----

  /** Stores `value` under `key` (relative lifetime in seconds, 0 = never); returns the HTTP status. */
  async trySet(key: Buffer | string, value: Buffer | string, expires = 0): Promise<number> {
    const r = await this.http('PUT', `/cache?key=${encodeKey(key)}&expires=${expires}`, Buffer.from(value));
    return r.status;
  }

  async set(key: Buffer | string, value: Buffer | string, expires = 0): Promise<void> {
    const status = await this.trySet(key, value, expires);
    if (status !== 204) throw new Error(`${this.name}: set ${describeKey(key)} answered ${status}`);
    rememberSet(this, key, value, expires);
  }

  /** The value, or null when the key is absent. */
  async get(key: Buffer | string): Promise<Buffer | null> {
    const r = await this.http('GET', `/cache?key=${encodeKey(key)}`);
    if (r.status === 404) return null;
    if (r.status !== 200) throw new Error(`${this.name}: get ${describeKey(key)} answered ${r.status}`);
    return r.body;
  }

  /** Every live entry of the cache (GET /dump), keyed by the key's hex. */
  async dump(): Promise<Map<string, Buffer>> {
    const r = await this.http('GET', '/dump');
    if (r.status !== 200) throw new Error(`${this.name}: dump answered ${r.status}`);
    const out = new Map<string, Buffer>();
    const b = r.body;
    for (let at = 0; at < b.length; ) {
      const klen = b.readUInt16LE(at);
      const key = b.subarray(at + 2, at + 2 + klen);
      const vlen = b.readUInt32LE(at + 2 + klen);
      out.set(key.toString('hex'), Buffer.from(b.subarray(at + 6 + klen, at + 6 + klen + vlen)));
      at += 6 + klen + vlen;
    }
    return out;
  }

  /** Deletes `key`; false when it was not there. */
  async del(key: Buffer | string): Promise<boolean> {
    const r = await this.http('DELETE', `/cache?key=${encodeKey(key)}`);
    if (r.status === 204) return true;
    if (r.status === 404) return false;
    throw new Error(`${this.name}: del ${describeKey(key)} answered ${r.status}`);
  }

  private http(method: string, path: string, body?: Buffer, ms = HTTP_MS): Promise<{ status: number; body: Buffer }> {
    return new Promise((resolve, reject) => {
      let t: NodeJS.Timeout | undefined;
      const settle = (err: Error | null, r?: { status: number; body: Buffer }) => {
        clearTimeout(t);
        if (err !== null) reject(err);
        else resolve(r!);
      };
      const req = request(
        {
          host: '127.0.0.1',
          port: this.httpPort,
          method,
          path,
          agent: false,
          headers: { connection: 'close', ...(body !== undefined ? { 'content-length': body.length, 'content-type': 'application/octet-stream' } : {}) },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => settle(null, { status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
          res.on('error', (err) => settle(err));
        },
      );
      t = setTimeout(() => req.destroy(new Error(`${this.name}: ${method} ${path} got no answer within ${ms} ms`)), ms);
      req.on('error', (err) => settle(err));
      req.end(body);
    });
  }

  /**
   * Gives the node's cache-udp-server socket a receive buffer of `bytes`
   * (capped by net.core.rmem_max), as an operator does for warm joins by
   * raising net.core.rmem_default on node hosts (README.md, "Warm join"):
   * uWSGI has no option for this socket, and the sysctl is global, so the
   * socket is taken from the running master with pidfd_getfd(2) (Linux 5.6,
   * ptrace rights over the node) and set with SO_RCVBUF. Returns the size the
   * kernel reports, or null when that cannot be done here.
   */
  /** Starts the announces of a node started with `startUnsubscribed` ("S" to its master FIFO). */
  enableSubscriptions(): void {
    writeFileSync(this.fifo, 'S');
  }

  raiseReceiveBuffer(bytes: number): number | null {
    const r = spawnSync('python3', ['-c', RAISE_RCVBUF_PY, String(this.pid), this.udpAddress.split(':')[1]!, String(bytes)], { encoding: 'utf8', timeout: 5000 });
    const got = Number(r.stdout.trim());
    return r.status === 0 && got > 0 ? got : null;
  }

  // ---- signals and stopping ----

  /**
   * Sends `sig` to the master only. SIGTERM on a node started with
   * `dieOnTerm: false` is uWSGI's brutal reload: the master unsubscribes,
   * re-execs itself (same pid, same output pipes) and subscribes again.
   */
  signal(sig: NodeJS.Signals): void {
    if (this.running) this.child.kill(sig);
  }

  /** Clean stop: SIGINT to the master (it unsubscribes), then waits for the exit; SIGKILL past `ms`. */
  async stop(ms = UWSGI_STOP_MS): Promise<Exit> {
    if (!this.running) return this.exited;
    this.child.kill('SIGINT');
    const t = setTimeout(() => this.killGroupSync(), ms);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }

  /** SIGKILL to the whole process group (master and worker): a crash, no unsubscribe. */
  async kill(): Promise<Exit> {
    this.killGroupSync();
    return this.exited;
  }

  killGroupSync(): void {
    const pid = this.child.pid;
    if (pid === undefined || this.groupGone) return;
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // the group is already gone
    }
  }
}

/** argv: pid, udp port, bytes. Prints SO_RCVBUF after setting it on the process's socket bound to 127.0.0.1:port. */
const RAISE_RCVBUF_PY = `
import ctypes, os, socket, sys
pid, port, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
inode = None
for line in open('/proc/net/udp'):
    f = line.split()
    if len(f) > 9 and f[1] == '0100007F:%04X' % port:
        inode = f[9]
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(pid)
for fd in os.listdir('/proc/%d/fd' % pid):
    try:
        link = os.readlink('/proc/%d/fd/%s' % (pid, fd))
    except OSError:
        continue
    if inode is not None and link == 'socket:[%s]' % inode:
        local = libc.syscall(438, pidfd, int(fd), 0)  # pidfd_getfd
        if local < 0:
            sys.exit('pidfd_getfd: ' + os.strerror(ctypes.get_errno()))
        s = socket.socket(fileno=local)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        print(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        s.detach()
        os.close(local)
        sys.exit(0)
sys.exit('no socket bound to 127.0.0.1:%d in process %d' % (port, pid))
`;

/** Every byte percent-encoded: binary keys survive the query string. */
function encodeKey(key: Buffer | string): string {
  let out = '';
  for (const b of Buffer.from(key)) out += '%' + b.toString(16).padStart(2, '0');
  return out;
}

function describeKey(key: Buffer | string): string {
  return typeof key === 'string' ? JSON.stringify(key) : `0x${key.toString('hex')}`;
}

/** Bound on a propagation over loopback (normally a millisecond or two). */
export const PROPAGATE_MS = 10_000;

/** A session-like value: random bytes (a NUL first, 0xff last) of `n` bytes. */
export function sessionBytes(n: number): Buffer {
  const b = randomBytes(n);
  b[0] = 0x00;
  b[n - 1] = 0xff;
  return b;
}

/** A TLS-session-id-like key: 32 raw bytes. */
export function sessionId(): Buffer {
  return randomBytes(32);
}

/** Waits until `node` holds `want` under `key` (uWSGI gives no event: its HTTP get is polled). */
/**
 * The last set each key was given through a node, so untilSynced can set it again:
 * loopback drops datagrams too (a full per-CPU backlog, netdev_max_backlog,
 * when other load floods it), and one lost datagram must not fail a test
 * about delivery. Bounded: the oldest are forgotten.
 */
const lastSets = new Map<string, { node: UwsgiNode; value: Buffer; expires: number }>();
const MAX_REMEMBERED = 4096;
/** A set not seen at its target within this long is sent again by its writer. */
export const RESEND_MS = 1500;

function rememberSet(node: UwsgiNode, key: Buffer | string, value: Buffer | string, expires: number): void {
  const k = Buffer.from(key).toString('hex');
  lastSets.delete(k);
  if (lastSets.size >= MAX_REMEMBERED) lastSets.delete(lastSets.keys().next().value as string);
  lastSets.set(k, { node, value: Buffer.from(value), expires });
}

/** Waits until `node` holds `want` under `key`. */
export async function untilValue(node: UwsgiNode, key: Buffer | string, want: Buffer, ms = PROPAGATE_MS): Promise<void> {
  await eventually(
    `${node.name} to hold ${want.length} bytes under ${Buffer.from(key).toString('hex').slice(0, 16)}…`,
    async () => {
      const v = await node.get(key);
      return v !== null && v.equals(want) ? true : undefined;
    },
    ms,
  );
}

/**
 * untilValue for suites about delivery through one path, not about what a
 * repeater must never drop or reorder: while waiting, when the last set of
 * `key` through a node (UwsgiNode.set) was `want`, its writer sets it again
 * every RESEND_MS (idempotent). A repeater that does not forward still fails;
 * a datagram the machine's load dropped does not. Never use it where a
 * repetition could mask the bug under test (duplicate windows, warm joins).
 */
export async function untilSynced(node: UwsgiNode, key: Buffer | string, want: Buffer, ms = PROPAGATE_MS): Promise<void> {
  let resendAt = Date.now() + RESEND_MS;
  await eventually(
    `${node.name} to hold ${want.length} bytes under ${Buffer.from(key).toString('hex').slice(0, 16)}…`,
    async () => {
      const v = await node.get(key);
      if (v !== null && v.equals(want)) return true;
      const w = lastSets.get(Buffer.from(key).toString('hex'));
      if (Date.now() >= resendAt && w !== undefined && w.node !== node && w.value.equals(want)) {
        resendAt = Date.now() + RESEND_MS;
        await w.node.trySet(key, want, w.expires).catch(() => undefined);
      }
      return undefined;
    },
    ms,
  );
}

/** Waits until `node` no longer holds `key`. */
export async function untilAbsent(node: UwsgiNode, key: Buffer | string, ms = PROPAGATE_MS): Promise<void> {
  await eventually(`${node.name} to lose ${Buffer.from(key).toString('hex').slice(0, 16)}…`, async () => ((await node.get(key)) === null ? true : undefined), ms);
}
