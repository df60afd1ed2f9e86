// Where things are: this file compiles to build/bench/lib/paths.js.

import { join, resolve } from 'node:path';

/** The repository root. */
export const ROOT = resolve(__dirname, '..', '..', '..');
/** bench/ sources (C helpers, captures, results). */
export const BENCH_DIR = join(ROOT, 'bench');
/** Compiled output of the bench (native binaries, scratch files). */
export const BUILD_DIR = join(ROOT, 'build', 'bench');
/** The repeater's CLI, compiled by `npm run build:dev`. */
export const REPEATER_CLI = join(ROOT, 'build', 'src', 'cli.js');
export const DEFAULT_CAPTURE = join(BENCH_DIR, 'captures', 'uwsgi-sessions.pcap');
export const RESULTS_DIR = join(BENCH_DIR, 'results');
