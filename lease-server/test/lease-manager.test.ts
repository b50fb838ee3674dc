import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { parseNetworkConfig } from "../../lib/src/net-config.js";
import type { BackendAttrs } from "../../lib/src/lease.js";
import { LeaseManager } from "../src/lease-manager.js";
import { SqliteLeaseStore } from "../src/store/sqlite-lease-store.js";
import { memoryLogger, tempDir } from "./helpers.js";

const vx = (n: number): BackendAttrs => ({ type: "vxlan", vni: 1, vtepMac: `0e:00:00:00:01:${n.toString(16).padStart(2, "0")}` });
const req = (n: number, previousSubnet?: string) => ({ nodeName: `node-${n}`, publicIP: `198.18.0.${n}`, attrs: vx(n), previousSubnet });

describe("LeaseManager", () => {
  let dir: ReturnType<typeof tempDir>;
  let store: SqliteLeaseStore;
  let now: number;
  let logged: ReturnType<typeof memoryLogger>;
  const manager = (netconf = '{"Network":"10.244.0.0/16"}') =>
    new LeaseManager({ store, network: parseNetworkConfig(netconf), ttlMs: 60_000, log: logged.log, clock: { now: () => now } });

  beforeEach(() => {
    dir = tempDir("weft-manager-");
    store = new SqliteLeaseStore(join(dir.path, "l.db"));
    now = 1_800_000_000_000;
    logged = memoryLogger();
  });
  afterEach(async () => {
    await store.close();
    dir.cleanup();
  });

  it("gives a node the same subnet on every acquire, with fresh attributes and expiry", async () => {
    const m = manager();
    const a = await m.acquire(req(1));
    expect(a).toMatchObject({ subnet: "10.244.1.0/24", nodeName: "node-1", expiresAt: now + 60_000 });
    now += 10_000;
    const b = await m.acquire({ ...req(1), publicIP: "198.18.0.77" });
    expect(b).toMatchObject({ subnet: "10.244.1.0/24", publicIP: "198.18.0.77", expiresAt: now + 60_000 });
    expect((await store.listLeases()).leases).toHaveLength(1);
  });

  it("logs one JSON line per lease change with node name and subnet", async () => {
    const m = manager();
    await m.acquire(req(1));
    await m.release("node-1", "10.244.1.0/24");
    const changes = logged.lines.filter((l) => typeof l.msg === "string" && (l.msg as string).startsWith("lease "));
    expect(changes).toEqual([
      expect.objectContaining({ msg: "lease acquired", nodeName: "node-1", subnet: "10.244.1.0/24" }),
      expect.objectContaining({ msg: "lease released", nodeName: "node-1", subnet: "10.244.1.0/24" }),
    ]);
  });

  it("gives a node its old subnet back after its lease expired, if nobody took it", async () => {
    const m = manager();
    await m.acquire(req(1));
    const second = await m.acquire(req(2));
    now += 61_000;
    expect((await m.expire()).map((l) => l.nodeName).sort()).toEqual(["node-1", "node-2"]);
    await m.acquire(req(3));
    expect((await m.acquire(req(2))).subnet).toBe(second.subnet);
    expect((await m.acquire(req(1))).subnet).toBe("10.244.1.0/24");
  });

  it("hands out subnets freed most recently last", async () => {
    const m = manager('{"Network":"10.244.0.0/16","SubnetMax":"10.244.3.0"}');
    for (const n of [1, 2, 3]) await m.acquire(req(n));
    await m.release("node-2", "10.244.2.0/24");
    await m.release("node-1", "10.244.1.0/24");
    expect((await m.acquire(req(4))).subnet).toBe("10.244.2.0/24");
    expect((await m.acquire(req(5))).subnet).toBe("10.244.1.0/24");
  });

  it("uses the previous subnet from subnet.env only if no other node held it since", async () => {
    const m = manager();
    await m.acquire(req(1));
    await m.release("node-1", "10.244.1.0/24");
    expect((await m.acquire(req(9, "10.244.1.0/24"))).subnet).not.toBe("10.244.1.0/24");
    expect((await m.acquire(req(8, "10.244.40.0/24"))).subnet).toBe("10.244.40.0/24");
    expect((await m.acquire(req(7, "10.244.40.0/24"))).subnet).not.toBe("10.244.40.0/24");
    expect((await m.acquire(req(6, "10.99.0.0/24"))).subnet).not.toBe("10.99.0.0/24");
  });

  it("never puts two live leases on one subnet under hundreds of concurrent acquisitions", async () => {
    const m = manager();
    const leases = await Promise.all(Array.from({ length: 250 }, (_, i) => m.acquire({ ...req(i % 250), nodeName: `n-${i}` })));
    expect(new Set(leases.map((l) => l.subnet)).size).toBe(250);
    expect((await store.listLeases()).leases).toHaveLength(250);
  });

  it("fails with LEASE_EXHAUSTED and a clear message when the network is full", async () => {
    const m = manager('{"Network":"10.244.0.0/16","SubnetMax":"10.244.2.0"}');
    await m.acquire(req(1));
    await m.acquire(req(2));
    await expect(m.acquire(req(3))).rejects.toMatchObject({ code: "LEASE_EXHAUSTED", message: expect.stringMatching(/no free subnet left in 10\.244\.0\.0\/16.*widen/) });
  });

  it("gives a reserved subnet only to its node, and moves the node onto it", async () => {
    const m = manager('{"Network":"10.244.0.0/16","SubnetMax":"10.244.3.0"}');
    await m.reserve({ subnet: "10.244.1.0/24", nodeName: "node-9" });
    expect((await m.acquire(req(1))).subnet).toBe("10.244.2.0/24");
    expect((await m.acquire(req(9))).subnet).toBe("10.244.1.0/24");
    await m.reserve({ subnet: "10.244.3.0/24", nodeName: "node-1" });
    expect((await m.acquire(req(1))).subnet).toBe("10.244.3.0/24");
    expect(await store.getLeaseByNode("node-1")).toMatchObject({ subnet: "10.244.3.0/24" });
    await expect(m.reserve({ subnet: "10.245.0.0/24", nodeName: "x" })).rejects.toMatchObject({ code: "INVALID_ARGUMENT", message: expect.stringMatching(/^subnet: /) });
  });

  it("renews only a held lease, and says how to recover otherwise", async () => {
    const m = manager();
    const a = await m.acquire(req(1));
    now += 30_000;
    expect((await m.renew("node-1", a.subnet)).expiresAt).toBe(now + 60_000);
    await expect(m.renew("node-2", a.subnet)).rejects.toMatchObject({ code: "LEASE_NOT_FOUND", message: expect.stringMatching(/acquire a new lease/) });
    await m.revoke(a.subnet);
    await expect(m.renew("node-1", a.subnet)).rejects.toMatchObject({ code: "LEASE_NOT_FOUND" });
  });

  it("moves a node whose subnet left the configured range", async () => {
    await manager().acquire(req(1));
    const narrowed = manager('{"Network":"10.244.0.0/16","SubnetMin":"10.244.100.0"}');
    expect((await narrowed.acquire(req(1))).subnet).toBe("10.244.100.0/24");
  });

  it.each([
    [{ nodeName: "" }, /^node_name: is empty/],
    [{ nodeName: "UPPER" }, /^node_name: /],
    [{ publicIP: "300.1.1.1" }, /^public_ip: /],
    [{ attrs: undefined }, /^backend_attributes: missing/],
    [{ attrs: { type: "wireguard", publicKey: "x", listenPort: 1 } }, /network's backend is vxlan/],
  ])("rejects bad input %j with INVALID_ARGUMENT and stores nothing", async (over, re) => {
    await expect(manager().acquire({ ...req(1), ...over } as never)).rejects.toMatchObject({ code: "INVALID_ARGUMENT", message: expect.stringMatching(re) });
    expect((await store.listLeases()).leases).toEqual([]);
  });
});

describe("LeaseManager with a shared store (several servers)", () => {
  it("never hands out one subnet twice when the other server's changes arrive late", async () => {
    const dir = tempDir("weft-shared-");
    const store = new SqliteLeaseStore(join(dir.path, "l.db"));
    // Deliver events late, as a watch on a shared store (etcd) does.
    const lagging = new Proxy(store, {
      get(target, prop, receiver) {
        if (prop === "subscribe") {
          return (fn: (e: readonly unknown[]) => void) => target.subscribe((evs) => void setTimeout(() => fn(evs), 30));
        }
        const v = Reflect.get(target, prop, receiver);
        return typeof v === "function" ? v.bind(target) : v;
      },
    });
    const network = parseNetworkConfig('{"Network":"10.244.0.0/16"}');
    const mk = () => new LeaseManager({ store: lagging, network, ttlMs: 60_000, log: memoryLogger().log });
    const [a, b] = [mk(), mk()];
    await a.acquire(req(200));
    await b.acquire(req(201));
    const leases = await Promise.all(Array.from({ length: 60 }, (_, i) => (i % 2 ? a : b).acquire(req(i + 1))));
    expect(new Set(leases.map((l) => l.subnet)).size).toBe(60);
    expect((await store.listLeases()).leases).toHaveLength(62);
    await store.close();
    dir.cleanup();
  });
});
