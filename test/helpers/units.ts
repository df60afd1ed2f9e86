// Reading the shipped systemd units (systemd/) and the README the way the
// unit tests need: directives by name, the agent unit's directory layout,
// and the units' user as systemd-sysusers creates it.

import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from './uwsgi.js';

export const UNITS_DIR = join(repoRoot(), 'systemd');
export const README = readFileSync(join(repoRoot(), 'README.md'), 'utf8');

/** Every `Key=value` of a unit file (all sections), values in order; an empty assignment resets the list. */
export function unitDirectives(file: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const raw of readFileSync(file, 'utf8').split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';') || line.startsWith('[')) continue;
    const eq = line.indexOf('=');
    if (eq < 0) continue;
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    if (value === '') out.delete(key);
    else out.set(key, [...(out.get(key) ?? []), ...(/Directory$|^PathChanged$/.test(key) ? value.split(/\s+/) : [value])]);
  }
  return out;
}

export interface AgentUnitLayout {
  readonly protectSystem: string | null;
  /** The StateDirectory= for the ticket keys, as an absolute path (null: none). */
  readonly ticketDir: string | null;
  readonly ticketDirMode: number;
  readonly configDirMode: number;
}

/** What an agent unit lets the agent write for nginx, and with which modes systemd creates it. */
export function agentUnitLayout(unit: string): AgentUnitLayout {
  const d = unitDirectives(join(UNITS_DIR, unit));
  const state = (d.get('StateDirectory') ?? []).find((s) => /tickets/.test(s));
  return {
    protectSystem: d.get('ProtectSystem')?.[0] ?? null,
    ticketDir: state === undefined ? null : `/var/lib/${state}`,
    ticketDirMode: parseInt(d.get('StateDirectoryMode')?.[0] ?? '0755', 8),
    configDirMode: parseInt(d.get('ConfigurationDirectoryMode')?.[0] ?? '0755', 8),
  };
}

export interface UnitUser {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

/**
 * The user systemd/udprepeater.sysusers creates, made by systemd-sysusers in
 * a temporary root holding copies of this host's /etc/passwd and /etc/group
 * (so its ids are free here; the host is not touched). `root` receives the
 * resulting passwd and group files.
 */
export function unitUser(root = mkdtempSync(join(tmpdir(), 'udprepeater-sysusers-'))): UnitUser & { readonly passwd: string; readonly group: string } {
  mkdirSync(join(root, 'etc'), { recursive: true });
  for (const f of ['passwd', 'group']) copyFileSync(`/etc/${f}`, join(root, 'etc', f));
  const r = spawnSync('systemd-sysusers', [`--root=${root}`, join(UNITS_DIR, 'udprepeater.sysusers')], { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`systemd-sysusers failed: ${r.stderr}`);
  const passwd = join(root, 'etc', 'passwd');
  const line = readFileSync(passwd, 'utf8').split('\n').find((l) => l.startsWith('udprepeater:'));
  if (line === undefined) throw new Error('systemd-sysusers created no udprepeater user');
  const f = line.split(':');
  return { name: f[0]!, uid: Number(f[2]), gid: Number(f[3]), passwd, group: join(root, 'etc', 'group') };
}
