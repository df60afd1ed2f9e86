// Structured logs: one JSON object per line (default) or plain text, to
// stderr, which systemd's journal captures. Never called per datagram at
// info: per-datagram events are counted, and repeated warnings are throttled.

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFormat = 'json' | 'text';

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };
export type Fields = Record<string, unknown>;

export interface Sink {
  write(line: string): void;
}

export class Logger {
  private rank: number;
  private readonly throttled = new Map<string, { until: number; suppressed: number }>();

  constructor(
    level: LogLevel = 'info',
    private format: LogFormat = 'json',
    private readonly sink: Sink = process.stderr,
  ) {
    this.rank = RANK[level];
  }

  configure(level: LogLevel, format: LogFormat): void {
    this.rank = RANK[level];
    this.format = format;
  }

  enabled(level: LogLevel): boolean {
    return RANK[level] >= this.rank;
  }

  debug(msg: string, fields?: Fields): void {
    this.log('debug', msg, fields);
  }
  info(msg: string, fields?: Fields): void {
    this.log('info', msg, fields);
  }
  warn(msg: string, fields?: Fields): void {
    this.log('warn', msg, fields);
  }
  error(msg: string, fields?: Fields): void {
    this.log('error', msg, fields);
  }

  /**
   * Logs at most one line per `key` every `intervalMs`; the next line that
   * gets through reports how many were suppressed.
   */
  throttle(level: LogLevel, key: string, msg: string, fields?: Fields, intervalMs = 10_000): void {
    if (!this.enabled(level)) return;
    const now = Date.now();
    const t = this.throttled.get(key);
    if (t !== undefined && now < t.until) {
      t.suppressed++;
      return;
    }
    const suppressed = t?.suppressed ?? 0;
    if (this.throttled.size > 1000) this.throttled.clear();
    this.throttled.set(key, { until: now + intervalMs, suppressed: 0 });
    this.log(level, msg, suppressed > 0 ? { ...fields, suppressed } : fields);
  }

  log(level: LogLevel, msg: string, fields?: Fields): void {
    if (RANK[level] < this.rank) return;
    const time = new Date().toISOString();
    if (this.format === 'json') {
      this.sink.write(JSON.stringify({ time, level, msg, ...fields }) + '\n');
      return;
    }
    let line = `${time} ${level.toUpperCase().padEnd(5)} ${msg}`;
    if (fields !== undefined) {
      for (const [k, v] of Object.entries(fields)) line += ` ${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`;
    }
    this.sink.write(line + '\n');
  }
}
