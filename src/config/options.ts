// Every tunable of `serve` and `agent`, with its default, in one table.
// The CLI and the config file are both generated from these specs, so a flag
// and its config-file key can never drift apart.

export type OptionKind = 'string' | 'int' | 'number' | 'bool' | 'list';

export interface OptionSpec {
  /** Long flag name without dashes; also the config-file key. */
  readonly name: string;
  readonly kind: OptionKind;
  readonly help: string;
  /** Placeholder shown in help, e.g. ADDR. */
  readonly arg?: string;
  readonly short?: string;
  readonly default?: string | number | boolean | readonly string[];
  /** Boolean options that default to true are spelled `--no-NAME` on the CLI; `help` then describes --no-NAME. */
  readonly negatable?: boolean;
  /** Not accepted in a config file (e.g. the config path itself). */
  readonly cliOnly?: boolean;
}

export type RawValue = string | number | boolean | string[];
export type RawOptions = Record<string, RawValue>;

export const DEFAULT_LISTEN = '127.0.0.1:7171';
/** Not the repeater's default listener: both may run on one host. */
export const DEFAULT_AGENT_LOCAL = '127.0.0.1:7170';
export const DEFAULT_METRICS = '127.0.0.1:9171';
export const LOOPBACK_ALLOW: readonly string[] = ['127.0.0.0/8', '::1/128'];

const common: OptionSpec[] = [
  { name: 'config', short: 'c', kind: 'string', arg: 'FILE', help: 'read options from FILE (key = value lines); SIGHUP reloads it', cliOnly: true },
  { name: 'log-level', kind: 'string', arg: 'LEVEL', default: 'info', help: 'debug, info, warn or error' },
  { name: 'log-format', kind: 'string', arg: 'FORMAT', default: 'json', help: 'json (one object per line) or text' },
];

const network: OptionSpec[] = [
  { name: 'recv-buffer', kind: 'int', arg: 'BYTES', default: 4 << 20, help: 'SO_RCVBUF asked for each listener (the kernel caps it at net.core.rmem_max)' },
  { name: 'send-buffer', kind: 'int', arg: 'BYTES', default: 0, help: 'SO_SNDBUF for each outgoing socket (0 = kernel default)' },
  { name: 'max-datagram', kind: 'int', arg: 'BYTES', default: 65507, help: 'drop datagrams larger than this' },
];

const sealing: OptionSpec[] = [
  { name: 'key-file', kind: 'list', arg: 'FILE', default: [], help: 'secretbox key (repeatable): the first seals, every listed key opens; SIGHUP reloads' },
  { name: 'key-dir', kind: 'string', arg: 'DIR', help: 'secretbox keys: every DIR/*.key opens, the file DIR/sealing names the one that seals; SIGHUP lists DIR again (instead of --key-file)' },
  { name: 'max-skew', kind: 'number', arg: 'SECONDS', default: 30, help: 'drop sealed frames whose send time is further than this from our clock' },
  { name: 'identity', kind: 'string', arg: 'FILE', help: 'identity mode: this host\'s own key pair (udprepeater keygen --identity FILE); sealed traffic goes over per-link keys from a handshake with each peer (needs --peers; instead of --key-file/--key-dir, or, on serve while a fleet migrates, beside them for the listeners marked identity)' },
  { name: 'peers', kind: 'string', arg: 'FILE', help: 'identity mode: the identities trusted, one "PUBLICKEY NAME [role=node|repeater] [allow=CIDR]" line each: a repeater links with role=node ones, an agent with role=repeater ones; SIGHUP reloads it (a removed line is revoked)' },
];

export const SERVE_OPTIONS: readonly OptionSpec[] = [
  ...common,
  { name: 'listen', kind: 'list', arg: 'ADDR[,channel=NAME][,key=KEY][,warm-any-source]', default: [DEFAULT_LISTEN], help: 'plain UDP listener (repeatable); each address is a channel unless channel= groups several; key= refuses subscriptions for any other key; warm-any-source: warm subscribers whose subscription came from another address (nodes behind NAT)' },
  { name: 'listen-sealed', kind: 'list', arg: 'ADDR[,channel=NAME][,key=KEY][,tickets][,public=ADDR][,identity]', default: [], help: "sealed listener (repeatable); needs --identity and --peers, or --key-file or --key-dir; identity: agents link to it by identity while the others keep the shared key (both given: a fleet migrating); tickets: the channel's sealed subscribers get the fleet's TLS ticket keys (needs --state-dir); public: the address agents' --repeater names when it is not this host's (NAT, a port forward)" },
  { name: 'to', kind: 'list', arg: 'ADDR[,channel=NAME][,ttl=N][,sealed[,key=K]]', default: [], help: 'static subscriber that never expires (repeatable); without channel= it receives every channel; sealed sends frames (key= is the channel key they carry)' },
  { name: 'allow', kind: 'list', arg: 'CIDR', default: LOOPBACK_ALLOW, help: 'who may send, subscribe, and be subscribed (repeatable); default loopback only' },
  { name: 'allow-any', kind: 'bool', default: false, help: 'accept every source and subscriber address (needed for a non-loopback listener without --allow)' },
  { name: 'tolerance', kind: 'number', arg: 'SECONDS', default: 30, help: 'forget a subscriber that has not re-announced for this long' },
  { name: 'max-subscribers', kind: 'int', arg: 'N', default: 1024, help: 'subscribers per channel; further subscriptions are refused' },
  { name: 'subscribe-rate', kind: 'number', arg: 'PER_SECOND', default: 10, help: 'subscription datagrams accepted per source address per second' },
  { name: 'subscribe-burst', kind: 'int', arg: 'N', default: 40, help: 'subscription datagrams a source may send at once' },
  { name: 'send-queue', kind: 'int', arg: 'N', default: 256, help: 'datagrams queued in memory per subscriber when its socket buffer is full; past it they are dropped' },
  { name: 'dead-after', kind: 'int', arg: 'N', default: 3, help: 'suspend a subscriber after N unreachable errors (ICMP) until it announces again or --dead-retry passes (0: never)' },
  { name: 'dead-retry', kind: 'number', arg: 'SECONDS', default: 30, help: 'how long a suspension lasts without an announce (static outputs are retried after it)' },
  { name: 'repair-deletes', kind: 'bool', default: true, negatable: true, help: 'forward deletes byte for byte instead of in the padded form uWSGI applies (uWSGI ignores its own unpadded deletes)' },
  { name: 'forward-unknown', kind: 'bool', default: false, help: 'forward every datagram that is not a valid subscription, opaquely (generic fan-out)' },
  { name: 'dedup-window', kind: 'number', arg: 'SECONDS', default: 2, help: 'datagrams that cannot carry a loop trace (opaque ones, unrepaired deletes) are dropped when the same bytes passed within this window' },
  { name: 'multicast-interface', kind: 'string', arg: 'IP', help: 'local interface address used to join multicast listeners and to send to multicast --to outputs' },
  { name: 'multicast-ttl', kind: 'int', arg: 'N', default: 1, help: 'default TTL of multicast --to outputs' },
  ...network,
  ...sealing,
  { name: 'subscriptions-sign-check', kind: 'string', arg: 'DIGEST:DIR', help: 'on plain listeners, accept only uWSGI-signed subscriptions verified with DIR/<key>.pem' },
  { name: 'subscriptions-sign-tolerance', kind: 'number', arg: 'SECONDS', default: 30, help: 'clock tolerance for the unix var of signed subscriptions' },
  { name: 'state-dir', kind: 'string', arg: 'DIR', help: 'persist the subscriber registry (and the ticket keys) here so a restart forwards at once' },
  { name: 'warm-join', kind: 'bool', default: true, negatable: true, help: 'send nothing to new subscribers and keep no live state (by default a subscriber new to its channel is sent the live cache: the latest set of every key)' },
  { name: 'warm-rate', kind: 'number', arg: 'PER_SECOND', default: 20_000, help: 'warm-join datagrams per second, shared by every warm join in progress' },
  { name: 'warm-byte-rate', kind: 'number', arg: 'BYTES_PER_SECOND', default: 25_000_000, help: 'warm-join bytes per second, shared by every warm join in progress (at least 65536)' },
  { name: 'warm-cooldown', kind: 'number', arg: 'SECONDS', default: 300, help: 'a plain subscriber address (IP, any port) gets one full warm join per SECONDS; joins toward it meanwhile send only what it was not sent yet (0: every join is full)' },
  { name: 'state-max-bytes', kind: 'int', arg: 'BYTES', default: 64 << 20, help: 'memory bound of the live state of each channel; the oldest entries are evicted first (0 keeps no state: no warm join)' },
  { name: 'save-live-state', kind: 'bool', default: false, help: 'with --state-dir, write the live state (session secrets, in clear) to DIR/live-state.pb, mode 0600, at stop; read it back and delete it at start' },
  { name: 'ticket-rotate', kind: 'number', arg: 'SECONDS', default: 3600, help: 'a new TLS ticket key starts encrypting every SECONDS (each is sent to every server one period ahead)' },
  { name: 'ticket-lifetime', kind: 'number', arg: 'SECONDS', default: 3600, help: "how long a ticket key still decrypts after it stopped encrypting: at least the servers' session timeout" },
  { name: 'cluster', kind: 'list', arg: 'nats://HOST:PORT', default: [], help: 'cluster mode: NATS servers of the bus (repeatable); repeaters with the same --cluster-name share one fan-out' },
  { name: 'cluster-name', kind: 'string', arg: 'NAME', default: 'udprepeater', help: 'repeaters with the same name form one cluster' },
  { name: 'cluster-key-file', kind: 'list', arg: 'FILE', default: [], help: "the bus's own secretbox key (repeatable: the first seals, every listed key opens; SIGHUP reloads); never a --key-file, which agents hold" },
  { name: 'cluster-insecure', kind: 'bool', default: false, help: 'accept a cluster without --cluster-key-file: everything on the bus travels in clear' },
  { name: 'cluster-creds', kind: 'string', arg: 'FILE', help: 'NATS credentials file (JWT and nkey) for the bus' },
  { name: 'cluster-user', kind: 'string', arg: 'NAME', help: 'NATS user for the bus (with --cluster-password-file)' },
  { name: 'cluster-password-file', kind: 'string', arg: 'FILE', help: 'file holding the NATS password for --cluster-user' },
  { name: 'cluster-token-file', kind: 'string', arg: 'FILE', help: 'file holding a NATS token for the bus' },
  { name: 'cluster-tls-ca', kind: 'string', arg: 'FILE', help: 'CA certificates to verify the NATS servers with (TLS)' },
  { name: 'cluster-tls-cert', kind: 'string', arg: 'FILE', help: 'client certificate for the NATS servers (with --cluster-tls-key)' },
  { name: 'cluster-tls-key', kind: 'string', arg: 'FILE', help: 'client key for --cluster-tls-cert' },
  { name: 'cluster-dedup-window', kind: 'number', arg: 'SECONDS', default: 1, help: 'how long past the oldest a bus datagram may be (peer timeout + a third + 1 s) a copy of an update is remembered, so the copy another repeater brings is delivered once' },
  { name: 'cluster-peer-timeout', kind: 'number', arg: 'SECONDS', default: 3, help: 'a repeater not heard from for this long is taken for dead and its subscribers move (heartbeats every third of it)' },
  { name: 'metrics', kind: 'string', arg: 'ADDR', default: DEFAULT_METRICS, help: 'HTTP address for /metrics, /healthz and /subscribers ("off" disables)' },
];

export const AGENT_OPTIONS: readonly OptionSpec[] = [
  ...common,
  { name: 'repeater', kind: 'list', arg: 'ADDR', default: [], help: 'sealed listener of the repeater (repeatable: every datagram goes to each)' },
  { name: 'local', kind: 'string', arg: 'ADDR', default: DEFAULT_AGENT_LOCAL, help: "loopback address receiving the node's plain cache updates (the node's cache-udp-node)" },
  { name: 'deliver', kind: 'string', arg: 'ADDR', help: "the node's cache-udp-server (loopback), where opened datagrams are delivered; leave it out on a host without a node (ticket keys only, with --ticket-key-dir)" },
  { name: 'node-user', kind: 'list', arg: 'USER|UID', default: [], help: 'accept datagrams on --local only from UDP sockets of this user (repeatable; default: the owner of the socket bound at --deliver, the node itself)' },
  { name: 'channel-key', kind: 'string', arg: 'KEY', help: 'subscription key announced to the repeater (the uWSGI cache name); frames for any other key are dropped' },
  { name: 'bind', kind: 'string', arg: 'ADDR', help: 'local address (and port) of the socket that talks to the repeaters; frames come back to it (default: any address, any port)' },
  { name: 'advertise', kind: 'string', arg: 'ADDR', help: "address the repeater should send to (default: this host's address on the route to each repeater, and the port of --bind); needed behind NAT" },
  { name: 'subscribe-interval', kind: 'number', arg: 'SECONDS', default: 10, help: 'how often the agent re-announces its subscription (keep it well under the repeater --tolerance)' },
  { name: 'repair-deletes', kind: 'bool', default: true, negatable: true, help: 'deliver deletes byte for byte instead of in the padded form uWSGI applies' },
  { name: 'send-queue', kind: 'int', arg: 'N', default: 256, help: 'datagrams queued in memory per socket when its buffer is full; past it they are dropped' },
  { name: 'ticket-key-dir', kind: 'string', arg: 'DIR', help: "write the fleet's TLS ticket keys here as nginx ssl_session_ticket_key files ticket.0.key (encrypts), ticket.1.key, ... and HAProxy's tls-ticket-keys file haproxy.keys (mode 0600)" },
  { name: 'ticket-key-slots', kind: 'int', arg: 'N', default: 4, help: 'ticket key files written (one ssl_session_ticket_key line each): the current key, the next, and older ones still decrypting' },
  { name: 'ticket-key-size', kind: 'int', arg: 'BYTES', default: 80, help: "80 (AES-256, nginx's 80-byte files) or 48 (AES-128)" },
  { name: 'ticket-reload-command', kind: 'string', arg: 'CMD', help: 'run with /bin/sh -c after the ticket key files changed, e.g. "nginx -s reload" (not after the write that creates them: no server can be using them yet)' },
  { name: 'ticket-reload-timeout', kind: 'number', arg: 'SECONDS', default: 10, help: 'the reload command is killed after this long' },
  { name: 'haproxy-socket', kind: 'list', arg: 'PATH', default: [], help: 'HAProxy runtime API socket (stats socket PATH level admin), repeatable: every ticket key change is pushed to it with set ssl tls-key, no reload (needs --ticket-key-dir)' },
  { name: 'haproxy-check-interval', kind: 'number', arg: 'SECONDS', default: 10, help: 'how often each --haproxy-socket is read back (show tls-keys) and caught up' },
  { name: 'haproxy-timeout', kind: 'number', arg: 'SECONDS', default: 5, help: 'a command to an --haproxy-socket fails after this long' },
  ...network,
  ...sealing,
  { name: 'metrics', kind: 'string', arg: 'ADDR', default: 'off', help: 'HTTP address for /metrics and /healthz ("off" disables)' },
];

/** `keygen`: without --identity it writes a secretbox key to its FILE argument. Command line only. */
export const KEYGEN_OPTIONS: readonly OptionSpec[] = [
  { name: 'identity', kind: 'string', arg: 'FILE', cliOnly: true, help: 'write a new identity (a private key; its public key goes in the peers files of the hosts it talks to) to FILE instead of a secretbox key' },
];

/** Defaults of a spec table as raw values. */
export function defaultsOf(specs: readonly OptionSpec[]): RawOptions {
  const out: RawOptions = {};
  for (const s of specs) {
    if (s.default === undefined) continue;
    out[s.name] = Array.isArray(s.default) ? [...(s.default as readonly string[])] : (s.default as RawValue);
  }
  return out;
}
