// A UDP relay between one agent and its repeater that keeps a copy of every
// datagram in each direction: captures taken on the wire, never built by a test.

import { createSocket, type Socket } from 'node:dgram';

export /** Both directions between one agent and its repeater, a copy of each datagram kept (the repeater answers the source: this relay). */
class Relay {
  readonly toRepeater: Buffer[] = [];
  readonly toAgent: Buffer[] = [];
  private agentPort = 0;
  private constructor(
    private readonly s: Socket,
    target: number,
  ) {
    s.on('message', (m, r) => {
      if (this.agentPort === 0) this.agentPort = r.port;
      if (r.port === this.agentPort) {
        this.toRepeater.push(m);
        s.send(m, target, '127.0.0.1');
      } else {
        this.toAgent.push(m);
        s.send(m, this.agentPort, '127.0.0.1');
      }
    });
  }

  static open(target: number): Promise<Relay> {
    return new Promise((resolve) => {
      const s = createSocket('udp4');
      s.bind(0, '127.0.0.1', () => resolve(new Relay(s, target)));
    });
  }

  get port(): number {
    return this.s.address().port;
  }

  close(): void {
    this.s.close();
  }
}

/** Link frames (version 3, type 3) of a capture. */
export const linkFrames = (c: readonly Buffer[]) => c.filter((b) => b.length > 32 && b[0] === 0x75 && b[1] === 0x72 && b[2] === 3 && b[3] === 3);

/** Group frames (version 3, type 4: one seal for every member holding a channel's group key) of a capture. */
export const groupFrames = (c: readonly Buffer[]) => c.filter((b) => b.length > 32 && b[0] === 0x75 && b[1] === 0x72 && b[2] === 3 && b[3] === 4);
