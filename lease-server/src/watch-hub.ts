// Fan-out of lease changes to thousands of WatchLeases streams.
//
// One in-memory view (live leases + a ring of recent events) feeds every
// stream. Each change batch is encoded once and the same bytes are queued on
// every stream (once per starting revision when streams are at different
// ones, see #catchUp); the full snapshot is encoded once per revision and shared the
// same way. A stream only copies what it is actively writing (highWater
// bytes); the rest of its queue is references to shared buffers. A stream whose
// queue grows past maxQueueBytes is too far behind: it is dropped and the
// client resumes from its last revision, which costs it only what it missed.
//
// Both limits count each frame's cost beyond its payload (FRAME_OVERHEAD):
// lease events are small (~150 bytes), and a stream that never reads used to
// hold ~1,500 in-flight writes of them, each with grpc-js's framed copy, an
// HTTP/2 write request and a callback: about 360 KB per stream after 4,000
// changes, with nothing dropped.
import { WeftError } from "../../lib/src/errors.js";
import type { Lease, LeaseEvent } from "../../lib/src/lease.js";
import type { Logger } from "../../lib/src/logger.js";
import { appendAll } from "../../lib/src/arrays.js";
import type { LeaseStore } from "./store/lease-store.js";

export interface WatchSink {
  /** Writes one encoded message; calls done once it is handed to the transport. */
  write(frame: Buffer, done: () => void): void;
  /** Ends the stream with an error status. */
  fail(err: WeftError): void;
}

/** Encodes watch messages; the gRPC adapter supplies protobuf encoding. */
export interface FrameEncoder {
  snapshot(leases: readonly Lease[], resync: boolean): Buffer;
  snapshotComplete(revision: number, storeId: string): Buffer;
  events(events: readonly LeaseEvent[]): Buffer;
  progress(revision: number, storeId: string): Buffer;
}

export interface WatchHubMetrics {
  streams(n: number): void;
  eventsSent(n: number): void;
  framesSent(n: number): void;
  dropped(): void;
  batch(events: number): void;
}

export interface WatchHubOptions {
  readonly store: LeaseStore;
  readonly encoder: FrameEncoder;
  readonly log: Logger;
  /** Events kept in memory for resuming streams. */
  readonly historyEvents?: number;
  /** Changes arriving within this window go out as one message. */
  readonly batchWindowMs?: number;
  /** Bytes (shared or not) a stream may have queued before it is dropped. */
  readonly maxQueueBytes?: number;
  /** Bytes a stream may have in the transport at once. */
  readonly highWaterBytes?: number;
  readonly snapshotChunk?: number;
  readonly maxEventsPerMessage?: number;
  readonly progressIntervalMs?: number;
  readonly metrics?: WatchHubMetrics;
  /** Each applied batch, with the monotonic ms when its first change reached the hub (fleet convergence). */
  readonly onCommit?: (events: readonly LeaseEvent[], at: number) => void;
}

/** Memory one queued or in-flight frame costs besides its bytes (measured, rounded up). */
export const FRAME_OVERHEAD = 256;

/**
 * Changes go out to this many streams per event-loop turn. Node sends what a
 * turn wrote only after the turn: written in one go, 10,000 streams waited
 * ~100 ms of JS before the first byte left, while the watchers (other
 * processes, the other core) had nothing to read. In slices, the first
 * streams' bytes are on the wire while the server writes the rest.
 */
export const BROADCAST_SLICE = 500;

interface Frame {
  readonly buf: Buffer;
  readonly events: number;
  readonly exempt?: boolean;
}

class Subscription {
  readonly #queue: Frame[] = [];
  #head = 0;
  /** Bytes queued or in flight that count against maxQueueBytes. */
  #queuedBytes = 0;
  #inFlight = 0;
  closed = false;
  /** The newest revision queued on this stream (events, snapshot or resume point). */
  rev = 0;

  constructor(readonly hub: WatchHub, readonly sink: WatchSink) {}

  /**
   * Queues a frame. `exempt` frames (the start of a stream: snapshot or
   * catch-up) do not count against the limit, so a large network never makes
   * every new stream look too far behind.
   */
  enqueue(f: Frame, exempt = false): void {
    if (this.closed) return;
    this.#queue.push(exempt ? { ...f, exempt } : f);
    if (exempt) return this.pump();
    this.#queuedBytes += f.buf.length + FRAME_OVERHEAD;
    if (this.#queuedBytes > this.hub.maxQueueBytes) {
      this.hub.drop(this, this.#queuedBytes);
      return;
    }
    this.pump();
  }

  pump(): void {
    while (!this.closed && this.#head < this.#queue.length && this.#inFlight < this.hub.highWaterBytes) {
      const f = this.#queue[this.#head++]!;
      const size = f.buf.length + FRAME_OVERHEAD;
      this.#inFlight += size;
      this.hub.sent(f);
      this.sink.write(f.buf, () => {
        this.#inFlight -= size;
        if (!f.exempt) this.#queuedBytes -= size;
        this.pump();
      });
    }
    if (this.#head > 64 && this.#head * 2 > this.#queue.length) {
      this.#queue.splice(0, this.#head);
      this.#head = 0;
    }
  }
}

export class WatchHub {
  readonly #o: WatchHubOptions;
  readonly maxQueueBytes: number;
  readonly highWaterBytes: number;
  readonly #historyEvents: number;
  readonly #leases = new Map<string, Lease>();
  /** Every event with revision > #floor, oldest first. */
  #ring: LeaseEvent[] = [];
  #floor = 0;
  #revision = 0;
  #storeId = "";
  #pending: LeaseEvent[] = [];
  #pendingSince = 0;
  #flushTimer: NodeJS.Timeout | undefined;
  #progressTimer: NodeJS.Timeout | undefined;
  #unsubscribe: (() => void) | undefined;
  readonly #subs = new Set<Subscription>();
  /**
   * The pass that brings every stream to the newest revision, a slice per turn (#catchUp).
   * A change during a pass reaches the streams it has not passed yet in this pass (with
   * what they were about to get, in one message), and the others in the next pass.
   */
  #pass: { subs: Subscription[]; next: number; again: boolean } | undefined;
  #passTimer: NodeJS.Immediate | undefined;
  /** Event frames from a revision to the newest, by that revision: streams at the same revision share them. */
  #catchUpCache = new Map<number, Frame[]>();
  #snapshotCache: { revision: number; resync: boolean; frames: Frame[] }[] = [];
  /** Catch-up frames by starting revision, for the current revision: a reconnect storm encodes them once. */
  #resumeCache = new Map<number, Frame[]>();

  constructor(opts: WatchHubOptions) {
    this.#o = opts;
    // 1 MiB is thousands of changes behind: resuming from the client's revision is cheaper than holding them.
    this.maxQueueBytes = opts.maxQueueBytes ?? 1 << 20;
    // About one HTTP/2 stream window: more in flight only waits in node's buffers.
    this.highWaterBytes = opts.highWaterBytes ?? 64 << 10;
    this.#historyEvents = opts.historyEvents ?? 10_000;
  }

  get revision(): number {
    return this.#revision;
  }

  get leaseCount(): number {
    return this.#leases.size;
  }

  /** The live leases (do not hold on to the iterator across changes). */
  leases(): IterableIterator<Lease> {
    return this.#leases.values();
  }

  get streams(): number {
    return this.#subs.size;
  }

  /** Loads the current leases and recent history, then follows the store. */
  async start(): Promise<void> {
    // Subscribe before listing so nothing committed in between is lost.
    let loading = true;
    const early: LeaseEvent[] = [];
    this.#unsubscribe = this.#o.store.subscribe((evs) => (loading ? appendAll(early, evs) : this.#onEvents(evs)));
    // A watch-fed store (etcd) lists before it watches: list only once its watch is in place, or a change
    // committed between its list and ours would reach neither.
    await this.#o.store.subscribed?.();
    this.#storeId = await this.#o.store.storeId();
    const { leases, revision } = await this.#o.store.listLeases();
    for (const l of leases) this.#leases.set(l.subnet, l);
    this.#revision = revision;
    this.#floor = revision;
    try {
      const from = Math.max(0, revision - this.#historyEvents);
      this.#ring = (await this.#o.store.eventsSince(from)).filter((e) => e.revision <= revision);
      this.#floor = from;
    } catch (err) {
      if ((err as WeftError).code !== "REVISION_COMPACTED") throw err;
    }
    loading = false;
    const missed = early.filter((e) => e.revision > this.#revision);
    if (missed.length > 0) this.#onEvents(missed);
    const every = this.#o.progressIntervalMs ?? 30_000;
    if (every > 0) {
      this.#progressTimer = setInterval(() => this.#broadcast({ buf: this.#o.encoder.progress(this.#revision, this.#storeId), events: 0 }), every);
      this.#progressTimer.unref();
    }
  }

  #onEvents(evs: readonly LeaseEvent[]): void {
    if (this.#pending.length === 0) this.#pendingSince = performance.now();
    appendAll(this.#pending, evs);
    if (this.#flushTimer !== undefined) return;
    const window = this.#o.batchWindowMs ?? 5;
    this.#flushTimer = window > 0 ? setTimeout(() => this.flush(), window) : (setImmediate(() => this.flush()) as unknown as NodeJS.Timeout);
  }

  /** Applies pending changes and sends them to every stream. */
  flush(): void {
    if (this.#flushTimer !== undefined) {
      clearTimeout(this.#flushTimer);
      clearImmediate(this.#flushTimer as unknown as NodeJS.Immediate);
      this.#flushTimer = undefined;
    }
    const batch = this.#pending.filter((e) => e.revision > this.#revision);
    this.#pending = [];
    if (batch.length === 0) return;
    for (const e of batch) {
      if (e.type === "removed") this.#leases.delete(e.lease.subnet);
      else this.#leases.set(e.lease.subnet, e.lease);
    }
    this.#revision = batch[batch.length - 1]!.revision;
    appendAll(this.#ring, batch);
    if (this.#ring.length > this.#historyEvents * 1.25) {
      const cut = this.#ring.length - this.#historyEvents;
      this.#floor = this.#ring[cut - 1]!.revision;
      this.#ring = this.#ring.slice(cut);
    }
    this.#snapshotCache = [];
    this.#resumeCache.clear();
    this.#catchUpCache.clear();
    this.#o.metrics?.batch(batch.length);
    this.#startPass();
    this.#o.onCommit?.(batch, this.#pendingSince);
  }

  #eventFrames(events: readonly LeaseEvent[]): Frame[] {
    const max = this.#o.maxEventsPerMessage ?? 1000;
    const frames: Frame[] = [];
    for (let i = 0; i < events.length; i += max) {
      const part = events.slice(i, i + max);
      frames.push({ buf: this.#o.encoder.events(part), events: part.length });
    }
    return frames;
  }

  /** A frame at the newest revision (PROGRESS) to the streams that have everything before it. */
  #broadcast(frame: Frame): void {
    for (const s of this.#subs) if (s.rev === this.#revision) s.enqueue(frame);
  }

  #startPass(): void {
    if (this.#pass) {
      this.#pass.again = true;
      return;
    }
    // The streams of now: one subscribing later starts at the newest revision.
    this.#pass = { subs: [...this.#subs], next: 0, again: false };
    this.#passSlice();
  }

  readonly #passSlice = (): void => {
    this.#passTimer = undefined;
    const pass = this.#pass!;
    const end = Math.min(pass.subs.length, pass.next + BROADCAST_SLICE);
    for (let i = pass.next; i < end; i++) this.#catchUp(pass.subs[i]!);
    pass.next = end;
    if (end < pass.subs.length) {
      this.#passTimer = setImmediate(this.#passSlice);
      return;
    }
    this.#pass = undefined;
    if (pass.again) this.#startPass();
  };

  /** Queues the events a stream does not have yet, up to the newest revision. */
  #catchUp(sub: Subscription): void {
    if (sub.closed || sub.rev >= this.#revision) return;
    let frames = this.#catchUpCache.get(sub.rev);
    if (!frames) {
      if (sub.rev < this.#floor) {
        // Cannot happen while the ring holds more than a pass's worth of changes; resuming is the way out.
        this.drop(sub, 0);
        return;
      }
      frames = this.#eventFrames(this.#ring.slice(this.#indexAfter(sub.rev)));
      this.#catchUpCache.set(sub.rev, frames);
    }
    sub.rev = this.#revision;
    for (const f of frames) sub.enqueue(f);
  }

  #snapshotFrames(resync: boolean): Frame[] {
    const hit = this.#snapshotCache.find((c) => c.revision === this.#revision && c.resync === resync);
    if (hit) return hit.frames;
    const chunk = this.#o.snapshotChunk ?? 500;
    const all = [...this.#leases.values()];
    const frames: Frame[] = [];
    for (let i = 0; i < all.length || i === 0; i += chunk) {
      const part = all.slice(i, i + chunk);
      frames.push({ buf: this.#o.encoder.snapshot(part, resync), events: part.length });
      if (all.length === 0) break;
    }
    frames.push({ buf: this.#o.encoder.snapshotComplete(this.#revision, this.#storeId), events: 0 });
    this.#snapshotCache.push({ revision: this.#revision, resync, frames });
    return frames;
  }

  /**
   * Starts a stream. from = 0: snapshot then changes. from > 0: the changes
   * after it, or a snapshot marked resync when that history is gone or the
   * revision belongs to another store (`storeId` differs).
   */
  subscribe(from: number, sink: WatchSink, storeId = ""): { close(): void } {
    // Changes still waiting for their batch window go out first, so the
    // starting point below is the newest revision.
    this.flush();
    const sub = new Subscription(this, sink);
    this.#subs.add(sub);
    this.#o.metrics?.streams(this.#subs.size);
    const otherStore = storeId !== "" && storeId !== this.#storeId;
    sub.rev = this.#revision;
    if (from === 0 || otherStore || from < this.#floor || from > this.#revision) {
      for (const f of this.#snapshotFrames(from !== 0)) sub.enqueue(f, true);
    } else {
      for (const f of this.#resumeFrames(from)) sub.enqueue(f, true);
    }
    return { close: () => this.#remove(sub) };
  }

  /** The changes after `from`, then a PROGRESS that tells the client it is caught up. */
  #resumeFrames(from: number): Frame[] {
    let frames = this.#resumeCache.get(from);
    if (!frames) {
      frames = [...this.#eventFrames(this.#ring.slice(this.#indexAfter(from))), { buf: this.#o.encoder.progress(this.#revision, this.#storeId), events: 0 }];
      if (this.#resumeCache.size >= 64) this.#resumeCache.clear();
      this.#resumeCache.set(from, frames);
    }
    return frames;
  }

  /** Index of the first ring event with revision > rev. */
  #indexAfter(rev: number): number {
    let lo = 0;
    let hi = this.#ring.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#ring[mid]!.revision <= rev) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  sent(f: Frame): void {
    this.#o.metrics?.framesSent(1);
    if (f.events > 0) this.#o.metrics?.eventsSent(f.events);
  }

  drop(sub: Subscription, queued: number): void {
    this.#remove(sub);
    this.#o.metrics?.dropped();
    this.#o.log.warn({ queuedBytes: queued, revision: this.#revision }, "watch stream too far behind; dropped (the client resumes from its last revision)");
    sub.sink.fail(new WeftError("STORE_UNAVAILABLE", `watch stream fell more than ${this.maxQueueBytes} bytes behind; reconnect with from_revision set to the last revision you applied`));
  }

  #remove(sub: Subscription): void {
    if (sub.closed) return;
    sub.closed = true;
    this.#subs.delete(sub);
    this.#o.metrics?.streams(this.#subs.size);
  }

  /** Ends every stream (server shutdown) and stops following the store. */
  stop(): void {
    this.flush();
    clearInterval(this.#progressTimer);
    clearImmediate(this.#passTimer);
    this.#pass = undefined;
    this.#unsubscribe?.();
    for (const s of [...this.#subs]) {
      this.#remove(s);
      s.sink.fail(new WeftError("STORE_UNAVAILABLE", "lease server is shutting down; reconnect with from_revision to resume"));
    }
  }
}
