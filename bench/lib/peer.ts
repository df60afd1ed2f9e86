// Another fan-out program measured beside udprepeater and the floor, in the
// same scenarios and the same table: `--peer-cmd 'NAME=COMMAND'` (e.g.
// samplicator). The bench knows nothing of the program; it fills in the
// command line's placeholders and runs it, pinned like every fan-out:
//
//   {port}      the UDP port on 127.0.0.1 it must listen on (chosen free by the bench)
//   {to}        127.0.0.1:PORT of one receiver: the word is repeated for each receiver
//   {rport}     the PORT of one receiver: the word is repeated for each receiver
//   {tolist}    every receiver as 127.0.0.1:PORT, comma-separated, in one word
//   {rports}    every receiver's PORT, comma-separated, in one word
//   {rcvbuf}    the receive buffer the bench gives every socket (--recv-buffer)
//   [ ... ]     the words between a lone [ and a lone ] repeated together for each
//               receiver, e.g. [ --to {to} ] gives --to 127.0.0.1:P1 --to 127.0.0.1:P2 ...
//
// e.g. samplicator: --peer-cmd 'samplicator=/opt/samplicator/samplicate -s 127.0.0.1 -p {port} -b {rcvbuf} 127.0.0.1/{rport}'
//
// The command is split into words like a shell would (single and double
// quotes, backslash) but run without one: no expansion, no redirection; the
// program must stay in the foreground (its pid is the one measured).
// It counts nothing the bench can read, so its output is what the receivers
// got (with what their kernels dropped), and its input what the generator
// sent less the kernel drops at its input socket (/proc/net/udp).

import { createSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { BenchError, Child, sleep } from './procs.js';
import type { FanCounters, FanOut, PeerKind } from './targets.js';

export interface PeerSpec {
  readonly kind: PeerKind;
  readonly name: string;
  /** The command line as given (placeholders unexpanded): what the report prints. */
  readonly template: string;
  readonly words: readonly string[];
}

const RECEIVER_WORD = /\{(to|rport)\}/;

/** Splits a command line into words: '...' literal, "..." with \" and \\, a backslash escaping the next character. */
export function splitWords(text: string): string[] {
  const out: string[] = [];
  let cur = '';
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === "'") {
      const end = text.indexOf("'", i + 1);
      if (end < 0) throw new BenchError(`--peer-cmd: unterminated ' in ${text}`);
      cur += text.slice(i + 1, end);
      i = end;
      inWord = true;
    } else if (c === '"') {
      let j = i + 1;
      for (; j < text.length && text[j] !== '"'; j++) {
        if (text[j] === '\\' && (text[j + 1] === '"' || text[j + 1] === '\\')) j++;
        cur += text[j];
      }
      if (j >= text.length) throw new BenchError(`--peer-cmd: unterminated " in ${text}`);
      i = j;
      inWord = true;
    } else if (c === '\\' && i + 1 < text.length) {
      cur += text[++i];
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) out.push(cur);
      cur = '';
      inWord = false;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (inWord) out.push(cur);
  return out;
}

/** Parses one --peer-cmd: `NAME=COMMAND` or `COMMAND` (named after its program). */
export function parsePeerCmd(text: string): PeerSpec {
  const m = /^([A-Za-z][\w.-]*)=(?=\S)(.*)$/s.exec(text.trim());
  const template = (m === null ? text : m[2]!).trim();
  const words = splitWords(template);
  if (words.length === 0) throw new BenchError('--peer-cmd: empty command');
  const name = m?.[1] ?? words[0]!.split('/').pop()!;
  for (let i = 0, depth = 0; i < words.length; i++) {
    depth += words[i] === '[' ? 1 : words[i] === ']' ? -1 : 0;
    if (depth < 0 || depth > 1 || (i === words.length - 1 && depth !== 0)) throw new BenchError(`--peer-cmd ${name}: [ and ] must pair up, one group at a time`);
  }
  if (!words.some((w) => w.includes('{port}'))) throw new BenchError(`--peer-cmd ${name}: the command must take its listening port from {port}`);
  if (!words.some((w) => RECEIVER_WORD.test(w) || /\{(tolist|rports)\}/.test(w))) {
    throw new BenchError(`--peer-cmd ${name}: the command must name the receivers with {to}, {rport}, {tolist} or {rports}`);
  }
  return { kind: `peer:${name}`, name, template, words };
}

/** The argv of a peer for an input port and receivers. */
export function expandPeer(spec: PeerSpec, port: number, receivers: readonly number[], rcvbuf: number): string[] {
  const fill = (w: string, r: number | null) =>
    w
      .replaceAll('{port}', String(port))
      .replaceAll('{rcvbuf}', String(rcvbuf))
      .replaceAll('{tolist}', receivers.map((p) => `127.0.0.1:${p}`).join(','))
      .replaceAll('{rports}', receivers.join(','))
      .replaceAll('{to}', `127.0.0.1:${r}`)
      .replaceAll('{rport}', String(r));
  const out: string[] = [];
  for (let i = 0; i < spec.words.length; i++) {
    const w = spec.words[i]!;
    if (w === '[') {
      const end = spec.words.indexOf(']', i + 1);
      const group = spec.words.slice(i + 1, end);
      for (const r of receivers) out.push(...group.map((g) => fill(g, r)));
      i = end;
    } else if (RECEIVER_WORD.test(w)) out.push(...receivers.map((r) => fill(w, r)));
    else out.push(fill(w, null));
  }
  return out;
}

/** Kernel drops and presence of UDP sockets bound to `port` on 127.0.0.1 or any address (/proc/net/udp). */
export function udpSocketState(port: number): { bound: boolean; drops: number } {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  let bound = false;
  let drops = 0;
  let text = '';
  try {
    text = readFileSync('/proc/net/udp', 'latin1');
  } catch {
    return { bound: false, drops: 0 };
  }
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 13) continue;
    if (f[1] !== `0100007F:${hex}` && f[1] !== `00000000:${hex}`) continue;
    bound = true;
    drops += Number(f[f.length - 1]) || 0;
  }
  return { bound, drops };
}

function freeUdpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const port = s.address().port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Starts the peer and waits (at most 10 s) until it listens. A port taken
 * between our choice and its bind (a test beside the bench) makes it exit:
 * one more try on another port.
 */
export async function startPeer(spec: PeerSpec, receivers: readonly number[], o: { cpu: string | undefined; recvBuffer: number }): Promise<FanOut> {
  let problem = '';
  for (let attempt = 0; attempt < 2; attempt++) {
    const port = await freeUdpPort();
    const argv = expandPeer(spec, port, receivers, o.recvBuffer);
    // stdin a pipe: a program that reads it (the floor does) sees EOF only when the bench goes.
    const child = Child.spawn(spec.kind, argv[0]!, argv.slice(1), { cpu: o.cpu, stdin: true });
    const deadline = Date.now() + 10_000;
    while (child.running && !udpSocketState(port).bound && Date.now() < deadline) await sleep(50);
    if (!child.running) {
      problem = `${spec.name} exited before it listened on 127.0.0.1:${port}:\n${child.stderrTail}`;
      continue;
    }
    if (!udpSocketState(port).bound) {
      await child.stop();
      throw new BenchError(`${spec.name} did not listen on UDP port ${port} within 10 s (is {port} where it listens?):\n${child.stderrTail}`);
    }
    const warnings: string[] = [];
    child.onStderrLine = (l) => {
      if (l.trim() !== '' && warnings.length < 50) warnings.push(l);
    };
    return {
      kind: spec.kind,
      child,
      inputPort: port,
      warnings,
      command: spec.template,
      countsFromReceivers: true,
      async counters(): Promise<FanCounters> {
        return { received: NaN, sent: NaN, drops: { input_rcvbuf: udpSocketState(port).drops } };
      },
      stop: () => child.stop(3000),
    };
  }
  throw new BenchError(problem);
}
