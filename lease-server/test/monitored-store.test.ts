// The store monitor's rules on a fake store (the LeaseStore seam): which
// failures make the server not ready, which successes prove recovery, and how
// often it logs. The real disk-full and etcd cases: store-faults.test.ts.
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { WeftError } from "../../lib/src/errors.js";
import { monitorStore, type StoreHealth } from "../src/store/monitored-store.js";
import { SqliteLeaseStore } from "../src/store/sqlite-lease-store.js";
import type { LeaseStore } from "../src/store/lease-store.js";
import { memoryLogger, tempDir } from "./helpers.js";

/** A store whose writes fail while `full` is set. */
function fakeStore() {
  const state = { full: false };
  const fail = () => Promise.reject(new WeftError("STORE_UNAVAILABLE", "SQLite write failed: database or disk is full"));
  const store = {
    state,
    listLeases: async () => ({ leases: [], revision: 0 }),
    create: async (l: { subnet: string }) => (state.full ? fail() : l.subnet === "taken" ? undefined : { ...l, revision: 1 }),
    markAlive: async () => (state.full ? fail() : undefined),
    renewMissing: async () => Promise.reject(new WeftError("LEASE_NOT_FOUND", "no lease")),
  };
  return store as unknown as LeaseStore & typeof store;
}

describe("monitorStore", () => {
  let dir: ReturnType<typeof tempDir> | undefined;
  afterEach(() => dir?.cleanup());

  it("is not ready from the first failed write until a write really writes, logging once per period", async () => {
    const { log, lines } = memoryLogger();
    const changes: StoreHealth[] = [];
    let now = 1_000_000;
    const fake = fakeStore();
    const m = monitorStore(fake, { log, onChange: (h) => changes.push(h), now: () => now, logEveryMs: 60_000 });
    const s = m.store as typeof fake;

    fake.state.full = true;
    await expect(s.create({ subnet: "10.244.1.0/24" } as never)).rejects.toThrow(/disk is full/);
    expect(m.health()).toEqual({ ok: false, reason: "SQLite write failed: database or disk is full", since: 1_000_000 });
    await expect(s.markAlive(now)).rejects.toThrow();
    now += 30_000;
    await expect(s.markAlive(now)).rejects.toThrow();
    expect(lines.filter((l) => l.level === 50)).toHaveLength(1);
    now += 31_000;
    await expect(s.markAlive(now)).rejects.toThrow();
    const errors = lines.filter((l) => l.level === 50);
    expect(errors).toHaveLength(2);
    expect(errors[1]).toMatchObject({ msg: "lease store writes still fail", failingSeconds: 61, suppressed: 2 });

    // Reads, and a write that changed nothing, prove nothing.
    fake.state.full = false;
    await s.listLeases();
    await s.create({ subnet: "taken" } as never);
    expect(m.health().ok).toBe(false);
    await s.markAlive(now);
    expect(m.health()).toEqual({ ok: true });
    expect(lines.at(-1)).toMatchObject({ level: 30, msg: "lease store writes succeed again after 61s; ready" });
    expect(changes.map((c) => c.ok)).toEqual([false, true]);
  });

  it("ignores failures that are not the store's (a missing lease is an answer, not an outage)", async () => {
    const m = monitorStore(fakeStore(), { log: memoryLogger().log });
    await expect((m.store as ReturnType<typeof fakeStore>).renewMissing()).rejects.toThrow(/no lease/);
    expect(m.health().ok).toBe(true);
  });

  it("is the same store to its users: instanceof, private fields and extra members work", async () => {
    dir = tempDir("weft-monitor-");
    const real = new SqliteLeaseStore(join(dir.path, "m.db"));
    const { store } = monitorStore(real, { log: memoryLogger().log });
    expect(store).toBeInstanceOf(SqliteLeaseStore);
    expect((await store.listLeases()).revision).toBe(0);
    expect(store.database).toBe(real.database);
    expect(store.subscribe).toBe(store.subscribe);
    await store.close();
  });
});
