import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { WatchLeasesResponse, WatchLeasesResponse_Kind as Kind } from "../../gen/weft/v1/lease.js";
import type { WeftError } from "../../lib/src/errors.js";
import { WatchHub, type WatchHubOptions, type WatchSink } from "../src/watch-hub.js";
import { frameEncoder } from "../src/grpc-service.js";
import { SqliteLeaseStore } from "../src/store/sqlite-lease-store.js";
import { newLease } from "./lease-store.contract.js";
import { memoryLogger, tempDir, waitFor } from "./helpers.js";

class RecordingSink implements WatchSink {
  frames: Buffer[] = [];
  failed: WeftError | undefined;
  constructor(private readonly stall = false) {}
  write(frame: Buffer, done: () => void): void {
    this.frames.push(frame);
    if (!this.stall) setImmediate(done);
  }
  fail(err: WeftError): void {
    this.failed = err;
  }
  get messages(): WatchLeasesResponse[] {
    return this.frames.map((f) => WatchLeasesResponse.decode(f));
  }
  /** Subnets as a client would hold them after applying every message. */
  view(): string[] {
    const live = new Set<string>();
    for (const m of this.messages) {
      if (m.kind === Kind.KIND_SNAPSHOT && m.leases.length === 0 && m.resync) live.clear();
      for (const l of m.leases) live.add(l.subnet);
      for (const e of m.events) (e.type === 3 ? live.delete(e.lease!.subnet) : live.add(e.lease!.subnet));
    }
    return [...live].sort();
  }
  get lastRevision(): number {
    return Math.max(0, ...this.messages.map((m) => m.revision));
  }
}

describe("WatchHub", () => {
  let dir: ReturnType<typeof tempDir>;
  let store: SqliteLeaseStore;
  let hub: WatchHub;
  const start = async (opts: Partial<WatchHubOptions> = {}, historyLimit = 1000) => {
    store = new SqliteLeaseStore(join(dir.path, `h${Math.random()}.db`), { historyLimit });
    hub = new WatchHub({ store, encoder: frameEncoder, log: memoryLogger().log, batchWindowMs: 0, progressIntervalMs: 0, ...opts });
    await hub.start();
  };
  beforeEach(() => {
    dir = tempDir("weft-hub-");
  });
  afterEach(async () => {
    hub?.stop();
    await store?.close();
    dir.cleanup();
  });

  it("sends a snapshot, a completion marker at its revision, then changes in order", async () => {
    await start({ snapshotChunk: 2 });
    for (const n of [1, 2, 3]) await store.create(newLease(n));
    const sink = new RecordingSink();
    hub.subscribe(0, sink);
    await store.create(newLease(4));
    await store.remove("10.244.1.0/24", "node-1", "released");
    await waitFor(() => sink.messages.some((m) => m.events.some((e) => e.type === 3)), "the removal event");
    const kinds = sink.messages.map((m) => m.kind);
    expect(kinds.slice(0, 3)).toEqual([Kind.KIND_SNAPSHOT, Kind.KIND_SNAPSHOT, Kind.KIND_SNAPSHOT_COMPLETE]);
    expect(sink.messages[2]!.revision).toBe(3);
    const events = sink.messages.flatMap((m) => m.events);
    expect(events.map((e) => [e.type, e.lease!.subnet, e.revision])).toEqual([[1, "10.244.4.0/24", 4], [3, "10.244.1.0/24", 5]]);
    expect(events[1]!.lease).toMatchObject({ nodeName: "node-1", publicIp: "198.18.0.1", vxlan: { vtepMac: "0e:00:00:00:00:01" } });
    expect(sink.view()).toEqual(["10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24"]);
  });

  it("resumes from a revision with only what was missed, then reports progress", async () => {
    await start();
    for (const n of [1, 2, 3, 4]) await store.create(newLease(n));
    hub.flush();
    const sink = new RecordingSink();
    hub.subscribe(2, sink);
    await waitFor(() => sink.messages.length >= 2, "resume messages");
    expect(sink.messages[0]!.kind).toBe(Kind.KIND_EVENTS);
    expect(sink.messages[0]!.events.map((e) => e.revision)).toEqual([3, 4]);
    expect(sink.messages[1]).toMatchObject({ kind: Kind.KIND_PROGRESS, revision: 4 });
    expect(sink.messages.some((m) => m.kind === Kind.KIND_SNAPSHOT)).toBe(false);
  });

  it("sends a fresh snapshot marked resync when the asked-for history is gone", async () => {
    await start({ historyEvents: 5 }, 5);
    for (let n = 1; n <= 12; n++) await store.create(newLease(n));
    hub.flush();
    for (const from of [1, 999]) {
      const sink = new RecordingSink();
      hub.subscribe(from, sink);
      await waitFor(() => sink.messages.some((m) => m.kind === Kind.KIND_SNAPSHOT_COMPLETE), "snapshot completion");
      expect(sink.messages[0]).toMatchObject({ kind: Kind.KIND_SNAPSHOT, resync: true });
      expect(sink.view()).toHaveLength(12);
      expect(sink.lastRevision).toBe(12);
    }
  });

  it("sends a resync snapshot when the revision belongs to another store", async () => {
    await start();
    for (const n of [1, 2, 3]) await store.create(newLease(n));
    hub.flush();
    const id = await store.storeId();
    const same = new RecordingSink();
    hub.subscribe(2, same, id);
    const other = new RecordingSink();
    hub.subscribe(2, other, "000000000001");
    await waitFor(() => other.messages.some((m) => m.kind === Kind.KIND_SNAPSHOT_COMPLETE) && same.messages.length >= 2, "both streams");
    expect(same.messages[0]!.kind).toBe(Kind.KIND_EVENTS);
    expect(same.messages[1]).toMatchObject({ kind: Kind.KIND_PROGRESS, storeId: id });
    expect(other.messages[0]).toMatchObject({ kind: Kind.KIND_SNAPSHOT, resync: true });
    expect(other.messages.find((m) => m.kind === Kind.KIND_SNAPSHOT_COMPLETE)?.storeId).toBe(id);
  });

  it("loads recent history from the store, so streams resume across a server restart", async () => {
    await start();
    for (const n of [1, 2, 3]) await store.create(newLease(n));
    hub.stop();
    hub = new WatchHub({ store, encoder: frameEncoder, log: memoryLogger().log, batchWindowMs: 0, progressIntervalMs: 0 });
    await hub.start();
    const sink = new RecordingSink();
    hub.subscribe(1, sink);
    await waitFor(() => sink.messages.length >= 2, "resume after restart");
    expect(sink.messages[0]!.events.map((e) => e.lease!.nodeName)).toEqual(["node-2", "node-3"]);
  });

  it("encodes each change once and writes the same bytes to every stream", async () => {
    await start();
    const sinks = [new RecordingSink(), new RecordingSink(), new RecordingSink()];
    for (const s of sinks) hub.subscribe(0, s);
    await store.create(newLease(1));
    await waitFor(() => sinks.every((s) => s.messages.some((m) => m.kind === Kind.KIND_EVENTS)), "event on every stream");
    const frames = sinks.map((s) => s.frames.find((f) => WatchLeasesResponse.decode(f).kind === Kind.KIND_EVENTS));
    expect(frames[0]).toBe(frames[1]);
    expect(frames[1]).toBe(frames[2]);
  });

  it("batches a burst of changes into few messages without losing or reordering any", async () => {
    await start({ batchWindowMs: 50 });
    const sink = new RecordingSink();
    hub.subscribe(0, sink);
    await Promise.all(Array.from({ length: 40 }, (_, i) => store.create(newLease(i + 1))));
    await waitFor(() => sink.view().length === 40, "all 40 leases");
    const eventMessages = sink.messages.filter((m) => m.kind === Kind.KIND_EVENTS);
    expect(eventMessages.length).toBeLessThan(10);
    const revs = eventMessages.flatMap((m) => m.events.map((e) => e.revision));
    expect(revs).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
  });

  it("drops a stream that falls too far behind and keeps serving the others", async () => {
    await start({ maxQueueBytes: 4096, highWaterBytes: 512 });
    const slow = new RecordingSink(true);
    const fast = new RecordingSink();
    hub.subscribe(0, slow);
    hub.subscribe(0, fast);
    for (let n = 1; n <= 60; n++) {
      await store.create(newLease(n));
      hub.flush();
      await new Promise((r) => setImmediate(r));
    }
    await waitFor(() => fast.view().length === 60, "fast stream complete");
    expect(slow.failed?.message).toMatch(/fell more than 4096 bytes behind; reconnect with from_revision/);
    expect(fast.failed).toBeUndefined();
    expect(hub.streams).toBe(1);
    // What a dropped stream was handed stays within its in-flight budget.
    expect(slow.frames.reduce((n, f) => n + f.length, 0)).toBeLessThan(512 + 300);
  });

  it("never drops a new stream for the size of its snapshot", async () => {
    await start({ maxQueueBytes: 1024, highWaterBytes: 256, snapshotChunk: 5 });
    for (let n = 1; n <= 40; n++) await store.create(newLease(n));
    const sink = new RecordingSink();
    hub.subscribe(0, sink);
    await waitFor(() => sink.messages.some((m) => m.kind === Kind.KIND_SNAPSHOT_COMPLETE), "snapshot completion");
    expect(sink.frames.reduce((n, f) => n + f.length, 0)).toBeGreaterThan(1024);
    expect(sink.failed).toBeUndefined();
    expect(sink.view()).toHaveLength(40);
  });

  it("encodes catch-up once for every stream resuming from the same revision", async () => {
    await start();
    for (const n of [1, 2, 3]) await store.create(newLease(n));
    hub.flush();
    const [a, b] = [new RecordingSink(), new RecordingSink()];
    hub.subscribe(1, a);
    hub.subscribe(1, b);
    await waitFor(() => a.frames.length >= 2 && b.frames.length >= 2, "catch-up on both");
    expect(a.frames[0]).toBe(b.frames[0]);
    expect(a.messages[0]!.events.map((e) => e.revision)).toEqual([2, 3]);
  });
});

