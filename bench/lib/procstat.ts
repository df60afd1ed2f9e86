// What the kernel knows about a process: CPU time (all threads, user +
// system) and peak resident memory.

import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

let tick: number | null = null;

/** Clock ticks per second (USER_HZ) for /proc/PID/stat. */
export function clockTicks(): number {
  if (tick === null) {
    try {
      tick = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      tick = 100;
    }
  }
  return tick;
}

/** utime + stime of `pid` in seconds (10 ms resolution with USER_HZ 100). */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  // The command name may hold spaces and parentheses: fields start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
  return (Number(fields[11]) + Number(fields[12])) / clockTicks();
}

/** VmHWM (peak RSS) and VmRSS of `pid`, in KiB. */
export function memory(pid: number): { peakKiB: number; rssKiB: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'latin1');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
  return { peakKiB: field('VmHWM'), rssKiB: field('VmRSS') };
}

/**
 * CPU time of the whole machine from /proc/stat, in seconds: `busy` is
 * user+nice+system+irq+softirq (all CPUs), `steal` what the hypervisor took.
 * The bench subtracts its own processes from `busy` to see how much else ran.
 */
export function machineCpu(): { busy: number; steal: number } {
  const line = readFileSync('/proc/stat', 'latin1').split('\n', 1)[0]!;
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = f;
  return { busy: (user + nice + system + irq + softirq) / clockTicks(), steal: steal / clockTicks() };
}

let softirqPids: number[] | null = null;

/**
 * CPU seconds of the ksoftirqd threads. Loopback delivery runs as softirq
 * work, normally inside the sender's own system call (and charged to it);
 * when the kernel defers it to ksoftirqd it would escape the fan-out's
 * figures, so the bench watches this too.
 */
export function ksoftirqdCpu(): number {
  if (softirqPids === null) {
    softirqPids = [];
    for (const d of readdirSync('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      try {
        if (readFileSync(`/proc/${d}/comm`, 'latin1').startsWith('ksoftirqd/')) softirqPids.push(Number(d));
      } catch {
        // gone
      }
    }
  }
  let sum = 0;
  for (const p of softirqPids) {
    try {
      sum += cpuSeconds(p);
    } catch {
      // gone
    }
  }
  return sum;
}
