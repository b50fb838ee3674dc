// Request/response over one rtnetlink socket: sequence numbers, ACKs, errors
// as errno numbers, multipart dumps. The `netlink` package supplies only the
// raw socket; every message is encoded and parsed in rtnl-codec.ts.
//
// Dumps: the kernel sets NLM_F_DUMP_INTR on a dump that raced with a change
// (its result may be inconsistent), so such a dump is run again, up to
// DUMP_ATTEMPTS times; an errno in the final DONE message fails the dump. The
// kernel runs one dump per socket at a time, so dumps are queued.
//
// Batches: many requests go in one datagram (one sendmsg, one Buffer), and
// only the last of them asks for an ACK. The kernel handles the messages of a
// datagram in order, inside the send, and answers a message without the ACK
// flag only when it fails, so the final ACK means every earlier message is
// done and an error reply names the failed one by its sequence number. 5,000
// peers are then ~20 datagrams and ~20 replies instead of 15,000 of each.
//
// Bounds: at most MAX_IN_FLIGHT requests are outstanding and the socket has an
// 8 MB receive buffer, so replies never overflow it. Every request has a
// deadline, checked by one sweep timer (a timer per request doubled the cost
// of each operation), counted from when it was sent and renewed by every part
// of its answer; a request past its deadline means the socket is broken, so
// it is closed, everything pending on it fails, and the next request opens a
// new one. The caller's next reconcile pass re-reads everything. A sweep that
// itself ran late (the event loop was blocked, so answers may be waiting
// unread) judges nothing.
import { RawNetlinkSocket } from "netlink/dist/raw.js";
import { getSystemErrorName } from "node:util";
import { WeftError } from "../../../lib/src/errors.js";
import { errnoOf, NLM_F_ACK, NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, splitMessages, type RawMessage } from "./rtnl-codec.js";

const NETLINK_ROUTE = 0;
const MAX_IN_FLIGHT = 64;
const REQUEST_TIMEOUT_MS = 5000;
const SWEEP_MS = 500;
const DUMP_ATTEMPTS = 5;
export const RECV_BUFFER = 8 << 20;
/**
 * Bytes of requests per datagram: ~1,000 route or neighbour messages. Far below the 1 MiB send buffer,
 * and if all of them fail, their error replies (each carries its request) fit the receive buffer.
 */
const BATCH_BYTES = 64 << 10;

/** A request the kernel answered with an errno. */
export class NetlinkError extends Error {
  constructor(readonly errno: number, what: string) {
    super(`${what}: ${errnoName(errno)}`);
    this.name = "NetlinkError";
  }
}

export function errnoName(errno: number): string {
  try {
    return getSystemErrorName(-errno);
  } catch {
    return `errno ${errno}`;
  }
}

/** The requests of a batch datagram before its last one: answered only when they fail. */
interface Chunk {
  readonly first: number;
  readonly count: number;
  readonly failed: (i: number, errno: number) => void;
  readonly pending: () => Pending | undefined;
}

interface Pending {
  readonly what: string;
  deadline: number;
  readonly replies: RawMessage[];
  /** A scan's visitor: replies go to it as they arrive instead of into `replies`. */
  readonly each?: (m: RawMessage) => void;
  /** What the visitor threw; fails the scan when it settles. */
  thrown?: unknown;
  interrupted: boolean;
  readonly resolve: (r: { replies: RawMessage[]; interrupted: boolean }) => void;
  readonly reject: (err: Error) => void;
}

/** The part of the binding's raw socket the channel uses. */
export interface RawSocket {
  send(msg: Buffer, options: { port: number }, cb: (err?: Error & { code?: string }) => void): void;
  on(event: "message", fn: (msg: Buffer) => void): unknown;
  on(event: "error", fn: (err: Error) => void): unknown;
  ref(): void;
  unref(): void;
  close(): void;
}

export interface NetlinkChannelOptions {
  /** Called when the socket fails; the channel opens a new one on the next request. */
  readonly onSocketError?: (err: Error) => void;
  /** Opens the socket; tests pass a scripted one to play the kernel's replies. */
  readonly openSocket?: () => RawSocket;
}

const openRouteSocket = (): RawSocket => new RawNetlinkSocket(NETLINK_ROUTE, { recvBufferSize: RECV_BUFFER, sendBufferSize: 1 << 20 });

export class NetlinkChannel {
  private sock: RawSocket | undefined;
  private seq = Math.floor(Math.random() * 0x7fffffff);
  private readonly pending = new Map<number, Pending>();
  private readonly chunks = new Set<Chunk>();
  private inFlight = 0;
  private readonly waiting: Array<() => void> = [];
  private dumps: Promise<unknown> = Promise.resolve();
  private sweeper: NodeJS.Timeout | undefined;
  private lastSweep = Date.now();
  private closed = false;

  constructor(private readonly opts: NetlinkChannelOptions = {}) {}

  private socket(): RawSocket {
    if (this.closed) throw new WeftError("DATAPLANE_OP_FAILED", "dataplane closed");
    if (this.sock) return this.sock;
    const s = (this.opts.openSocket ?? openRouteSocket)();
    s.unref();
    s.on("message", (buf) => splitMessages(buf, (m) => this.receive(m)));
    s.on("error", (err) => {
      this.fail(s, err);
      this.opts.onSocketError?.(err);
    });
    this.sock = s;
    this.sweeper ??= setInterval(() => this.sweep(), SWEEP_MS).unref();
    return s;
  }

  /** Closes a broken socket and fails whatever still waits on it. */
  private fail(s: RawSocket, err: Error): void {
    if (this.sock !== s) return;
    this.sock = undefined;
    // Not from inside the binding's callbacks (this may run in one, or in a microtask of one).
    setImmediate(() => { try { s.close(); } catch { /* already closed */ } });
    for (const [seq, p] of [...this.pending]) {
      this.settle(seq);
      p.reject(err);
    }
  }

  private sweep(): void {
    const now = Date.now();
    const late = now - this.lastSweep > 2 * SWEEP_MS;
    this.lastSweep = now;
    if (late) return;
    for (const p of this.pending.values()) {
      if (p.deadline <= now && this.sock) {
        this.fail(this.sock, new WeftError("DATAPLANE_OP_FAILED", `${p.what}: no answer from the kernel within ${REQUEST_TIMEOUT_MS} ms`));
        return;
      }
    }
  }

  private receive(m: RawMessage): void {
    const p = this.pending.get(m.seq);
    if (!p) {
      if (m.type === NLMSG_ERROR && this.chunks.size) this.chunkError(m);
      return; // else a late answer to a request that already timed out
    }
    p.deadline = Date.now() + REQUEST_TIMEOUT_MS;
    if (m.flags & NLM_F_DUMP_INTR) p.interrupted = true;
    if (m.type === NLMSG_ERROR) {
      const errno = errnoOf(m);
      this.settle(m.seq);
      if (errno !== 0) p.reject(new NetlinkError(errno, p.what));
      else p.resolve({ replies: p.replies, interrupted: p.interrupted });
    } else if (m.type === NLMSG_DONE) {
      const errno = errnoOf(m);
      this.settle(m.seq);
      // An errno in DONE means the kernel gave up part-way: the list is incomplete.
      if (errno !== 0) p.reject(new NetlinkError(errno, `${p.what} (dump ended with an error)`));
      else if (p.thrown !== undefined) p.reject(p.thrown as Error);
      else p.resolve({ replies: p.replies, interrupted: p.interrupted });
    } else if (p.each) {
      // A scan reads each reply while its datagram is at hand, so a dump of thousands of objects is
      // never held at once (its parsed objects die young instead of reaching V8's old generation).
      if (p.thrown === undefined) {
        try {
          p.each(m);
        } catch (err) {
          p.thrown = err;
        }
      }
    } else {
      // Replies are copied out of the datagram only as views; parsers run after the request settles.
      p.replies.push(m);
    }
  }

  /** An error reply to a batched request that did not ask for an ACK. */
  private chunkError(m: RawMessage): void {
    for (const c of this.chunks) {
      const i = (m.seq - c.first) >>> 0;
      if (i >= c.count) continue;
      const p = c.pending();
      if (p) p.deadline = Date.now() + REQUEST_TIMEOUT_MS;
      c.failed(i, errnoOf(m));
      return;
    }
  }

  private nextSeq(): number {
    return (this.seq = (this.seq + 1) >>> 0 || 1);
  }

  private settle(seq: number): void {
    this.pending.delete(seq);
    if (this.pending.size === 0) this.sock?.unref();
    this.release();
  }

  /** Takes one of the MAX_IN_FLIGHT slots, waiting for one if needed. */
  private slot(): Promise<void> {
    if (this.inFlight < MAX_IN_FLIGHT && this.waiting.length === 0) {
      this.inFlight++;
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  /** Hands the slot straight to the oldest waiter, so nobody arriving in between can overtake it. */
  private release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.inFlight--;
  }

  private async send(what: string, msg: Buffer, each?: (m: RawMessage) => void): Promise<{ replies: RawMessage[]; interrupted: boolean }> {
    await this.slot();
    return this.transmit(what, msg, 0, this.nextSeq(), each);
  }

  /** Sends `msg` holding a slot; the message at `last` gets sequence number `seq` and is the one answered. */
  private transmit(what: string, msg: Buffer, last: number, seq: number, each?: (m: RawMessage) => void): Promise<{ replies: RawMessage[]; interrupted: boolean }> {
    let sock: RawSocket;
    try {
      sock = this.socket();
    } catch (err) {
      this.release();
      return Promise.reject(err);
    }
    msg.writeUInt32LE(seq, last + 8);
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { what, deadline: Date.now() + REQUEST_TIMEOUT_MS, replies: [], each, interrupted: false, resolve, reject });
      if (this.pending.size === 1) sock.ref();
      const failSend = (err: Error & { code?: string }) => {
        if (!this.pending.has(seq)) return;
        this.settle(seq);
        reject(new WeftError("DATAPLANE_OP_FAILED", `${what}: sending failed (${err.code ?? err.message})`, { cause: err }));
      };
      try {
        sock.send(msg, { port: 0 }, (err) => {
          if (err) return failSend(err);
          const p = this.pending.get(seq);
          if (p) p.deadline = Date.now() + REQUEST_TIMEOUT_MS;
        });
      } catch (err) {
        failSend(err as Error);
      }
    });
  }

  /**
   * Sends one request per item, as many per datagram as fit BATCH_BYTES. `write` puts the item's
   * message (flags without NLM_F_ACK) at an offset of a zeroed buffer and returns its length; `size`
   * says that length beforehand. Resolves with each item's error, or undefined where it was done; an
   * item of a datagram the kernel never answered (the socket failed) gets that failure.
   */
  async batch<T>(items: readonly T[], size: (item: T) => number, write: (b: Buffer, off: number, item: T) => number, what: (item: T) => string): Promise<Array<Error | undefined>> {
    const errors = new Array<Error | undefined>(items.length);
    for (let from = 0; from < items.length;) {
      let bytes = 0, to = from;
      while (to < items.length && (to === from || bytes + size(items[to]!) <= BATCH_BYTES)) bytes += (size(items[to++]!) + 3) & ~3;
      const b = Buffer.alloc(bytes);
      const offsets = new Uint32Array(to - from);
      for (let i = from, off = 0; i < to; i++) {
        offsets[i - from] = off;
        off += (write(b, off, items[i]!) + 3) & ~3;
      }
      const last = offsets[to - from - 1]!;
      b.writeUInt16LE(b.readUInt16LE(last + 6) | NLM_F_ACK, last + 6);
      await this.slot();
      // Keep the batch's numbers contiguous (no wrap through 0), so an error reply maps back to its item.
      if (this.seq + (to - from) >= 0xffffffff) this.seq = 0;
      const first = this.seq + 1;
      for (let i = 0; i < to - from - 1; i++) b.writeUInt32LE(this.nextSeq(), offsets[i]! + 8);
      const seq = this.nextSeq();
      const base = from;
      const chunk: Chunk = {
        first, count: to - from - 1,
        failed: (i, errno) => { errors[base + i] = new NetlinkError(errno, what(items[base + i]!)); },
        pending: () => this.pending.get(seq),
      };
      this.chunks.add(chunk);
      try {
        await this.transmit(what(items[to - 1]!), b, last, seq);
      } catch (err) {
        if (err instanceof NetlinkError) errors[to - 1] = err;
        else {
          // Unanswered: whatever did not fail visibly may or may not be done; the caller's next pass finds out.
          for (let i = from; i < items.length; i++) errors[i] ??= err as Error;
          return errors;
        }
      } finally {
        this.chunks.delete(chunk);
      }
      from = to;
    }
    return errors;
  }

  /** Sends a request and waits for its ACK; resolves with any replies that came before it (a GET answers with one). */
  async request(what: string, msg: Buffer): Promise<RawMessage[]> {
    return (await this.send(what, msg)).replies;
  }

  /** Runs a dump to completion, again if the kernel marks it interrupted. */
  async dump(what: string, msg: Buffer): Promise<RawMessage[]> {
    const out: RawMessage[] = [];
    await this.scan(what, msg, (m) => out.push(m), () => { out.length = 0; });
    return out;
  }

  /**
   * A dump whose replies go to `each` as they arrive (views into the datagram, valid during the call
   * only). When the kernel marks the dump interrupted it runs again from the start, after `restart`
   * tells the visitor to forget what it saw. An exception from `each` fails the scan.
   */
  scan(what: string, msg: Buffer, each: (m: RawMessage) => void, restart: () => void): Promise<void> {
    const run = async (): Promise<void> => {
      for (let attempt = 1; ; attempt++) {
        if (attempt > 1) restart();
        const { interrupted } = await this.send(what, msg, each);
        if (!interrupted) return;
        if (attempt >= DUMP_ATTEMPTS) throw new WeftError("DATAPLANE_OP_FAILED", `${what}: the kernel interrupted the dump ${attempt} times in a row (the table changes too fast); will retry`);
      }
    };
    const p = this.dumps.then(run);
    this.dumps = p.catch(() => undefined);
    return p;
  }

  /** Final: pending and later requests fail; no socket is opened again. */
  close(): void {
    this.closed = true;
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
    if (this.sock) this.fail(this.sock, new WeftError("DATAPLANE_OP_FAILED", "dataplane closed"));
    // Waiters wake holding a slot, find the channel closed and fail.
    for (const w of this.waiting.splice(0)) w();
  }
}
