import { describe, expect, it } from "vitest";
import { DataplaneSync } from "../src/dataplane-sync.js";
import { createAgentMetrics } from "../src/metrics.js";
import { PeerTable } from "../src/peer-table.js";
import { Reconciler } from "../src/reconciler.js";
import { peer, silentLog, vxlanOnFake } from "./helpers/fixtures.js";

const lists = (calls: string[]) => calls.filter((c) => c.startsWith("list"));
const mutations = (calls: string[]) => calls.filter((c) => !c.startsWith("list"));

async function rig(peerCount: number) {
  const { dp, backend } = await vxlanOnFake();
  // How many leases each desired() call was given: a change pass asks for the changed ones alone.
  const asked: number[] = [];
  const desired = backend.desired.bind(backend);
  backend.desired = (peers) => (asked.push(peers.length), desired(peers));
  const table = new PeerTable("me");
  table.addSnapshotLeases(Array.from({ length: peerCount }, (_, i) => peer(i + 2)));
  table.completeSnapshot();
  const ac = new AbortController();
  let passes = 0;
  const kernelReads = { n: 0 };
  /** While set, the firewall check waits for it (nft takes tens of ms to answer). */
  const firewall = { gate: undefined as Promise<void> | undefined };
  const sync = new DataplaneSync({
    backend, firewall: { check: async () => undefined, ensure: async () => { await firewall.gate; return []; } }, reconciler: new Reconciler(silentLog), peers: table,
    underlayIndex: 2, resyncIntervalMs: 60_000, log: silentLog, metrics: createAgentMetrics(), signal: ac.signal,
    onPass: () => passes++,
    afterKernelRead: () => kernelReads.n++,
  });
  /** Asks for a pass and waits until it (and any it coalesced) ran. */
  const pass = async (what?: Parameters<DataplaneSync["request"]>[0]) => {
    const before = passes;
    sync.request(what);
    for (let i = 0; i < 200 && passes === before; i++) await new Promise((r) => setTimeout(r, 5));
    expect(passes).toBeGreaterThan(before);
  };
  return { dp, table, sync, pass, asked, kernelReads, firewall, stop: () => ac.abort() };
}

describe("DataplaneSync", () => {
  it("applies a lease event from the changed peer alone: no dump, no other peer's objects", async () => {
    const { dp, table, sync, pass, asked, stop } = await rig(50);
    await pass();
    expect(sync.counts.programmed).toBe(50);
    expect(asked).toEqual([50]);
    asked.length = 0;
    dp.calls.length = 0;
    table.applyEvent({ type: "added", lease: peer(90), revision: 100 });
    await pass();
    expect(lists(dp.calls)).toEqual([]);
    expect(mutations(dp.calls).sort()).toEqual(["putFdb 0e:00:00:00:00:5a", "putNeighbour 10.244.90.0", "putRoute 10.244.90.0/24"]);
    dp.calls.length = 0;
    table.applyEvent({ type: "removed", lease: peer(3), revision: 101 });
    await pass();
    expect(lists(dp.calls)).toEqual([]);
    expect(mutations(dp.calls)).toEqual(["removeRoute 10.244.3.0/24", "removeNeighbour 10.244.3.0", "removeFdb 0e:00:00:00:00:03"]);
    expect(sync.counts.programmed).toBe(50);
    // Before and after of the one changed lease, twice; never the whole table.
    expect(asked).toEqual([0, 1, 1, 0]);
    stop();
  });

  const until = async (what: string, cond: () => boolean) => {
    for (let i = 0; i < 100 && !cond(); i++) await new Promise((r) => setTimeout(r, 2));
    expect(cond(), what).toBe(true);
  };

  it("programs a lease event that arrives while a timer pass checks the firewall at once, beside it", async () => {
    const { dp, table, sync, pass, firewall, stop } = await rig(5);
    await pass();
    let release!: () => void;
    firewall.gate = new Promise((r) => (release = r));
    dp.calls.length = 0;
    sync.request({ firewall: true, kernel: true });
    await new Promise((r) => setTimeout(r, 5));
    table.applyEvent({ type: "added", lease: peer(90), revision: 100 });
    sync.request();
    await until("the new peer's route in the kernel while the firewall check still runs", () => dp.routeMap.has("10.244.90.0/24"));
    expect(dp.calls.filter((c) => c.startsWith("list"))).toEqual([]);
    firewall.gate = undefined;
    release();
    await pass();
    expect(dp.calls.filter((c) => c.startsWith("list"))).toEqual(["listRoutes "]);
    expect(sync.counts.programmed).toBe(6);
    stop();
  });

  it("programs a lease event that arrives while a full pass reads the kernel at once, beside it", async () => {
    const { dp, table, sync, pass, stop } = await rig(20);
    await pass();
    let release!: () => void;
    dp.listGate = new Promise((r) => (release = r));
    dp.calls.length = 0;
    sync.request({ kernel: true });
    await until("the full pass reading routes", () => dp.calls.includes("listRoutes "));
    table.applyEvent({ type: "added", lease: peer(90), revision: 100 });
    sync.request();
    await until("the new peer's route in the kernel while the read still waits", () => dp.routeMap.has("10.244.90.0/24"));
    // One change beside a read at a time: the next waits for the pass after it.
    table.applyEvent({ type: "removed", lease: peer(3), revision: 101 });
    sync.request();
    await new Promise((r) => setTimeout(r, 20));
    expect(dp.routeMap.has("10.244.3.0/24")).toBe(true);
    dp.listGate = undefined;
    release();
    await until("the removal programmed after the read", () => !dp.routeMap.has("10.244.3.0/24"));
    await pass();
    expect(dp.routeMap.has("10.244.90.0/24")).toBe(true);
    expect(dp.routeMap.size).toBe(20);
    // The full pass changed nothing the change had made: one put per object, no removal of it.
    expect(mutations(dp.calls).filter((c) => c.includes("10.244.90.")).sort()).toEqual(["putNeighbour 10.244.90.0", "putRoute 10.244.90.0/24"]);
    expect(sync.counts.programmed).toBe(20);
    stop();
  });

  it("keeps rejections of unchanged peers across a change pass, and drops those of changed ones", async () => {
    const { table, sync, pass, stop } = await rig(3);
    table.applyEvent({ type: "added", lease: peer(40, { attrs: { type: "vxlan", vni: 7, vtepMac: "0e:00:00:00:00:40" } }), revision: 10 });
    await pass();
    expect(sync.counts.rejected).toBe(1);
    table.applyEvent({ type: "added", lease: peer(41), revision: 11 });
    await pass();
    expect(sync.counts).toEqual({ programmed: 4, rejected: 1 });
    table.applyEvent({ type: "changed", lease: peer(40), revision: 12 });
    await pass();
    expect(sync.counts).toEqual({ programmed: 5, rejected: 0 });
    stop();
  });

  it("reads the kernel when the timer asks, and after a snapshot replaced the table", async () => {
    const { dp, table, pass, kernelReads, stop } = await rig(5);
    await pass();
    expect(kernelReads.n).toBe(1);
    table.applyEvent({ type: "added", lease: peer(60), revision: 10 });
    await pass();
    // A change pass reads nothing, so there is nothing to collect after it.
    expect(kernelReads.n).toBe(1);
    dp.calls.length = 0;
    await pass({ kernel: true });
    expect(lists(dp.calls).length).toBeGreaterThan(0);
    expect(kernelReads.n).toBe(2);
    dp.calls.length = 0;
    table.addSnapshotLeases([peer(2), peer(3)]);
    table.completeSnapshot();
    await pass();
    // From memory (no dumps), but over the whole new table: the four peers that left go.
    expect(mutations(dp.calls).filter((c) => c.startsWith("removeRoute")).length).toBe(4);
    stop();
  });
});

describe("collectGarbage", () => {
  it("asks V8 for a concurrent full collection when node runs with --expose-gc (at most one a second), and does nothing without", async () => {
    const { collectGarbage } = await import("../src/heap.js");
    const g = globalThis as { gc?: unknown };
    const had = g.gc;
    try {
      delete g.gc;
      expect(() => collectGarbage()).not.toThrow();
      const asked: unknown[] = [];
      g.gc = (o: unknown) => (asked.push(o), Promise.resolve());
      collectGarbage(1_000_000);
      expect(asked).toEqual([{ type: "major", execution: "async" }]);
      // At most one a second, however many passes read the kernel.
      collectGarbage(1_000_900);
      expect(asked.length).toBe(1);
      collectGarbage(1_001_000);
      expect(asked.length).toBe(2);
    } finally {
      g.gc = had;
    }
  });
});
