// What a test file opens (daemons, sockets), closed in reverse order after
// the file's tests, whatever they did.

import { after } from 'node:test';
import { Receiver, Sender } from './net.js';
import { startRepeater, startTestAgent, type TestAgent, type TestRepeater } from './repeater.js';
import type { SecureSession } from '../../src/crypto/session.js';
import type { Backend } from '../../src/net/io.js';

export class Scope {
  /** One unbound sender socket, as uWSGI uses. */
  readonly sender = Sender.open();
  private readonly open: Array<{ close(): unknown }> = [];

  /** @param cleanup runs after everything opened was closed. */
  constructor(cleanup?: () => void) {
    after(async () => {
      for (const o of this.open.reverse()) await o.close();
      this.sender.close();
      cleanup?.();
    });
  }

  track<T extends { close(): unknown }>(thing: T): T {
    this.open.push(thing);
    return thing;
  }

  async receiver(host?: string, port?: number): Promise<Receiver> {
    return this.track(await Receiver.open(host, port));
  }

  async repeater(args: readonly string[], backend?: Backend): Promise<TestRepeater> {
    return this.track(await startRepeater(args, backend));
  }

  async agent(args: readonly string[], session?: SecureSession): Promise<TestAgent> {
    return this.track(await startTestAgent(args, session));
  }
}
