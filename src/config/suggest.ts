// "Did you mean": the known name closest to a mistyped one, for config files
// (commander already does this for flags). Pure; the names are the option
// table's, never network input.

/** Optimal string alignment distance: insertions, deletions, substitutions and swaps of two neighbours each cost 1. */
export function editDistance(a: string, b: string): number {
  const rows = a.length + 1;
  const cols = b.length + 1;
  const d: number[] = new Array<number>(rows * cols).fill(0);
  for (let i = 0; i < rows; i++) d[i * cols] = i;
  for (let j = 0; j < cols; j++) d[j] = j;
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[(i - 1) * cols + j]! + 1, d[i * cols + j - 1]! + 1, d[(i - 1) * cols + j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[(i - 2) * cols + j - 2]! + 1);
      d[i * cols + j] = v;
    }
  }
  return d[rows * cols - 1]!;
}

/** How a name is compared: case, leading dashes (a flag pasted as is) and underscores do not count. */
function normal(name: string): string {
  return name.toLowerCase().replace(/^-+/, '').replace(/_/g, '-');
}

/**
 * The name in `names` closest to `typed`, when it is close enough to be a
 * typo (at most a third of the typed name's letters differ, and at least one
 * may); the first in table order on a tie; null when none is.
 */
export function closest(typed: string, names: Iterable<string>): string | null {
  const t = normal(typed);
  const limit = Math.max(1, Math.floor(t.length / 3));
  let best: string | null = null;
  let bestDistance = Infinity;
  for (const n of names) {
    const d = editDistance(t, n);
    if (d < bestDistance) {
      best = n;
      bestDistance = d;
    }
  }
  return bestDistance <= limit && bestDistance < t.length ? best : null;
}
