// Where things are: this file compiles to build/bench/lib/paths.js. Compiled
// things are found from this file's own directory, never through the `build`
// symlink: a build beside a running bench (npm test) swaps that symlink, and
// the bench must keep the binaries and the CLI it started with.

import { join, resolve } from 'node:path';

/** The repository root. */
export const ROOT = resolve(__dirname, '..', '..', '..');
/** bench/ sources (C helpers, captures, results). */
export const BENCH_DIR = join(ROOT, 'bench');
/** Compiled output of the bench (native binaries, scratch files). */
export const BUILD_DIR = resolve(__dirname, '..');
/**
 * The repeater's CLI, compiled by `npm run build:dev`; or $UDPREPEATER_CLI
 * (as for the tests' daemons), to measure another build with this bench,
 * e.g. UDPREPEATER_CLI=/path/to/other/checkout/dist/cli.js.
 */
export const REPEATER_CLI = process.env['UDPREPEATER_CLI'] !== undefined && process.env['UDPREPEATER_CLI'] !== '' ? resolve(process.env['UDPREPEATER_CLI']) : resolve(__dirname, '..', '..', 'src', 'cli.js');
export const DEFAULT_CAPTURE = join(BENCH_DIR, 'captures', 'uwsgi-sessions.pcap');
export const RESULTS_DIR = join(BENCH_DIR, 'results');
