// Changes go out to BROADCAST_SLICE streams per event-loop turn (watch-hub.ts):
// every stream still gets every change once and in order, also when changes
// and new streams arrive in the middle of a pass; a stream not reached yet
// gets the changes made meanwhile in one message.
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { WatchLeasesResponse, WatchLeasesResponse_Kind as Kind } from "../../gen/weft/v1/lease.js";
import { BROADCAST_SLICE, WatchHub, type WatchSink } from "../src/watch-hub.js";
import { frameEncoder } from "../src/grpc-service.js";
import { SqliteLeaseStore } from "../src/store/sqlite-lease-store.js";
import { newLease } from "./lease-store.contract.js";
import { memoryLogger, tempDir, waitFor } from "./helpers.js";

/** Records the revisions of the event messages it gets; completes writes on the next turn. */
class RevisionSink implements WatchSink {
  snapshotRevision = -1;
  events: number[] = [];
  /** Event messages. */
  messages = 0;
  write(frame: Buffer, done: () => void): void {
    const m = WatchLeasesResponse.decode(frame);
    if (m.kind === Kind.KIND_SNAPSHOT_COMPLETE) this.snapshotRevision = m.revision;
    if (m.kind === Kind.KIND_EVENTS) {
      this.messages++;
      for (const e of m.events) this.events.push(e.revision);
    }
    setImmediate(done);
  }
  failed = false;
  fail(): void {
    this.failed = true;
  }
}

describe("WatchHub passes in slices", () => {
  let dir: ReturnType<typeof tempDir>;
  let store: SqliteLeaseStore;
  let hub: WatchHub;
  beforeEach(async () => {
    dir = tempDir("weft-hub-slices-");
    store = new SqliteLeaseStore(join(dir.path, "h.db"), { historyLimit: 1000 });
    hub = new WatchHub({ store, encoder: frameEncoder, log: memoryLogger().log, batchWindowMs: 0, progressIntervalMs: 0 });
    await hub.start();
  });
  afterEach(async () => {
    hub.stop();
    await store.close();
    dir.cleanup();
  });

  it("gets every change to 3.5 slices of streams once and in order, with streams joining mid-broadcast", async () => {
    const n = Math.floor(BROADCAST_SLICE * 3.5);
    const early = Array.from({ length: n }, () => new RevisionSink());
    for (const s of early) hub.subscribe(0, s);
    const late: RevisionSink[] = [];
    let rev = 0;
    for (let k = 1; k <= 6; k++) {
      rev = (await store.create(newLease(k)))!.revision;
      hub.flush();
      // Right after a broadcast started: only its first slice has been written.
      if (k === 1) expect(early.filter((s) => s.events.length > 0).length).toBe(BROADCAST_SLICE);
      const s = new RevisionSink();
      hub.subscribe(0, s);
      late.push(s);
      // One more slice goes out before the next change: it comes in the middle of a pass.
      await new Promise((r) => setImmediate(r));
    }
    await waitFor(() => [...early, ...late].every((s) => s.events.at(-1) === rev || s.snapshotRevision === rev), "every stream at the last revision", 10_000);
    const all = Array.from({ length: 6 }, (_, i) => rev - 5 + i);
    expect([...early, ...late].filter((s) => s.failed)).toHaveLength(0);
    for (const s of early) expect(s.events).toEqual(all);
    // A stream the pass had not reached yet got the changes made meanwhile in one message.
    expect(early.at(-1)!.messages).toBeLessThan(6);
    // A stream that joined during a broadcast starts from a snapshot that has what was sent before it, then every later change.
    for (const s of late) {
      expect(all).toContain(s.snapshotRevision);
      expect(s.events).toEqual(all.filter((r) => r > s.snapshotRevision));
    }
  });
});
