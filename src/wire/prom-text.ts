// Reading Prometheus text (the /metrics answer) back: the few samples the
// status page and `udprepeater status` need, e.g. drops by reason.
//
// Invariants:
// - Pure and total: any text gives a list (lines it cannot read are skipped),
//   never an exception; the answer may come from something that is not us.
// - Self-contained: `promSamples` uses nothing outside its own body, so the
//   status page embeds its compiled source (`promSamples.toString()`) and the
//   browser runs the same reader the command line does.

export interface PromSample {
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly value: number;
}

/** The samples of the metrics named in `names` (exact names: `_total` included), in the order they appear. */
export function promSamples(text: string, names: readonly string[]): PromSample[] {
  const wanted = new Set(names);
  const out: PromSample[] = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+\S+)?[ \t]*$/;
  const label = /\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)/y;
  for (const raw of String(text).split('\n')) {
    if (raw === '' || raw.charCodeAt(0) === 35 /* # */) continue;
    const m = line.exec(raw);
    if (m === null || !wanted.has(m[1]!)) continue;
    const labels: Record<string, string> = {};
    const body = m[2] ?? '';
    let ok = true;
    label.lastIndex = 0;
    while (label.lastIndex < body.length) {
      const at = label.lastIndex;
      const l = label.exec(body);
      if (l === null || label.lastIndex === at) {
        ok = /^\s*,?\s*$/.test(body.slice(at));
        break;
      }
      labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_e, c: string) => (c === 'n' ? '\n' : c));
    }
    const value = Number(m[3]);
    // "NaN" is a legal sample; anything else that is not a number is not one.
    if (!ok || (Number.isNaN(value) && m[3] !== 'NaN')) continue;
    out.push({ name: m[1]!, labels, value });
  }
  return out;
}
