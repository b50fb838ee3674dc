// EtcdLeaseStore against a real etcd started by the test: the LeaseStore
// contract, Flannel's layout, two stores (two lease servers) on one etcd, and
// recovery from a compacted watch.
import { randomBytes } from "node:crypto";
import { connect, createServer, type AddressInfo, type Socket } from "node:net";
import { Etcd3 } from "etcd3";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import type { LeaseEvent } from "../../lib/src/lease.js";
import { pino } from "pino";
import { EtcdLeaseStore } from "../src/store/etcd-lease-store.js";
import { etcdAvailable, startEtcd, type EtcdProcess } from "../../test/etcd.js";
import { describeLeaseStoreContract, newLease } from "./lease-store.contract.js";

const log = pino({ level: "silent" });
const ok = etcdAvailable();
let etcd: EtcdProcess;
let raw: Etcd3;

const prefix = () => `/weft-test/${randomBytes(4).toString("hex")}/network`;
const store = (p = prefix()) => new EtcdLeaseStore({ endpoints: etcd.endpoints, prefix: p, log });

describe.skipIf(!ok)("etcd store", () => {
  beforeAll(async () => {
    etcd = await startEtcd();
    raw = new Etcd3({ hosts: etcd.endpoints });
  }, 30_000);
  afterAll(async () => {
    raw?.close();
    await etcd?.stop();
  });

  describeLeaseStoreContract("etcd", async () => store(), {
    expiresItself: true,
    forgetHistoryBefore: async (_s, revision) => { await raw.kv.compact({ revision, physical: true }); },
  });

  describe("EtcdLeaseStore", () => {
    it("keeps an expired lease in etcd for the expiry grace (an outage of every lease server), then lets etcd expire it", async () => {
      const s = new EtcdLeaseStore({ endpoints: etcd.endpoints, prefix: prefix(), log, expiryGraceMs: 2000 });
      try {
        await s.create(newLease(1, { expiresAt: Date.now() + 500 }));
        await new Promise((r) => setTimeout(r, 1500));
        // Past its weft expiry, still in etcd: a renew finds it.
        expect(await s.update("10.244.1.0/24", "node-1", { expiresAt: Date.now() + 500 })).toMatchObject({ nodeName: "node-1" });
        await new Promise((r) => setTimeout(r, 1500));
        expect((await s.listLeases()).leases.map((l) => l.nodeName)).toEqual(["node-1"]);
        await vi.waitFor(async () => expect((await s.listLeases()).leases).toEqual([]), { timeout: 6000, interval: 200 });
      } finally {
        await s.close();
      }
    }, 20_000);

    it("keeps leases in Flannel's layout and reads flanneld's own leases as peers", async () => {
      const p = prefix();
      const s = store(p);
      try {
        await s.create(newLease(1));
        const kv = await raw.get(`${p}/subnets/10.244.1.0-24`).string();
        expect(JSON.parse(kv!)).toMatchObject({ PublicIP: "198.18.0.1", PublicIPv6: null, BackendType: "vxlan", BackendData: { VNI: 1, VtepMAC: "0e:00:00:00:00:01" }, WeftNodeName: "node-1" });
        // A lease as flanneld writes it (its value only; the TTL is an etcd lease).
        const lease = raw.lease(60);
        await lease.put(`${p}/subnets/10.244.9.0-24`).value('{"PublicIP":"198.18.0.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"C6:D2:32:6F:8F:44"}}');
        const { leases } = await s.listLeases();
        expect(leases.find((l) => l.subnet === "10.244.9.0/24")).toMatchObject({ nodeName: "flannel-10-244-9-0", publicIP: "198.18.0.9", attrs: { type: "vxlan", vni: 1, vtepMac: "c6:d2:32:6f:8f:44" } });
        // weft never hands out what flanneld holds.
        expect(await s.create(newLease(20, { subnet: "10.244.9.0/24" }))).toBeUndefined();
        await lease.revoke();
      } finally {
        await s.close();
      }
    });

    it("two stores on one etcd (two lease servers) are one system: one revision sequence, one store id, every change seen by both", async () => {
      const p = prefix();
      const a = store(p);
      const b = store(p);
      try {
        expect(await a.storeId()).toBe(await b.storeId());
        const seenByB: LeaseEvent[] = [];
        b.subscribe((evs) => seenByB.push(...evs));
        await b.listLeases();
        const made = await a.create(newLease(1));
        expect(await b.create(newLease(2, { subnet: "10.244.1.0/24" }))).toBeUndefined();
        expect(await b.create(newLease(3, { nodeName: "node-1" }))).toBeUndefined();
        await vi.waitFor(() => expect(seenByB.map((e) => [e.type, e.lease.nodeName, e.revision])).toEqual([["added", "node-1", made!.revision]]), { timeout: 5000 });
        expect(await b.getLeaseByNode("node-1")).toMatchObject({ subnet: "10.244.1.0/24", revision: made!.revision });
        // History from either server.
        expect((await b.eventsSince(made!.revision - 1)).map((e) => e.revision)).toEqual([made!.revision]);
      } finally {
        await a.close();
        await b.close();
      }
    });

    it("lists again once and reports the difference when its watch comes back after a compaction, without a hot loop", async () => {
      // The store reaches etcd through a proxy the test can cut, as a network partition would.
      const proxy = await tcpProxy(Number(new URL(etcd.endpoints[0]!).port));
      const p = prefix();
      const s = new EtcdLeaseStore({ endpoints: [`http://127.0.0.1:${proxy.port}`], prefix: p, log });
      const other = store(p);
      try {
        const seen: LeaseEvent[] = [];
        s.subscribe((evs) => seen.push(...evs));
        await s.create(newLease(1));
        await vi.waitFor(() => expect(seen).toHaveLength(1), { timeout: 5000 });
        proxy.cut();
        // Meanwhile another server changes things, and etcd compacts that history away.
        await other.create(newLease(2));
        await other.remove("10.244.1.0/24", "node-1", "revoked");
        const { revision } = await other.listLeases();
        await raw.kv.compact({ revision, physical: true });
        await proxy.restore();
        await vi.waitFor(() => expect(seen.map((e) => `${e.type} ${e.lease.nodeName}`)).toEqual(["added node-1", "added node-2", "removed node-1"]), { timeout: 15_000 });
        expect(s.resyncs).toBe(1);
        await other.create(newLease(3));
        await vi.waitFor(() => expect(seen.at(-1)?.lease.nodeName).toBe("node-3"), { timeout: 5000 });
        expect(s.resyncs).toBe(1);
      } finally {
        await s.close();
        await other.close();
        await proxy.close();
      }
    }, 30_000);

    it("answers history from the current revision (or later) with nothing, without writing", async () => {
      const s = store();
      try {
        const made = await s.create(newLease(1));
        expect(await s.eventsSince(made!.revision)).toEqual([]);
        expect(await s.eventsSince(made!.revision + 100)).toEqual([]);
        expect((await s.listLeases()).revision).toBe(made!.revision);
      } finally {
        await s.close();
      }
    });

    it("says REVISION_COMPACTED for history etcd no longer has, and STORE_UNAVAILABLE naming the endpoints when etcd is unreachable", async () => {
      const s = new EtcdLeaseStore({ endpoints: ["http://127.0.0.1:1"], prefix: prefix(), log });
      try {
        await expect(s.listLeases()).rejects.toMatchObject({ code: "STORE_UNAVAILABLE", message: expect.stringMatching(/etcd list leases failed.*--store endpoints/) });
      } finally {
        await s.close();
      }
    }, 20_000);
  });
});

/** A TCP proxy to 127.0.0.1:target that the test can cut (all connections dropped, new ones refused) and restore. */
async function tcpProxy(target: number): Promise<{ port: number; cut(): void; restore(): Promise<void>; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const make = () => createServer((c) => {
    const u = connect(target, "127.0.0.1");
    sockets.add(c).add(u);
    c.pipe(u).pipe(c);
    const drop = () => { c.destroy(); u.destroy(); sockets.delete(c); sockets.delete(u); };
    c.on("error", drop).on("close", drop);
    u.on("error", drop).on("close", drop);
  });
  let server = make();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  const cut = () => {
    server.close();
    for (const x of sockets) x.destroy();
    sockets.clear();
  };
  const restore = async () => {
    server = make();
    await new Promise<void>((r) => server.listen(port, "127.0.0.1", r));
  };
  return { port, cut, restore, close: async () => cut() };
}
