// LeaseManager's integrity rules on a real SQLite store with a fake clock:
// leases bound to agent instances, first holder keeps unique backend
// attributes, unusable public IPs refused, a grace period after an outage,
// and revocation reasons.
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { WeftError } from "../../lib/src/errors.js";
import { parseNetworkConfig } from "../../lib/src/net-config.js";
import type { BackendAttrs, LeaseEvent } from "../../lib/src/lease.js";
import { LeaseManager, type LeaseManagerOptions } from "../src/lease-manager.js";
import { SqliteLeaseStore } from "../src/store/sqlite-lease-store.js";
import { memoryLogger, tempDir } from "./helpers.js";

const vx = (n: number): BackendAttrs => ({ type: "vxlan", vni: 1, vtepMac: `0e:00:00:00:01:${n.toString(16).padStart(2, "0")}` });
const req = (n: number, instanceId = `instance-${n}-a`) => ({ nodeName: `node-${n}`, publicIP: `198.18.0.${n}`, attrs: vx(n), instanceId });
const TTL = 60_000;

describe("LeaseManager integrity", () => {
  let dir: ReturnType<typeof tempDir>;
  let path: string;
  let store: SqliteLeaseStore;
  let now: number;
  let logged: ReturnType<typeof memoryLogger>;
  const manager = (over: Partial<LeaseManagerOptions> = {}, netconf = '{"Network":"10.244.0.0/16"}') =>
    new LeaseManager({ store, network: parseNetworkConfig(netconf), ttlMs: TTL, log: logged.log, clock: { now: () => now }, bindInstances: true, ...over });

  beforeEach(() => {
    dir = tempDir("weft-integrity-");
    path = join(dir.path, "l.db");
    store = new SqliteLeaseStore(path);
    now = 1_800_000_000_000;
    logged = memoryLogger();
  });
  afterEach(async () => {
    await store.close();
    dir.cleanup();
  });

  describe("instance binding", () => {
    it("refuses a live lease to another agent instance, naming the node and its subnet; the holder keeps it", async () => {
      const m = manager();
      const a = await m.acquire(req(1));
      await expect(m.acquire({ ...req(1, "instance-1-b"), publicIP: "198.18.0.50" })).rejects.toMatchObject({
        code: "ALREADY_EXISTS",
        message: expect.stringMatching(/^node "node-1" already holds 10\.244\.1\.0\/24 from another agent instance \(instance instan\.\.\., expires .*\); not acquired: stop the other agent or give this node another --node-name$/),
      });
      // Only a prefix of the id is shown: the whole id lets one renew the lease.
      expect(JSON.stringify(logged.lines)).not.toContain("instance-1-a\"");
      expect(await store.getLeaseByNode("node-1")).toMatchObject({ subnet: a.subnet, publicIP: "198.18.0.1", instanceId: "instance-1-a", revision: a.revision });
      await expect(m.renew("node-1", a.subnet, "instance-1-b")).rejects.toMatchObject({ code: "ALREADY_EXISTS", message: expect.stringMatching(/not renewed/) });
      await expect(m.release("node-1", a.subnet, "instance-1-b")).rejects.toMatchObject({ code: "ALREADY_EXISTS", message: expect.stringMatching(/not released/) });
      // An id-less client (an older agent) cannot take a bound lease either.
      await expect(m.acquire({ ...req(1), instanceId: "" })).rejects.toMatchObject({ code: "ALREADY_EXISTS" });
      expect((await store.listLeases()).leases).toHaveLength(1);
    });

    it("gives the lease back to the same instance (a restarted agent), and to anyone once it expired", async () => {
      const m = manager();
      const a = await m.acquire(req(1));
      now += 10_000;
      expect(await m.acquire(req(1))).toMatchObject({ subnet: a.subnet, expiresAt: now + TTL });
      expect((await m.renew("node-1", a.subnet, "instance-1-a")).expiresAt).toBe(now + TTL);
      now += TTL + 1;
      const taken = await m.acquire(req(1, "instance-1-b"));
      expect(taken).toMatchObject({ subnet: a.subnet, instanceId: "instance-1-b" });
      await expect(m.renew("node-1", a.subnet, "instance-1-a")).rejects.toMatchObject({ code: "ALREADY_EXISTS" });
    });

    it("binds nothing for id-less leases, and nothing at all with per-node client certificates (mTLS)", async () => {
      const m = manager();
      await m.acquire({ ...req(1), instanceId: "" });
      expect(await m.acquire(req(1, "instance-1-b"))).toMatchObject({ subnet: "10.244.1.0/24", instanceId: "instance-1-b" });
      const tls = manager({ bindInstances: false });
      await tls.acquire(req(2));
      expect(await tls.acquire(req(2, "instance-2-b"))).toMatchObject({ subnet: "10.244.2.0/24", instanceId: "instance-2-b" });
    });

    it("refuses a malformed instance id", async () => {
      await expect(manager().acquire(req(1, "x y"))).rejects.toMatchObject({ code: "INVALID_ARGUMENT", message: expect.stringMatching(/^instance_id: /) });
    });
  });

  describe("unique backend attributes", () => {
    it("keeps a VTEP MAC and a public IP with their first live holder, naming the other node", async () => {
      const m = manager();
      await m.acquire(req(1));
      await expect(m.acquire({ ...req(2), attrs: vx(1) })).rejects.toMatchObject({
        code: "ALREADY_EXISTS", message: expect.stringMatching(/^VTEP MAC 0e:00:00:00:01:01 is already published by node "node-1" \(lease 10\.244\.1\.0\/24\)/),
      });
      await expect(m.acquire({ ...req(2), publicIP: "198.18.0.1" })).rejects.toMatchObject({ code: "ALREADY_EXISTS", message: expect.stringMatching(/^public IP 198\.18\.0\.1 is already published by node "node-1"/) });
      // A node moving onto attributes of its own is fine; the holder may refresh them.
      expect(await m.acquire(req(1))).toMatchObject({ nodeName: "node-1" });
      expect((await store.listLeases()).leases.map((l) => l.nodeName)).toEqual(["node-1"]);
      // Once the holder's lease is gone (here: expired), the attributes are free.
      now += TTL + 1;
      expect(await m.acquire({ ...req(2), attrs: vx(1), publicIP: "198.18.0.1" })).toMatchObject({ nodeName: "node-2" });
    });

    it("lets WireGuard nodes share a public IP (one NAT) but never a key", async () => {
      const m = manager({}, '{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}');
      const key = (c: string) => `${c.repeat(42)}A=`;
      const wg = (n: number, k: string) => ({ ...req(n), publicIP: "198.18.0.9", attrs: { type: "wireguard" as const, publicKey: k, listenPort: 51820 + n } });
      await m.acquire(wg(1, key("a")));
      expect(await m.acquire(wg(2, key("b")))).toMatchObject({ nodeName: "node-2" });
      await expect(m.acquire(wg(3, key("a")))).rejects.toMatchObject({ code: "ALREADY_EXISTS", message: expect.stringMatching(/^WireGuard public key a+A= is already published by node "node-1"/) });
    });
  });

  describe("public IP", () => {
    it.each([
      ["0.1.2.3", /0\.0\.0\.0\/8/],
      ["127.0.0.1", /loopback/],
      ["224.0.0.5", /multicast/],
      ["240.1.2.3", /reserved/],
      ["255.255.255.255", /broadcast/],
      ["169.254.10.1", /link-local .*--allow-link-local-public-ip/],
      ["10.244.9.9", /inside the cluster network 10\.244\.0\.0\/16/],
    ])("refuses %s, naming the address and the fix", async (ip, re) => {
      const err = await manager().acquire({ ...req(1), publicIP: ip }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: "INVALID_ARGUMENT", message: expect.stringMatching(new RegExp(`^public_ip: ${ip.replaceAll(".", "\\.")} `)) });
      expect((err as Error).message).toMatch(re);
      expect((await store.listLeases()).leases).toEqual([]);
    });

    it("accepts link-local when allowed, and the test and bench underlays", async () => {
      expect(await manager({ allowLinkLocalPublicIp: true }).acquire({ ...req(1), publicIP: "169.254.10.1" })).toMatchObject({ publicIP: "169.254.10.1" });
      expect(await manager().acquire({ ...req(2), publicIP: "192.0.0.0" })).toMatchObject({ publicIP: "192.0.0.0" });
      expect(await manager().acquire({ ...req(3), publicIP: "198.19.255.1" })).toMatchObject({ publicIP: "198.19.255.1" });
    });
  });

  describe("outage grace", () => {
    it("keeps leases that expired while no server ran for one renew interval, renews them, then sweeps the rest", async () => {
      const before = manager();
      await before.expire(); // the server runs: marks the store alive
      const a = await before.acquire(req(1));
      await before.acquire(req(2));
      // Already expired while the server was up (a sweep would have taken it): no grace for it.
      await store.create({ subnet: "10.244.9.0/24", nodeName: "node-9", publicIP: "198.18.0.9", attrs: vx(9), expiresAt: now - 1 });
      await store.close();

      now += 2 * TTL; // down for two TTLs
      store = new SqliteLeaseStore(path);
      const after = manager();
      const gone = await after.expire();
      expect(gone.map((l) => l.nodeName)).toEqual(["node-9"]);
      const warn = logged.lines.find((l) => String(l.msg).startsWith("lease server was down"));
      expect(warn).toMatchObject({ level: 40, downSeconds: 120, expired: 2, msg: `lease server was down for 120s; 2 leases expired meanwhile and get a grace period until ${new Date(now + 30_000).toISOString()} (one renew interval)` });
      expect(after.graceUntil).toBe(now + 30_000);

      // An agent that was waiting renews within the grace; another instance cannot take the lease meanwhile.
      now += 10_000;
      await expect(after.acquire(req(2, "instance-2-b"))).rejects.toMatchObject({ code: "ALREADY_EXISTS" });
      expect((await after.renew("node-1", a.subnet, "instance-1-a")).expiresAt).toBe(now + TTL);
      // The server sweeps every second or so; every 5 s is enough for its alive time to stay fresh.
      for (let t = 0; t < 4; t++) {
        expect(await after.expire()).toEqual([]);
        now += 5000;
      }
      now += 1; // grace over
      expect((await after.expire()).map((l) => l.nodeName)).toEqual(["node-2"]);
      expect(logged.lines.filter((l) => String(l.msg).startsWith("lease server was down"))).toHaveLength(1);
      expect((await store.listLeases()).leases.map((l) => l.nodeName)).toEqual(["node-1"]);
    });

    it("grants the grace after a time the store could not be written (disk full), though the server ran", async () => {
      let full = false;
      const failing = new Proxy(store, {
        get(target, prop, receiver) {
          const v = Reflect.get(target, prop, receiver);
          if (typeof v !== "function") return v;
          if (full && (prop === "markAlive" || prop === "expire" || prop === "update")) return () => Promise.reject(new WeftError("STORE_UNAVAILABLE", "SQLite write failed: database or disk is full"));
          return v.bind(target);
        },
      });
      const m = manager({ store: failing });
      await m.expire();
      const a = await m.acquire(req(1));
      full = true;
      for (let t = 0; t < 18; t++) {
        now += 5000;
        await expect(m.expire()).rejects.toMatchObject({ code: "STORE_UNAVAILABLE" });
      }
      full = false;
      now += 1000;
      expect(await m.expire()).toEqual([]);
      // Logged once, when the store took writes again; not on every sweep while it did not.
      expect(logged.lines.filter((l) => String(l.msg).startsWith("lease server was down"))).toEqual([expect.objectContaining({ downSeconds: 91, expired: 1 })]);
      expect((await m.renew("node-1", a.subnet, "instance-1-a")).expiresAt).toBe(now + TTL);
    });

    it("grants nothing when the store was served all along", async () => {
      const m = manager();
      await m.expire();
      await m.acquire(req(1));
      for (let t = 0; t <= TTL; t += 5000) {
        now += 5000;
        await m.expire();
      }
      expect(logged.lines.some((l) => String(l.msg).startsWith("lease server was down"))).toBe(false);
      expect((await store.listLeases()).leases).toEqual([]);
    });
  });

  describe("revocation", () => {
    it("carries the operator's reason in the removal event", async () => {
      const m = manager();
      const events: LeaseEvent[] = [];
      store.subscribe((evs) => events.push(...evs));
      const a = await m.acquire(req(1));
      const b = await m.acquire(req(2));
      await m.revoke(a.subnet, "node decommissioned (ticket 42)");
      await m.revoke(b.subnet);
      const removed = events.filter((e) => e.type === "removed");
      expect(removed.map((e) => e.reason)).toEqual(["revoked: node decommissioned (ticket 42)", "revoked"]);
      expect((await store.eventsSince(0)).filter((e) => e.type === "removed").map((e) => e.reason)).toEqual(["revoked: node decommissioned (ticket 42)", "revoked"]);
    });

    it.each([["x".repeat(201)], ["line\nbreak"], ["nön-ascii"]])("refuses the reason %j and revokes nothing", async (reason) => {
      const m = manager();
      const a = await m.acquire(req(1));
      await expect(m.revoke(a.subnet, reason)).rejects.toMatchObject({ code: "INVALID_ARGUMENT", message: expect.stringMatching(/^reason: /) });
      expect((await store.listLeases()).leases).toHaveLength(1);
    });
  });
});
