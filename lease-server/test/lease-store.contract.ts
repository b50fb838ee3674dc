// The behaviour every LeaseStore must have. Each store's test file calls
// describeLeaseStoreContract with a factory for a fresh, empty store.
import { afterEach, describe, expect, it, vi } from "vitest";
import type { BackendAttrs, LeaseEvent } from "../../lib/src/lease.js";
import type { LeaseStore, NewLease } from "../src/store/lease-store.js";

const attrs = (n: number): BackendAttrs => ({ type: "vxlan", vni: 1, vtepMac: `0e:00:00:00:00:${n.toString(16).padStart(2, "0")}` });
export const newLease = (n: number, over: Partial<NewLease> = {}): NewLease => ({
  subnet: `10.244.${n}.0/24`, nodeName: `node-${n}`, publicIP: `198.18.0.${n}`, attrs: attrs(n), expiresAt: Date.now() + 60_000, ...over,
});

export interface ContractOptions {
  /**
   * The store expires leases itself (etcd: each lease key is on an etcd lease with its TTL), so expire()
   * sweeps nothing and a lease whose time has come disappears on its own, with a "removed" event.
   */
  readonly expiresItself?: boolean;
  /** Drops history before `revision` (etcd: compaction); stores that keep a bounded log need not. */
  readonly forgetHistoryBefore?: (s: LeaseStore, revision: number) => Promise<void>;
}

export function describeLeaseStoreContract(name: string, make: () => Promise<LeaseStore>, opts: ContractOptions = {}): void {
  describe(`LeaseStore contract: ${name}`, () => {
    const open: LeaseStore[] = [];
    const fresh = async () => {
      const s = await make();
      open.push(s);
      return s;
    };
    afterEach(async () => {
      await Promise.all(open.splice(0).map((s) => s.close()));
    });

    it("creates a lease and numbers it with a new revision", async () => {
      const s = await fresh();
      const a = await s.create(newLease(1));
      const b = await s.create(newLease(2));
      expect(a?.revision).toBeGreaterThan(0);
      expect(b!.revision).toBeGreaterThan(a!.revision);
      const { leases, revision } = await s.listLeases();
      expect(leases.map((l) => l.subnet)).toEqual(["10.244.1.0/24", "10.244.2.0/24"]);
      expect(revision).toBe(b!.revision);
      expect(leases[0]).toMatchObject({ nodeName: "node-1", publicIP: "198.18.0.1", attrs: attrs(1) });
    });

    it("refuses a second lease on a subnet or for a node", async () => {
      const s = await fresh();
      expect(await s.create(newLease(1))).toBeDefined();
      expect(await s.create(newLease(2, { subnet: "10.244.1.0/24" }))).toBeUndefined();
      expect(await s.create(newLease(3, { nodeName: "node-1" }))).toBeUndefined();
      expect((await s.listLeases()).leases).toHaveLength(1);
    });

    it("updates only a lease the node still holds", async () => {
      const s = await fresh();
      await s.create(newLease(1));
      const upd = await s.update("10.244.1.0/24", "node-1", { publicIP: "198.18.0.99" });
      expect(upd).toMatchObject({ publicIP: "198.18.0.99", nodeName: "node-1" });
      expect(await s.update("10.244.1.0/24", "node-2", { publicIP: "198.18.0.5" })).toBeUndefined();
      expect(await s.update("10.244.9.0/24", "node-1", { publicIP: "198.18.0.5" })).toBeUndefined();
      expect((await s.getLeaseByNode("node-1"))?.publicIP).toBe("198.18.0.99");
    });

    it("removes idempotently and remembers who held a freed subnet", async () => {
      const s = await fresh();
      await s.create(newLease(1));
      expect(await s.remove("10.244.1.0/24", "node-2", "released")).toBeUndefined();
      expect((await s.remove("10.244.1.0/24", "node-1", "released"))?.nodeName).toBe("node-1");
      expect(await s.remove("10.244.1.0/24", "node-1", "released")).toBeUndefined();
      const freed = await s.listFreed();
      expect(freed).toEqual([expect.objectContaining({ subnet: "10.244.1.0/24", nodeName: "node-1" })]);
      expect(await s.getLeaseByNode("node-1")).toBeUndefined();
    });

    // One of the two expiry tests, by how the store expires (not a skip: each store runs the one that applies).
    if (!opts.expiresItself) it("expires only leases whose time has come, never reservations-style leases with expiresAt 0", async () => {
      const s = await fresh();
      const now = Date.now();
      await s.create(newLease(1, { expiresAt: now - 1 }));
      await s.create(newLease(2, { expiresAt: now + 60_000 }));
      await s.create(newLease(3, { expiresAt: 0 }));
      const seen: LeaseEvent[] = [];
      s.subscribe((evs) => seen.push(...evs));
      const gone = await s.expire(now);
      expect(gone.map((l) => l.subnet)).toEqual(["10.244.1.0/24"]);
      expect(seen.map((e) => [e.type, e.reason])).toEqual([["removed", "expired"]]);
      expect((await s.listLeases()).leases.map((l) => l.nodeName)).toEqual(["node-2", "node-3"]);
      expect(await s.expire(now)).toEqual([]);
    });

    if (opts.expiresItself) it("expires a lease by itself when its time has come (no sweeper, no server clock), never one with expiresAt 0", async () => {
      const s = await fresh();
      const removed: LeaseEvent[] = [];
      s.subscribe((evs) => removed.push(...evs.filter((e) => e.type === "removed")));
      await s.create(newLease(1, { expiresAt: Date.now() + 1000 }));
      await s.create(newLease(2, { expiresAt: Date.now() + 60_000 }));
      await s.create(newLease(3, { expiresAt: 0 }));
      expect(await s.expire(Date.now() + 3_600_000)).toEqual([]);
      const deadline = Date.now() + 10_000;
      while ((await s.listLeases()).leases.length > 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
      expect((await s.listLeases()).leases.map((l) => l.nodeName)).toEqual(["node-2", "node-3"]);
      while (removed.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(removed.map((e) => e.lease)).toEqual([expect.objectContaining({ subnet: "10.244.1.0/24", nodeName: "node-1", attrs: attrs(1) })]);
      expect(removed.map((e) => e.reason)).toEqual(["expired"]);
      await vi.waitFor(async () => expect((await s.listFreed()).map((f) => f.nodeName)).toEqual(["node-1"]), { timeout: 5000 });
    }, 20_000);

    it("keeps an ordered event log; a removal carries the lease's last attributes", async () => {
      const s = await fresh();
      const seen: LeaseEvent[] = [];
      s.subscribe((evs) => seen.push(...evs));
      await s.create(newLease(1));
      await s.update("10.244.1.0/24", "node-1", { publicIP: "198.18.0.50" });
      await s.remove("10.244.1.0/24", "node-1", "revoked");
      const log = await s.eventsSince(0);
      expect(log.map((e) => e.type)).toEqual(["added", "changed", "removed"]);
      // Strictly increasing; not necessarily one apart (a shared store numbers other writes too).
      expect(log[0]!.revision < log[1]!.revision && log[1]!.revision < log[2]!.revision).toBe(true);
      expect(log[2]!.lease).toMatchObject({ subnet: "10.244.1.0/24", publicIP: "198.18.0.50", attrs: attrs(1) });
      // A store that learns of its own writes through a watch (etcd) may deliver them to subscribers a moment later.
      await vi.waitFor(() => expect(seen).toEqual(log), { timeout: 5000 });
      expect(await s.eventsSince(log[1]!.revision)).toEqual([log[2]]);
      expect(await s.eventsSince(log[2]!.revision)).toEqual([]);
    });

    it("keeps the agent instance a lease is bound to, through updates, and takes a new one", async () => {
      const s = await fresh();
      await s.create(newLease(1, { instanceId: "0123456789abcdef0123456789abcdef" }));
      await s.create(newLease(2));
      expect(await s.getLeaseByNode("node-1")).toMatchObject({ instanceId: "0123456789abcdef0123456789abcdef" });
      expect((await s.getLeaseByNode("node-2"))?.instanceId ?? "").toBe("");
      await s.update("10.244.1.0/24", "node-1", { expiresAt: Date.now() + 90_000 });
      expect(await s.getLeaseByNode("node-1")).toMatchObject({ instanceId: "0123456789abcdef0123456789abcdef" });
      await s.update("10.244.1.0/24", "node-1", { instanceId: "fedcba9876543210fedcba9876543210" });
      expect((await s.listLeases()).leases[0]).toMatchObject({ nodeName: "node-1", instanceId: "fedcba9876543210fedcba9876543210" });
    });

    it("tells why a lease was removed, live and in the history", async () => {
      const s = await fresh();
      const seen: LeaseEvent[] = [];
      s.subscribe((evs) => seen.push(...evs));
      await s.create(newLease(1));
      await s.create(newLease(2));
      const from = (await s.create(newLease(3)))!.revision;
      await s.remove("10.244.1.0/24", undefined, "revoked: disk replaced");
      await s.remove("10.244.2.0/24", "node-2", "released");
      await s.remove("10.244.3.0/24", undefined, "revoked");
      const want = [["node-1", "revoked: disk replaced"], ["node-2", "released"], ["node-3", "revoked"]];
      expect((await s.eventsSince(from)).map((e) => [e.lease.nodeName, e.reason])).toEqual(want);
      await vi.waitFor(() => expect(seen.filter((e) => e.type === "removed").map((e) => [e.lease.nodeName, e.reason])).toEqual(want), { timeout: 5000 });
    });

    it("remembers when a server last said it was alive", async () => {
      const s = await fresh();
      expect(await s.lastAlive()).toBeUndefined();
      await s.markAlive(1_800_000_000_000);
      await s.markAlive(1_800_000_010_000);
      expect(await s.lastAlive()).toBe(1_800_000_010_000);
    });

    it("reports REVISION_COMPACTED once history is gone", async () => {
      const s = await fresh();
      const revs: number[] = [];
      for (let i = 1; i <= 30; i++) revs.push((await s.create(newLease(i)))!.revision);
      await opts.forgetHistoryBefore?.(s, revs[24]!);
      await expect(s.eventsSince(0)).rejects.toMatchObject({ code: "REVISION_COMPACTED" });
      expect((await s.eventsSince(revs[24]!)).map((e) => e.lease.nodeName)).toEqual(["node-26", "node-27", "node-28", "node-29", "node-30"]);
    });

    it("keeps reservations unique per subnet and per node, and refuses one over another node's lease", async () => {
      const s = await fresh();
      await s.putReservation({ subnet: "10.244.7.0/24", nodeName: "node-7" });
      await s.putReservation({ subnet: "10.244.7.0/24", nodeName: "node-7" });
      await expect(s.putReservation({ subnet: "10.244.7.0/24", nodeName: "node-8" })).rejects.toMatchObject({ code: "ALREADY_EXISTS" });
      await expect(s.putReservation({ subnet: "10.244.8.0/24", nodeName: "node-7" })).rejects.toMatchObject({ code: "ALREADY_EXISTS" });
      await s.create(newLease(9));
      await expect(s.putReservation({ subnet: "10.244.9.0/24", nodeName: "node-1" })).rejects.toMatchObject({ code: "ALREADY_EXISTS" });
      expect(await s.listReservations()).toEqual([{ subnet: "10.244.7.0/24", nodeName: "node-7" }]);
      expect(await s.deleteReservation("10.244.7.0/24")).toBe(true);
      expect(await s.deleteReservation("10.244.7.0/24")).toBe(false);
    });
  });
}
