// A watch-fed store (etcd) lists the leases when it is subscribed to and then
// watches from that list's revision, some time later than subscribe() returns.
// A change committed after the hub's own list but before the store's list
// reaches neither, unless the hub lists only once the store's watch is in place.
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import type { LeaseEvent } from "../../lib/src/lease.js";
import { WatchHub } from "../src/watch-hub.js";
import { frameEncoder } from "../src/grpc-service.js";
import { SqliteLeaseStore } from "../src/store/sqlite-lease-store.js";
import { newLease } from "./lease-store.contract.js";
import { memoryLogger, tempDir } from "./helpers.js";

/** SQLite behind an etcd-like subscription: the watch starts 20 ms later, from the revision the store lists then. */
class WatchFedStore extends SqliteLeaseStore {
  #established!: Promise<void>;
  /** Committed by someone else (another lease server) while this store is still setting up its watch. */
  onSetup: () => Promise<void> = async () => {};

  override subscribe(listener: (events: readonly LeaseEvent[]) => void): () => void {
    let from = Infinity;
    const off = super.subscribe((evs) => {
      const after = evs.filter((e) => e.revision > from);
      if (after.length) listener(after);
    });
    this.#established = (async () => {
      await new Promise((r) => setTimeout(r, 20));
      await this.onSetup();
      from = (await this.listLeases()).revision;
    })();
    return off;
  }

  subscribed(): Promise<void> {
    return this.#established;
  }
}

describe("WatchHub on a watch-fed store", () => {
  const dir = tempDir("weft-hub-subscribed-");
  let hub: WatchHub | undefined;
  let store: WatchFedStore | undefined;
  afterEach(async () => {
    hub?.stop();
    await store?.close();
  });
  afterAll(() => dir.cleanup());

  it("lists only once the store's watch is in place, so a change made meanwhile is not lost", async () => {
    store = new WatchFedStore(join(dir.path, "leases.db"));
    await store.create(newLease(1));
    const s = store;
    store.onSetup = async () => void (await s.create(newLease(2)));
    hub = new WatchHub({ store, encoder: frameEncoder, log: memoryLogger().log, batchWindowMs: 0, progressIntervalMs: 0 });
    await hub.start();
    expect([...hub.leases()].map((l) => l.subnet).sort()).toEqual(["10.244.1.0/24", "10.244.2.0/24"]);
    // And what comes after arrives through the watch.
    await store.create(newLease(3));
    await new Promise((r) => setTimeout(r, 20));
    expect(hub.leaseCount).toBe(3);
  });
});
