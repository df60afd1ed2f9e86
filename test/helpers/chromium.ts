// A real headless Chromium (Debian's `chromium`) that loads a page, runs its
// scripts and prints the DOM they left: how the status page is tested.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Availability } from './requirement.js';

export const CHROMIUM = process.env['UDPREPEATER_CHROMIUM'] ?? '/usr/bin/chromium';
export const CHROMIUM_HINT = 'install it with: apt-get install chromium';

export function chromiumAvailability(): Availability {
  const r = spawnSync(CHROMIUM, ['--version'], { encoding: 'utf8', timeout: 20_000 });
  if (r.error !== undefined) return { ok: false, reason: `${CHROMIUM} cannot run (${r.error.message})` };
  if (r.status !== 0 || !/chromium/i.test(r.stdout)) return { ok: false, reason: `${CHROMIUM} --version failed: ${r.stderr.trim()}` };
  return { ok: true };
}

/** Flags that work as root in a container, and keep Chromium off the network but for the page. */
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

/**
 * Loads `url` in a fresh profile and returns the DOM once `budgetMs` of
 * virtual time has passed (virtual time does not pass while a fetch is
 * pending, so the page's requests have been answered). Bounded by `ms`.
 */
export function renderDom(url: string, budgetMs = 3000, ms = 60_000): Promise<string> {
  const profile = mkdtempSync(join(tmpdir(), 'udprepeater-chromium-'));
  return new Promise<string>((resolve, reject) => {
    // Its own process group: a timeout kills the browser and every helper process it started.
    const child = spawn(CHROMIUM, [...FLAGS, `--user-data-dir=${profile}`, `--virtual-time-budget=${budgetMs}`, '--dump-dom', url], {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
      reject(new Error(`chromium did not render ${url} within ${ms} ms`));
    }, ms);
    child.once('error', reject);
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (code === 0 && out.includes('</html>')) resolve(out);
      else reject(new Error(`chromium exited ${code} for ${url}:\n${err.split('\n').filter((l) => !/dbus|unexpected operator/.test(l)).join('\n')}`));
    });
  }).finally(() => rmSync(profile, { recursive: true, force: true }));
}

/** The text of every `<td>` of the serialized DOM, entities decoded. */
export function cells(dom: string): string[] {
  return [...dom.matchAll(/<td[^>]*>([^<]*)<\/td>/g)].map((m) => decodeEntities(m[1]!));
}

export function decodeEntities(s: string): string {
  return s.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&nbsp;/g, '\u00a0').replace(/&amp;/g, '&');
}

/** Names of the elements in the serialized DOM (text nodes serialize `<` as `&lt;`, so markup shown as text is not counted). */
export function elementNames(dom: string): Set<string> {
  return new Set([...dom.matchAll(/<([a-zA-Z][a-zA-Z0-9-]*)/g)].map((m) => m[1]!.toLowerCase()));
}
