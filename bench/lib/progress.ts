// One progress line on stderr: rewritten in place on a terminal, printed at
// each step (and every few seconds) otherwise.

export class Progress {
  private step = 0;
  private label = '';
  private lastPrint = 0;
  private readonly tty = process.stderr.isTTY === true;
  private readonly started = Date.now();

  constructor(private total: number) {}

  setTotal(n: number): void {
    this.total = n;
  }

  private eta(): string {
    const el = (Date.now() - this.started) / 1000;
    const done = Math.max(this.step - 1, 0);
    const left = done > 0 ? (el / done) * (this.total - done) : NaN;
    return `${el.toFixed(0)} s elapsed${Number.isFinite(left) ? `, ~${left.toFixed(0)} s left` : ''}`;
  }

  /** Starts the next of `total` measurements. */
  next(label: string): void {
    this.step++;
    this.label = label;
    this.print('', true);
  }

  /** Updates the current line with a detail (e.g. seconds into the run). */
  tick(detail: string): void {
    this.print(detail, false);
  }

  private print(detail: string, force: boolean): void {
    const now = Date.now();
    if (!this.tty && !force && now - this.lastPrint < 5000) return;
    this.lastPrint = now;
    const line = `[${String(this.step).padStart(String(this.total).length)}/${this.total}] ${this.label}${detail ? `  ${detail}` : ''}  (${this.eta()})`;
    if (this.tty) process.stderr.write(`\r\x1b[K${line}`);
    else process.stderr.write(`${line}\n`);
  }

  /** A line that stays (results of a scenario, notes). */
  note(text: string): void {
    if (this.tty) process.stderr.write('\r\x1b[K');
    process.stderr.write(`${text}\n`);
  }

  finish(): void {
    if (this.tty) process.stderr.write('\r\x1b[K');
  }
}
