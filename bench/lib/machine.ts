// The facts a reader needs to judge the figures: this machine, its load,
// and the kernel limits that shape UDP on loopback.

import { readFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem } from 'node:os';

export interface Machine {
  nproc: number;
  cpuModel: string;
  kernel: string;
  node: string;
  memGiB: number;
  rmemMax: number | null;
  wmemMax: number | null;
  rmemDefault: number | null;
  netdevMaxBacklog: number | null;
  loadAvg1m: number;
  cgroupCpuMax: string | null;
  compiler: string;
  fdLimit: string | null;
}

function read(path: string): string | null {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return null;
  }
}
const num = (s: string | null) => (s === null ? null : Number(s));

export function machineFacts(compiler: string): Machine {
  const c = cpus();
  const limits = read('/proc/self/limits');
  const nofile = limits === null ? null : (/^Max open files\s+(\S+)\s+(\S+)/m.exec(limits)?.slice(1, 3).join('/') ?? null);
  return {
    nproc: c.length,
    cpuModel: c[0]?.model.trim() ?? 'unknown',
    kernel: release(),
    node: process.version,
    memGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    rmemMax: num(read('/proc/sys/net/core/rmem_max')),
    wmemMax: num(read('/proc/sys/net/core/wmem_max')),
    rmemDefault: num(read('/proc/sys/net/core/rmem_default')),
    netdevMaxBacklog: num(read('/proc/sys/net/core/netdev_max_backlog')),
    loadAvg1m: Math.round(loadavg()[0]! * 100) / 100,
    cgroupCpuMax: read('/sys/fs/cgroup/cpu.max'),
    compiler,
    fdLimit: nofile,
  };
}
