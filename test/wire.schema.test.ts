// The schemas the codecs use are embedded in src/wire/schema.ts (wire/ reads
// no file at import); proto/ ships the same text for other implementations.
// They must never drift apart: regenerate with `node scripts/embed-schema.mjs`.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { LIVE_STATE_PROTO, UDPREPEATER_PROTO } from '../src/wire/schema.js';
import { repoRoot } from './helpers/uwsgi.js';

for (const [name, text, file] of [
  ['UDPREPEATER_PROTO', UDPREPEATER_PROTO, 'udprepeater.proto'],
  ['LIVE_STATE_PROTO', LIVE_STATE_PROTO, 'live-state.proto'],
] as const) {
  test(`wire/schema.ts ${name} equals proto/${file} byte for byte`, () => {
    const onDisk = readFileSync(join(repoRoot(), 'proto', file));
    assert.ok(Buffer.from(text, 'utf8').equals(onDisk), `src/wire/schema.ts ${name} differs from proto/${file}: run node scripts/embed-schema.mjs`);
  });
}
