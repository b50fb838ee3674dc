import { describe, expect, it } from "vitest";
import { parseNetworkConfig } from "../../lib/src/net-config.js";
import { desiredEntry, type DesiredState } from "../src/backends/backend.js";
import type { KernelTable } from "../src/dataplane/dataplane.js";
import { Reconciler } from "../src/reconciler.js";
import { peer, silentLog, vxlanOnFake } from "./helpers/fixtures.js";

const mutations = (calls: string[]) => calls.filter((c) => !c.startsWith("list"));

/** 20 VXLAN peers programmed on a fake, and peer 5 as it looks after it moved (new MAC and address). */
async function twentyPeersProgrammed() {
  const { dp, backend } = await vxlanOnFake();
  const rec = new Reconciler(silentLog);
  const peers = Array.from({ length: 20 }, (_, i) => peer(i + 2));
  await rec.reconcile(backend.desired(peers));
  dp.calls.length = 0;
  const moved = peer(5, { publicIP: "198.18.0.77", attrs: { type: "vxlan", vni: 1, vtepMac: "0e:00:00:00:77:77" } });
  return { dp, backend, rec, peers, moved };
}

describe("Reconciler on a FakeDataplane", () => {
  it("programs ARP, FDB and route per peer, routes last, and is idempotent", async () => {
    const { dp, backend } = await vxlanOnFake();
    const rec = new Reconciler(silentLog);
    dp.calls.length = 0;
    const r = await rec.reconcile(backend.desired([peer(2), peer(3)]));
    expect(r).toMatchObject({ added: 6, deleted: 0, errors: 0 });
    expect([...r.programmed].sort()).toEqual(["10.244.2.0/24", "10.244.3.0/24"]);
    const kinds = mutations(dp.calls).map((c) => c.split(" ")[0]);
    expect(kinds.lastIndexOf("putNeighbour")).toBeLessThan(kinds.indexOf("putRoute"));
    expect(kinds.lastIndexOf("putFdb")).toBeLessThan(kinds.indexOf("putRoute"));
    expect(dp.routeMap.get("10.244.2.0/24")).toEqual({ dst: "10.244.2.0/24", gateway: "10.244.2.0", oif: backend.deviceIndex, onlink: true });
    expect(dp.neighbourMap.get(`${backend.deviceIndex}|10.244.2.0`)?.mac).toBe("0e:00:00:00:00:02");
    expect([...dp.fdbMap.values()].find((f) => f.mac === "0e:00:00:00:00:02")?.dst).toBe("198.18.0.2");
    dp.calls.length = 0;
    const again = await rec.reconcile(backend.desired([peer(2), peer(3)]));
    expect(again).toMatchObject({ added: 0, deleted: 0, errors: 0 });
    expect(mutations(dp.calls)).toEqual([]);
  });

  it("prunes a vanished peer (route first) and touches nothing it does not own", async () => {
    const { dp, backend } = await vxlanOnFake();
    const rec = new Reconciler(silentLog);
    dp.foreignRoutes.set("10.99.0.0/24", { dst: "10.99.0.0/24", gateway: "198.18.0.9", oif: 2, onlink: false });
    dp.neighbourMap.set("2|198.18.0.9", { index: 2, ip: "198.18.0.9", mac: "0e:99:00:00:00:01" });
    await rec.reconcile(backend.desired([peer(2), peer(3)]));
    dp.calls.length = 0;
    const r = await rec.reconcile(backend.desired([peer(2)]));
    expect(r.deleted).toBe(3);
    const muts = mutations(dp.calls);
    expect(muts[0]).toBe("removeRoute 10.244.3.0/24");
    expect(dp.routeMap.has("10.244.3.0/24")).toBe(false);
    // The fake's route removal would delete a foreign route too, so this fails if the reconciler ever removes one.
    expect(muts).not.toContain("removeRoute 10.99.0.0/24");
    expect(dp.foreignRoutes.size).toBe(1);
    expect(dp.neighbourMap.has("2|198.18.0.9")).toBe(true);
  });

  it("follows a peer whose MAC and public IP changed", async () => {
    const { dp, backend } = await vxlanOnFake();
    const rec = new Reconciler(silentLog);
    await rec.reconcile(backend.desired([peer(2)]));
    const moved = peer(2, { publicIP: "198.18.0.77", attrs: { type: "vxlan", vni: 1, vtepMac: "0e:00:00:00:77:77" } });
    await rec.reconcile(backend.desired([moved]));
    expect([...dp.fdbMap.values()]).toEqual([{ index: backend.deviceIndex, mac: "0e:00:00:00:77:77", dst: "198.18.0.77" }]);
    expect([...dp.neighbourMap.values()].map((n) => n.mac)).toEqual(["0e:00:00:00:77:77"]);
    expect(dp.routeMap.size).toBe(1);
  });

  it("withholds the route when ARP/FDB fail, reports why, and the next pass retries", async () => {
    const { dp, backend } = await vxlanOnFake();
    const errors: string[] = [];
    const rec = new Reconciler(silentLog, { onError: (op) => errors.push(op) });
    dp.failing.add("putFdb");
    const r = await rec.reconcile(backend.desired([peer(2)]));
    expect(r.errors).toBe(1);
    expect(r.programmed.size).toBe(0);
    expect(r.failed.get("10.244.2.0/24")).toMatch(/putFdb .*injected failure/);
    expect(r.problems).toEqual([expect.stringMatching(/injected failure/)]);
    expect(dp.routeMap.size).toBe(0);
    expect(errors).toEqual(["fdb_put"]);
    dp.failing.clear();
    const r2 = await rec.reconcile(backend.desired([peer(2)]));
    expect(r2.programmed.has("10.244.2.0/24")).toBe(true);
    expect(r2.failed.size).toBe(0);
    expect(dp.routeMap.size).toBe(1);
    // Not drift: the entries were never in place.
    expect(r2.repaired.size).toBe(0);
  });

  it("rejects peers with another VNI or backend without failing others", async () => {
    const { dp, backend } = await vxlanOnFake();
    const rec = new Reconciler(silentLog);
    const r = await rec.reconcile(backend.desired([peer(2), peer(3, { attrs: { type: "vxlan", vni: 9, vtepMac: "0e:00:00:00:00:03" } }), peer(4, { attrs: { type: "host-gw" } })]));
    expect([...r.programmed]).toEqual(["10.244.2.0/24"]);
    expect(r.errors).toBe(0);
    expect(r.rejected.get("10.244.3.0/24")).toMatchObject({ reason: "invalid", detail: "VNI 9, want 1" });
    expect(r.rejected.get("10.244.4.0/24")).toMatchObject({ reason: "backend_mismatch" });
    expect(dp.routeMap.size).toBe(1);
  });

  it("never clobbers a foreign route to a peer's subnet: reports an error and leaves it", async () => {
    const { dp, backend } = await vxlanOnFake();
    const rec = new Reconciler(silentLog);
    const foreign = { dst: "10.244.3.0/24", gateway: "198.18.0.9", oif: 2, onlink: false };
    dp.foreignRoutes.set(foreign.dst, foreign);
    const r = await rec.reconcile(backend.desired([peer(2), peer(3)]));
    expect(r.errors).toBe(1);
    expect([...r.programmed]).toEqual(["10.244.2.0/24"]);
    expect(dp.foreignRoutes.get(foreign.dst)).toEqual(foreign);
    expect(dp.routeMap.has(foreign.dst)).toBe(false);
  });

  it("counts objects put back after drift, by kind", async () => {
    const { dp, backend } = await vxlanOnFake();
    const rec = new Reconciler(silentLog);
    await rec.reconcile(backend.desired([peer(2), peer(3)]));
    dp.routeMap.delete("10.244.2.0/24");
    dp.neighbourMap.delete(`${backend.deviceIndex}|10.244.3.0`);
    const r = await rec.reconcile(backend.desired([peer(2), peer(3)]));
    expect(Object.fromEntries(r.repaired)).toEqual({ route: 1, neighbour: 1 });
    expect(r.added).toBe(2);
  });

  it("judges kernel notifications: only changes that undo something wanted matter", async () => {
    const { dp, backend } = await vxlanOnFake();
    const rec = new Reconciler(silentLog);
    await rec.reconcile(backend.desired([peer(2)]));
    const ix = backend.deviceIndex;
    const route = dp.routeMap.get("10.244.2.0/24")!;
    // Our own adds echo back: not drift.
    expect(rec.affectedBy({ kind: "route", deleted: false, value: route, ours: true })).toBe(false);
    expect(rec.affectedBy({ kind: "neighbour", deleted: false, value: { index: ix, ip: "10.244.2.0", mac: "0e:00:00:00:00:02" }, ours: true })).toBe(false);
    // Deletions, foreign replacements and changed values of wanted objects are.
    expect(rec.affectedBy({ kind: "route", deleted: true, value: route, ours: true })).toBe(true);
    expect(rec.affectedBy({ kind: "route", deleted: false, value: { ...route, gateway: "198.18.0.9", onlink: false }, ours: false })).toBe(true);
    expect(rec.affectedBy({ kind: "neighbour", deleted: true, value: { index: ix, ip: "10.244.2.0", mac: "" }, ours: false })).toBe(true);
    expect(rec.affectedBy({ kind: "neighbour", deleted: false, value: { index: ix, ip: "10.244.2.0", mac: "0e:00:00:00:00:99" }, ours: true })).toBe(true);
    expect(rec.affectedBy({ kind: "fdb", deleted: true, value: { index: ix, mac: "0e:00:00:00:00:02", dst: "198.18.0.2" }, ours: true })).toBe(true);
    // Anything else is noise: other routes, other devices, removals we made ourselves.
    expect(rec.affectedBy({ kind: "route", deleted: true, value: { dst: "10.99.0.0/24", oif: 2, onlink: false }, ours: false })).toBe(false);
    expect(rec.affectedBy({ kind: "neighbour", deleted: true, value: { index: 2, ip: "10.244.2.0", mac: "" }, ours: false })).toBe(false);
    expect(rec.affectedBy({ kind: "fdb", deleted: true, value: { index: ix, mac: "0e:00:00:00:00:02", dst: "198.18.0.77" }, ours: true })).toBe(false);
    expect(rec.affectedBy({ kind: "lost", why: "overflow" })).toBe(false);
  });

  it("does not take the echoes of its own removals for drift, even while the pass still runs", async () => {
    const { dp, backend } = await vxlanOnFake();
    const rec = new Reconciler(silentLog);
    await rec.reconcile(backend.desired([peer(2), peer(3)]));
    const judged: boolean[] = [];
    const remove = dp.routes.remove;
    (dp.routes as { remove: typeof remove }).remove = async (r) => {
      await remove(r);
      judged.push(rec.affectedBy({ kind: "route", deleted: true, value: r, ours: true }));
    };
    await rec.reconcile(backend.desired([peer(2)]));
    expect(judged).toEqual([false]);
  });

  it("announces bulk passes (so the agent can mute their echoes) and ends them when the pass ends", async () => {
    const { dp, backend } = await vxlanOnFake();
    const bulks: Array<{ ops: number; endedAfterPuts: boolean }> = [];
    const rec = new Reconciler(silentLog, {
      onBulk: (ops) => {
        const b = { ops, endedAfterPuts: false };
        bulks.push(b);
        return () => { b.endedAfterPuts = dp.routeMap.size === 100; };
      },
    });
    await rec.reconcile(backend.desired(Array.from({ length: 100 }, (_, i) => peer(i + 2))));
    expect(bulks).toEqual([{ ops: 300, endedAfterPuts: true }]);
    await rec.reconcile(backend.desired(Array.from({ length: 99 }, (_, i) => peer(i + 2))));
    expect(bulks.length).toBe(1);
  });

  it("applies any backend's tables in stage order without knowing them", async () => {
    // A table the reconciler has never seen (as a WireGuard peer table will be).
    const kernel = new Map<string, { key: string; v: number }>();
    const log: string[] = [];
    const peers: KernelTable<{ key: string; v: number }> = {
      kind: "fdb",
      list: async () => [...kernel.values()],
      id: (o) => o.key,
      key: (o) => `${o.key}=${o.v}`,
      put: async (o) => { log.push(`put ${o.key}`); kernel.set(o.key, o); },
      remove: async (o) => { log.push(`remove ${o.key}`); kernel.delete(o.key); },
    };
    const { dp } = await vxlanOnFake(undefined, parseNetworkConfig('{"Network": "10.244.0.0/16"}'));
    kernel.set("stale", { key: "stale", v: 1 });
    const want: DesiredState = {
      stages: [[{ table: peers, entries: [{ peer: "a", value: { key: "k1", v: 1 } }] }], [{ table: dp.routes, entries: [{ peer: "a", value: { dst: "10.244.9.0/24", oif: 5, onlink: false } }] }]],
      rejected: new Map(),
    };
    const r = await new Reconciler(silentLog).reconcile(want);
    expect(log).toEqual(["put k1", "remove stale"]);
    expect(dp.routeMap.has("10.244.9.0/24")).toBe(true);
    expect([...r.programmed]).toEqual(["a"]);
  });

  it("reads a table that scans as its replies arrive, and forgets a reading the kernel restarted", async () => {
    const kernel = new Map<string, { key: string; v: number }>([["k1", { key: "k1", v: 1 }], ["k2", { key: "k2", v: 1 }]]);
    const log: string[] = [];
    let restarts = 0;
    const table: KernelTable<{ key: string; v: number }> = {
      kind: "fdb",
      list: async () => { throw new Error("a table that scans is not listed"); },
      // The first reading raced with a change (k2 went away, "gone" came and went): it is read again.
      scan: async (visit, restart) => {
        visit({ key: "k2", v: 1 });
        visit({ key: "gone", v: 1 });
        restart();
        restarts++;
        kernel.delete("k2");
        for (const o of kernel.values()) visit(o);
      },
      id: (o) => o.key,
      key: (o) => `${o.key}=${o.v}`,
      put: async (o) => { log.push(`put ${o.key}`); kernel.set(o.key, o); },
      remove: async (o) => { log.push(`remove ${o.key}`); kernel.delete(o.key); },
    };
    const want: DesiredState = {
      stages: [[{ table, entries: [{ peer: "a", value: { key: "k1", v: 1 } }, { peer: "b", value: { key: "k2", v: 1 } }] }]],
      rejected: new Map(),
    };
    const r = await new Reconciler(silentLog).reconcile(want);
    // k2 was seen only by the reading that was thrown away, "gone" likewise: put k2, remove nothing.
    expect(restarts).toBe(1);
    expect(log).toEqual(["put k2"]);
    expect([...r.programmed].sort()).toEqual(["a", "b"]);
  });

  it("applies a lease event from memory: only the changed peer's objects, no dumps", async () => {
    const { dp, backend, rec, peers, moved } = await twentyPeersProgrammed();
    const next = [...peers.slice(0, 3), moved, ...peers.slice(4, 19)]; // peer 5 changed, peer 21 gone
    const r = await rec.reconcile(backend.desired(next), { trustMemory: true });
    expect(dp.calls.filter((c) => c.startsWith("list"))).toEqual([]);
    expect(mutations(dp.calls).sort()).toEqual([
      "putFdb 0e:00:00:00:77:77", "putNeighbour 10.244.5.0",
      "removeFdb 0e:00:00:00:00:05", "removeFdb 0e:00:00:00:00:15", "removeNeighbour 10.244.21.0", "removeRoute 10.244.21.0/24",
    ].sort());
    expect([...dp.fdbMap.values()].find((f) => f.mac === "0e:00:00:00:77:77")?.dst).toBe("198.18.0.77");
    expect(dp.routeMap.size).toBe(19);
    expect(r.programmed.size).toBe(19);
    expect(r.programmed.has(peers[19]!.subnet)).toBe(false);
  });

  it("applies a change from the changed peers' leases alone, and later full passes agree with it", async () => {
    const { dp, backend, rec, peers, moved } = await twentyPeersProgrammed();
    const r1 = await rec.reconcileChange(backend.desired([peers[3]!]), backend.desired([moved]));
    expect(mutations(dp.calls).sort()).toEqual(["putFdb 0e:00:00:00:77:77", "putNeighbour 10.244.5.0", "removeFdb 0e:00:00:00:00:05"]);
    expect(r1).toMatchObject({ added: 2, deleted: 1, errors: 0 });
    dp.calls.length = 0;
    const r2 = await rec.reconcileChange(backend.desired([peers[19]!]), backend.desired([]));
    expect(mutations(dp.calls)).toEqual(["removeRoute 10.244.21.0/24", "removeNeighbour 10.244.21.0", "removeFdb 0e:00:00:00:00:15"]);
    expect(r2!.programmed.has(peers[19]!.subnet)).toBe(false);
    const r3 = await rec.reconcileChange(backend.desired([]), backend.desired([peer(30), peer(31)]));
    expect(r3).toMatchObject({ added: 6, deleted: 0 });
    expect(r3!.programmed.size).toBe(21);
    expect(dp.calls.filter((c) => c.startsWith("list"))).toEqual([]);
    // A full pass from memory after the changes: peer 31 is no longer listed, so it goes; nothing else moves.
    const now = [...peers.slice(0, 3), moved, ...peers.slice(4, 19), peer(30)];
    dp.calls.length = 0;
    const full = await rec.reconcile(backend.desired(now), { trustMemory: true });
    expect(mutations(dp.calls).sort()).toEqual(["removeFdb 0e:00:00:00:00:1f", "removeNeighbour 10.244.31.0", "removeRoute 10.244.31.0/24"]);
    expect(full.programmed.size).toBe(20);
    // And the kernel holds exactly what the model says: a pass that reads it changes nothing.
    dp.calls.length = 0;
    expect(await rec.reconcile(backend.desired(now))).toMatchObject({ added: 0, deleted: 0, errors: 0 });
    expect(mutations(dp.calls)).toEqual([]);
  });

  it("counts a peer as programmed again once a pass after a failed reading of the kernel puts it", async () => {
    const { dp, backend } = await vxlanOnFake();
    const rec = new Reconciler(silentLog);
    await rec.reconcile(backend.desired([peer(2)]));
    dp.failing.add("listRoutes");
    await expect(rec.reconcile(backend.desired([peer(2), peer(3)]))).rejects.toThrow(/injected failure/);
    dp.failing.clear();
    const r = await rec.reconcile(backend.desired([peer(2), peer(3)]));
    expect(r).toMatchObject({ added: 3, errors: 0 });
    expect([...r.programmed].sort()).toEqual(["10.244.2.0/24", "10.244.3.0/24"]);
  });

  it("refuses a change pass while its memory is doubtful (drift, failures), so a full pass runs", async () => {
    const { dp, backend } = await vxlanOnFake();
    const rec = new Reconciler(silentLog);
    expect(await rec.reconcileChange(backend.desired([]), backend.desired([peer(2)]))).toBeUndefined();
    await rec.reconcile(backend.desired([peer(2)]));
    const route = dp.routeMap.get("10.244.2.0/24")!;
    expect(rec.affectedBy({ kind: "route", deleted: true, value: route, ours: true })).toBe(true);
    expect(await rec.reconcileChange(backend.desired([]), backend.desired([peer(3)]))).toBeUndefined();
    await rec.reconcile(backend.desired([peer(2)]));
    dp.failing.add("putRoute");
    expect(await rec.reconcileChange(backend.desired([]), backend.desired([peer(3)]))).toMatchObject({ errors: 1 });
    dp.failing.clear();
    expect(await rec.reconcileChange(backend.desired([]), backend.desired([peer(4)]))).toBeUndefined();
  });

  it("reads the kernel again after drift or a failure, even for a lease event", async () => {
    const { dp, backend } = await vxlanOnFake();
    const rec = new Reconciler(silentLog);
    const peers = [peer(2), peer(3)];
    await rec.reconcile(backend.desired(peers));
    // Drift announced: the memory is doubtful, so the next pass lists and repairs.
    const route = dp.routeMap.get("10.244.2.0/24")!;
    dp.routeMap.delete(route.dst);
    expect(rec.affectedBy({ kind: "route", deleted: true, value: route, ours: true })).toBe(true);
    dp.calls.length = 0;
    const r = await rec.reconcile(backend.desired(peers), { trustMemory: true });
    expect(dp.calls).toContain("listRoutes ");
    expect(r.added).toBe(1);
    // A failed put: the next pass lists too.
    dp.failing.add("putRoute");
    await rec.reconcile(backend.desired([...peers, peer(4)]), { trustMemory: true });
    dp.failing.clear();
    dp.calls.length = 0;
    const again = await rec.reconcile(backend.desired([...peers, peer(4)]), { trustMemory: true });
    expect(dp.calls).toContain("listRoutes ");
    expect(again.added).toBe(1);
    expect(dp.routeMap.has("10.244.4.0/24")).toBe(true);
    // Then, with nothing doubtful, a lease event touches the kernel for its peer alone.
    dp.calls.length = 0;
    await rec.reconcile(backend.desired([...peers, peer(4)]), { trustMemory: true });
    expect(dp.calls).toEqual([]);
  });

  it("uses a table's batch operations for many objects, and reports each failure against its peer", async () => {
    const { dp, backend } = await vxlanOnFake();
    const batches: string[] = [];
    const routes = dp.routes;
    (routes as { putMany?: unknown }).putMany = async (rs: Array<{ dst: string }>) => {
      batches.push(`put ${rs.length}`);
      return Promise.all(rs.map((r) => (r.dst === "10.244.3.0/24" ? new Error("no route for you") : routes.put(r as never).then(() => undefined))));
    };
    const errors: string[] = [];
    const r = await new Reconciler(silentLog, { onError: (op) => errors.push(op) }).reconcile(backend.desired([peer(2), peer(3), peer(4)]));
    expect(batches).toEqual(["put 3"]);
    expect(r.errors).toBe(1);
    expect([...r.failed.keys()]).toEqual(["10.244.3.0/24"]);
    expect([...r.programmed].sort()).toEqual(["10.244.2.0/24", "10.244.4.0/24"]);
    expect(errors).toEqual(["route_put"]);
  });
});

describe("Reconciler: a change pass beside a full pass's reading of the kernel", () => {
  it("runs the change at once, and applies the full pass only after it", async () => {
    type Obj = { id: string; v: number };
    const kernel = new Map<string, Obj>();
    const log: string[] = [];
    let listGate: Promise<void> | undefined;
    let putGate: Promise<void> | undefined;
    const table: KernelTable<Obj> = {
      kind: "route",
      list: async () => { log.push("list"); await listGate; return [...kernel.values()]; },
      id: (o) => o.id,
      key: (o) => `${o.id}|${o.v}`,
      put: async (o) => { log.push(`put ${o.id}`); if (o.id === "b") await putGate; kernel.set(o.id, o); },
      remove: async (o) => { log.push(`remove ${o.id}`); kernel.delete(o.id); },
    };
    const state = (...ids: string[]): DesiredState => ({ stages: [[{ table, entries: ids.map((id) => desiredEntry(id, { id, v: 1 })) }]], rejected: new Map() });
    const a = state("a");
    const rec = new Reconciler(silentLog);
    await rec.reconcile(a);
    expect(rec.acceptsChange).toBe(true);
    let openList!: () => void, openPut!: () => void;
    listGate = new Promise((r) => (openList = r));
    putGate = new Promise((r) => (openPut = r));
    log.length = 0;
    const full = rec.reconcile(a);
    await new Promise((r) => setTimeout(r, 1));
    expect(log).toEqual(["list"]);
    expect(rec.acceptsChange).toBe(true);
    const change = rec.reconcileChange(state(), state("b"));
    expect(log).toEqual(["list", "put b"]);
    // One change pass at a time.
    expect(rec.acceptsChange).toBe(false);
    openList();
    await new Promise((r) => setTimeout(r, 5));
    // The full pass read the kernel before b got there, so it will put b too, but only after the change is done.
    expect(log).toEqual(["list", "put b"]);
    openPut();
    expect(await change).toMatchObject({ added: 1, errors: 0 });
    expect(await full).toMatchObject({ deleted: 0, errors: 0 });
    expect(log).toEqual(["list", "put b", "put b"]);
    expect([...kernel.keys()].sort()).toEqual(["a", "b"]);
    expect([...(await rec.reconcile(state("a", "b"))).programmed].sort()).toEqual(["a", "b"]);
  });
});
