// NetlinkDataplane against the real kernel, in one throwaway namespace with a
// veth underlay. The dataplane runs in a child process inside the namespace.
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addNetns, bridgeFdbJson, cleanupNetns, ip, ipJson, kernelTestEnv, newRunId, NS_PREFIX, sh, waitFor } from "../../test/e2e/netns.js";
import { Cluster } from "../../test/e2e/cluster.js";
import type { KernelChange, Link } from "../src/dataplane/dataplane.js";
import { nexthopIdFor } from "../src/dataplane/nexthop-id.js";

const env = kernelTestEnv();
const run = newRunId();
const NS = `${NS_PREFIX}${run}-dp`;

export class Driver {
  private seq = 0;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  readonly ready: Promise<void>;
  readonly changes: KernelChange[] = [];
  readonly exited: Promise<number | null>;
  constructor(readonly proc: ChildProcess) {
    let onReady!: () => void;
    this.ready = new Promise((r) => (onReady = r));
    this.exited = new Promise((r) => proc.once("exit", (code) => r(code)));
    createInterface({ input: proc.stdout! }).on("line", (line) => {
      const m = JSON.parse(line) as { ready?: boolean; change?: KernelChange; id: number; result?: unknown; error?: { message: string; code?: string } };
      if (m.ready) return onReady();
      if (m.change) return void this.changes.push(m.change);
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (m.error) p?.reject(Object.assign(new Error(m.error.message), { code: m.error.code }));
      else p?.resolve(m.result);
    });
    proc.stderr!.on("data", (d) => process.stderr.write(d));
  }
  call<T = unknown>(method: string, ...args: unknown[]): Promise<T> {
    const id = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.proc.stdin!.write(JSON.stringify({ id, method, args }) + "\n");
    });
  }
}

export function startDriver(ns: string, monitorBufferBytes?: number, routes: "nexthops" | "plain" = "nexthops"): Driver {
  const args = [process.execPath, "--import", "tsx", "node-agent/test/helpers/dataplane-driver.ts", String(monitorBufferBytes ?? 0), routes];
  return new Driver(spawn("ip", ["netns", "exec", ns, ...args], { stdio: ["pipe", "pipe", "pipe"] }));
}

describe.skipIf(!env.ok)("NetlinkDataplane (kernel, one namespace)", () => {
  let dp: Driver;
  let ul0 = 0;
  const vxlan = (over: Record<string, unknown> = {}) => ({
    name: "weft.1", kind: "vxlan", mtu: 1450, mac: "0e:00:00:00:01:01", alias: "weft:vxlan",
    vxlan: { vni: 1, localIP: "198.18.0.1", parentIndex: ul0, port: 8472, learning: false, gbp: false }, ...over,
  });

  beforeAll(async () => {
    // Leftovers of crashed runs (ours included: wft-<deadpid>r...-dp), as the cluster harness does.
    await Cluster.cleanupStale();
    await cleanupNetns(`${NS_PREFIX}${run}-`);
    await addNetns(NS);
    await ip("-n", NS, "link", "add", "ul0", "type", "veth", "peer", "name", "ul1");
    await ip("-n", NS, "addr", "add", "198.18.0.1/24", "dev", "ul0");
    await ip("-n", NS, "addr", "add", "198.18.0.9/24", "dev", "ul1");
    await ip("-n", NS, "link", "set", "ul0", "up");
    await ip("-n", NS, "link", "set", "ul1", "up");
    ul0 = (await ipJson<Array<{ ifindex: number }>>(NS, "link", "show", "ul0"))[0]!.ifindex;
    dp = startDriver(NS);
    await dp.ready;
    await dp.call("watch");
  });

  afterAll(async () => {
    dp?.proc.stdin?.end();
    dp?.proc.kill("SIGKILL");
    await cleanupNetns(`${NS_PREFIX}${run}-`);
  });

  it("creates a VXLAN device as Flannel does, marked as weft's, and reads it back", async () => {
    await dp.call("createLink", vxlan());
    const l = await dp.call<Link>("getLink", "weft.1");
    expect(l).toMatchObject({ name: "weft.1", mac: "0e:00:00:00:01:01", mtu: 1450, up: false, kind: "vxlan", alias: "weft:vxlan" });
    expect(l.vxlan).toEqual({ vni: 1, localIP: "198.18.0.1", parentIndex: ul0, port: 8472, learning: false, gbp: false });
    const [d] = await ipJson<Array<{ ifalias?: string; linkinfo: { info_data: Record<string, unknown> } }>>(NS, "-d", "link", "show", "weft.1");
    expect(d!.linkinfo.info_data).toMatchObject({ id: 1, local: "198.18.0.1", port: 8472, learning: false });
    expect(d!.ifalias).toBe("weft:vxlan");
    const all = await dp.call<Link[]>("listLinks");
    expect(all.map((x) => x.name).sort()).toEqual(["lo", "ul0", "ul1", "weft.1"]);
    expect(all.find((x) => x.name === "ul0")).toMatchObject({ kind: "veth", up: true, mtu: 1500 });
  });

  it("refuses to create a device whose name is taken, with a code the caller can act on", async () => {
    await expect(dp.call("createLink", vxlan())).rejects.toMatchObject({ code: "ALREADY_EXISTS" });
  });

  it("changes MTU, MAC, alias and state, and reads GBP back", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    await dp.call("setLink", l.index, { mtu: 1400, mac: "0e:00:00:00:01:02", alias: "weft:test" });
    await dp.call("setLink", l.index, { up: true });
    expect(await dp.call("getLink", "weft.1")).toMatchObject({ index: l.index, mtu: 1400, mac: "0e:00:00:00:01:02", alias: "weft:test", up: true });
    await dp.call("setLink", l.index, { mtu: 1450, mac: "0e:00:00:00:01:01", alias: "weft:vxlan" });
    await dp.call("createLink", vxlan({ name: "weft.2", mac: undefined, vxlan: { vni: 2, localIP: "198.18.0.1", parentIndex: ul0, port: 4789, learning: true, gbp: true } }));
    expect((await dp.call<Link>("getLink", "weft.2")).vxlan).toMatchObject({ vni: 2, port: 4789, learning: true, gbp: true });
    await dp.call("deleteLink", (await dp.call<Link>("getLink", "weft.2")).index);
  });

  it("adds, lists and deletes the address idempotently", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    const a = { index: l.index, ip: "10.244.1.0", prefix: 32 };
    await dp.call("addAddress", a);
    await dp.call("addAddress", a);
    expect(await dp.call("listAddresses", l.index)).toEqual([a]);
    expect(await dp.call("listAddresses", ul0)).toEqual([{ index: ul0, ip: "198.18.0.1", prefix: 24 }]);
    await dp.call("deleteAddress", a);
    await dp.call("deleteAddress", a);
    expect(await dp.call("listAddresses", l.index)).toEqual([]);
    await dp.call("addAddress", a);
  });

  it("puts, lists and removes VXLAN route, ARP and FDB entries idempotently", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    const route = { dst: "10.244.5.0/24", gateway: "10.244.5.0", oif: l.index, onlink: true };
    const neigh = { index: l.index, ip: "10.244.5.0", mac: "0e:00:00:00:05:05" };
    const fdb = { index: l.index, mac: "0e:00:00:00:05:05", dst: "198.18.0.5" };
    for (let i = 0; i < 2; i++) {
      await dp.call(`neighbours:${l.index}.put`, neigh);
      await dp.call(`fdb:${l.index}.put`, fdb);
      await dp.call("routes.put", route);
    }
    expect(await dp.call("routes.list")).toEqual([route]);
    expect(await dp.call(`neighbours:${l.index}.list`)).toEqual([neigh]);
    expect(await dp.call(`fdb:${l.index}.list`)).toEqual([fdb]);
    // Through a nexthop object of ours, numbered after the dst (nexthop-id.ts).
    const nh = nexthopIdFor("10.244.5.0/24")!;
    const { stdout } = await sh("ip", ["-n", NS, "route", "show", "10.244.5.0/24"]);
    expect(stdout.trim()).toBe(`10.244.5.0/24 nhid ${nh} via 10.244.5.0 dev weft.1 proto 87 onlink`);
    expect(await ipJson(NS, "nexthop", "show")).toEqual([{ id: nh, gateway: "10.244.5.0", dev: "weft.1", scope: "link", protocol: "87", flags: ["onlink"] }]);
    const f = await bridgeFdbJson(NS, "weft.1");
    expect(f.find((e) => e.mac === "0e:00:00:00:05:05")).toMatchObject({ dst: "198.18.0.5", state: "permanent" });
    for (let i = 0; i < 2; i++) {
      await dp.call("routes.remove", route);
      await dp.call(`neighbours:${l.index}.remove`, neigh);
      await dp.call(`fdb:${l.index}.remove`, fdb);
    }
    expect(await dp.call("routes.list")).toEqual([]);
    expect(await dp.call(`neighbours:${l.index}.list`)).toEqual([]);
    expect(await dp.call(`fdb:${l.index}.list`)).toEqual([]);
    expect(await ipJson(NS, "nexthop", "show")).toEqual([]);
  });

  it("puts and removes many objects in batches, each failure reported against its own object", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    const n = 1200; // routes: more than one 64 KiB datagram
    const at = (i: number) => `10.${100 + (i >> 8)}.${i & 255}`;
    const routes: Array<Record<string, unknown>> = Array.from({ length: n }, (_, i) => ({ dst: `${at(i)}.0/24`, gateway: `${at(i)}.0`, oif: l.index, onlink: true }));
    const neighbours = Array.from({ length: n }, (_, i) => ({ index: l.index, ip: `${at(i)}.0`, mac: `0e:00:00:01:${(i >> 8).toString(16).padStart(2, "0")}:${(i & 255).toString(16).padStart(2, "0")}` }));
    const fdb = neighbours.map((x, i) => ({ index: l.index, mac: x.mac, dst: `198.18.${1 + (i >> 8)}.${(i & 255) || 1}` }));
    // Two that the kernel refuses: a gateway off the segment, and a dst a foreign route holds.
    routes[700] = { dst: `${at(700)}.0/24`, gateway: "198.18.5.9", oif: ul0, onlink: false };
    await ip("-n", NS, "route", "add", `${at(900)}.0/24`, "via", "198.18.0.9", "dev", "ul0", "proto", "static");
    const errs = await dp.call<Array<{ message: string; code: string } | null>>("routes.putMany", routes);
    expect(errs.flatMap((e, i) => (e ? [i] : []))).toEqual([700, 900]);
    expect(errs[700]).toMatchObject({ code: "DATAPLANE_OP_FAILED", message: expect.stringMatching(/ENETUNREACH/) });
    expect(errs[900]!.message).toMatch(/with protocol 4 .* exists; leaving it alone/);
    expect((await dp.call<Array<unknown | null>>(`neighbours:${l.index}.putMany`, neighbours)).every((e) => e === null)).toBe(true);
    expect((await dp.call<Array<unknown | null>>(`fdb:${l.index}.putMany`, fdb)).every((e) => e === null)).toBe(true);
    expect((await dp.call<unknown[]>("routes.list")).length).toBe(n - 2);
    expect((await dp.call<unknown[]>(`neighbours:${l.index}.list`)).length).toBe(n);
    expect(await dp.call<unknown[]>(`fdb:${l.index}.list`)).toEqual(expect.arrayContaining(fdb));
    // A scan hands over exactly what a list returns, one object at a time.
    for (const t of ["routes", `neighbours:${l.index}`, `fdb:${l.index}`]) expect(await dp.call(`${t}.scan`)).toEqual(await dp.call(`${t}.list`));
    // Removing what is partly gone is fine; the foreign route stays.
    expect((await dp.call<Array<unknown | null>>("routes.removeMany", routes)).every((e) => e === null)).toBe(true);
    expect((await dp.call<Array<unknown | null>>(`neighbours:${l.index}.removeMany`, neighbours)).every((e) => e === null)).toBe(true);
    expect((await dp.call<Array<unknown | null>>(`fdb:${l.index}.removeMany`, fdb)).every((e) => e === null)).toBe(true);
    expect(await dp.call("routes.list")).toEqual([]);
    expect(await dp.call(`neighbours:${l.index}.list`)).toEqual([]);
    expect(await dp.call(`fdb:${l.index}.list`)).toEqual([]);
    expect((await sh("ip", ["-n", NS, "route", "show", `${at(900)}.0/24`])).stdout.trim()).toBe(`${at(900)}.0/24 via 198.18.0.9 dev ul0 proto static`);
    // No nexthop outlives its route: not the one made for the route the foreign one refused either.
    expect(await ipJson(NS, "nexthop", "show")).toEqual([]);
    await ip("-n", NS, "route", "del", `${at(900)}.0/24`);
  });

  it("puts host-gw routes via a gateway on the underlay, and device routes without one", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    const hostGw = { dst: "10.244.6.0/24", gateway: "198.18.0.9", oif: ul0, onlink: false };
    const onDevice = { dst: "10.244.7.0/24", oif: l.index, onlink: false };
    await dp.call("routes.put", hostGw);
    await dp.call("routes.put", onDevice);
    expect((await sh("ip", ["-n", NS, "route", "show", "10.244.6.0/24"])).stdout.trim()).toBe("10.244.6.0/24 via 198.18.0.9 dev ul0 proto 87");
    // A route via the underlay stays plain (a carrier loss would flush a nexthop with its routes); one onto our device goes through a nexthop.
    expect((await sh("ip", ["-n", NS, "route", "show", "10.244.7.0/24"])).stdout.trim()).toBe(`10.244.7.0/24 nhid ${nexthopIdFor("10.244.7.0/24")} dev weft.1 proto 87 scope link`);
    expect(await dp.call<unknown[]>("routes.list")).toEqual(expect.arrayContaining([hostGw, onDevice]));
    // A gateway off the segment is the kernel's error, passed on with its errno name.
    await expect(dp.call("routes.put", { dst: "10.244.8.0/24", gateway: "198.18.5.9", oif: ul0, onlink: false })).rejects.toMatchObject({ code: "DATAPLANE_OP_FAILED", message: expect.stringMatching(/ENETUNREACH/) });
    await dp.call("routes.remove", hostGw);
    await dp.call("routes.remove", onDevice);
  });

  it("replaces its own route to a dst but never a foreign one", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    const ours = { dst: "10.244.6.0/24", gateway: "10.244.6.0", oif: l.index, onlink: true };
    await dp.call("routes.put", ours);
    await dp.call("routes.put", { ...ours, gateway: "10.244.6.1" });
    expect(await dp.call("routes.list")).toEqual([{ ...ours, gateway: "10.244.6.1" }]);
    await dp.call("routes.remove", { ...ours, gateway: "10.244.6.1" });
    await ip("-n", NS, "route", "add", "10.244.7.0/24", "via", "198.18.0.9", "dev", "ul0", "proto", "static");
    const err = await dp.call("routes.put", { dst: "10.244.7.0/24", gateway: "10.244.7.0", oif: l.index, onlink: true }).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/route to 10.244.7.0\/24 with protocol 4 .* exists; leaving it alone/);
    const { stdout } = await sh("ip", ["-n", NS, "route", "show", "10.244.7.0/24"]);
    expect(stdout.trim()).toBe("10.244.7.0/24 via 198.18.0.9 dev ul0 proto static");
    await ip("-n", NS, "route", "del", "10.244.7.0/24");
  });

  it("lists an older weft's plain route and a nexthop without its route as stale, puts them right, and removes both", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    const legacy = { dst: "10.244.20.0/24", gateway: "10.244.20.0", oif: l.index, onlink: true };
    const orphan = "10.244.21.0/24";
    await ip("-n", NS, "route", "add", legacy.dst, "via", legacy.gateway, "dev", "weft.1", "onlink", "proto", "87");
    await ip("-n", NS, "nexthop", "add", "id", String(nexthopIdFor(orphan)), "via", "10.244.21.0", "dev", "weft.1", "onlink", "proto", "87");
    expect((await dp.call<string[]>("routes.stale")).sort()).toEqual([legacy.dst, orphan]);
    // A put replaces the plain route with one through its nexthop, in place.
    await dp.call("routes.put", legacy);
    expect((await sh("ip", ["-n", NS, "route", "show", legacy.dst])).stdout.trim()).toBe(`${legacy.dst} nhid ${nexthopIdFor(legacy.dst)} via 10.244.20.0 dev weft.1 proto 87 onlink`);
    expect(await dp.call("routes.stale")).toEqual([orphan]);
    // The timer's scans after the first leave nexthops without a route to list() (--cleanup) and the first scan.
    expect(await dp.call("routes.scan")).toEqual((await dp.call<Array<{ dst: string }>>("routes.list")).filter((r) => r.dst !== orphan));
    expect((await dp.call<Array<unknown | null>>("routes.removeListed")).every((e) => e === null)).toBe(true);
    expect(await dp.call("routes.list")).toEqual([]);
    expect(await ipJson(NS, "nexthop", "show")).toEqual([]);
  });

  it("switches a route between its nexthop and the underlay in place, leaving no nexthop unused", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    const dst = "10.244.25.0/24";
    const tunnel = { dst, gateway: "10.244.25.0", oif: l.index, onlink: true };
    const direct = { dst, gateway: "198.18.0.9", oif: ul0, onlink: false };
    await dp.call("routes.put", tunnel);
    await dp.call("routes.put", direct);
    expect((await sh("ip", ["-n", NS, "route", "show", dst])).stdout.trim()).toBe(`${dst} via 198.18.0.9 dev ul0 proto 87`);
    expect(await ipJson(NS, "nexthop", "show")).toEqual([]);
    await dp.call("routes.putMany", [tunnel, { ...tunnel, dst: "10.244.26.0/24", gateway: "10.244.26.0" }]);
    expect((await sh("ip", ["-n", NS, "route", "show", dst])).stdout.trim()).toBe(`${dst} nhid ${nexthopIdFor(dst)} via 10.244.25.0 dev weft.1 proto 87 onlink`);
    await dp.call("routes.putMany", [direct, { ...direct, dst: "10.244.26.0/24" }]);
    expect(await ipJson(NS, "nexthop", "show")).toEqual([]);
    expect(await dp.call("routes.stale")).toEqual([]);
    await dp.call("routes.removeListed");
    expect(await dp.call("routes.list")).toEqual([]);
  });

  it("never touches a nexthop with our id and another protocol, and says so", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    const dst = "10.244.22.0/24";
    const id = nexthopIdFor(dst)!;
    await ip("-n", NS, "nexthop", "add", "id", String(id), "via", "198.18.0.9", "dev", "ul0");
    const err = await dp.call("routes.put", { dst, gateway: "10.244.22.0", oif: l.index, onlink: true }).catch((e: Error) => e);
    expect((err as Error).message).toMatch(new RegExp(`nexthop ${id} exists with protocol \\d+ \\(not weft's 87\\); leaving it alone`));
    expect(await dp.call("routes.list")).toEqual([]);
    // Our plain route to that dst (an older weft's) goes when removed as listed; their nexthop stays.
    await ip("-n", NS, "route", "add", dst, "via", "10.244.22.0", "dev", "weft.1", "onlink", "proto", "87");
    expect(await dp.call("routes.stale")).toEqual([dst]);
    await dp.call("routes.removeListed");
    expect(await dp.call("routes.list")).toEqual([]);
    expect(await ipJson(NS, "nexthop", "show")).toEqual([expect.objectContaining({ id, gateway: "198.18.0.9", dev: "ul0" })]);
    await ip("-n", NS, "nexthop", "del", "id", String(id));
  });

  it("announces a deleted nexthop of ours as the deletion of its route (the kernel announces no route with it)", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    const dst = "10.244.23.0/24";
    await dp.call("routes.put", { dst, gateway: "10.244.23.0", oif: l.index, onlink: true });
    dp.changes.length = 0;
    await ip("-n", NS, "nexthop", "del", "id", String(nexthopIdFor(dst)));
    await waitFor("route deletion", async () => dp.changes.some((c) => c.kind === "route" && c.deleted && c.value.dst === dst && c.ours), 3000, 20);
    expect(await dp.call("routes.list")).toEqual([]);
  });

  it("finds nexthops of ours left without a route (a crash between the two) on its first reading, and list() always does", async () => {
    const fresh = startDriver(NS);
    try {
      await fresh.ready;
      const orphan = "10.244.27.0/24";
      await ip("-n", NS, "nexthop", "add", "id", String(nexthopIdFor(orphan)), "via", "10.244.27.0", "dev", "weft.1", "onlink", "proto", "87");
      expect(await fresh.call("routes.scan")).toEqual([{ dst: orphan, oif: 0, onlink: false }]);
      expect(await fresh.call("routes.scan")).toEqual([]);
      expect(await fresh.call("routes.stale")).toEqual([orphan]);
      await fresh.call("routes.removeListed");
      expect(await ipJson(NS, "nexthop", "show")).toEqual([]);
    } finally {
      fresh.proc.stdin?.end();
      fresh.proc.kill("SIGKILL");
    }
  });

  it("makes plain routes where nexthop objects are not to be used, which the nexthop mode lists as stale", async () => {
    const plain = startDriver(NS, undefined, "plain");
    try {
      await plain.ready;
      const l = await plain.call<Link>("getLink", "weft.1");
      const r = { dst: "10.244.24.0/24", gateway: "10.244.24.0", oif: l.index, onlink: true };
      for (let i = 0; i < 2; i++) await plain.call("routes.put", r);
      expect((await sh("ip", ["-n", NS, "route", "show", r.dst])).stdout.trim()).toBe("10.244.24.0/24 via 10.244.24.0 dev weft.1 proto 87 onlink");
      expect(await ipJson(NS, "nexthop", "show")).toEqual([]);
      expect(await plain.call("routes.list")).toEqual([r]);
      expect(await plain.call("routes.stale")).toEqual([]);
      expect(await dp.call("routes.stale")).toEqual([r.dst]);
      for (let i = 0; i < 2; i++) await plain.call("routes.remove", r);
      expect(await plain.call("routes.list")).toEqual([]);
    } finally {
      plain.proc.stdin?.end();
      plain.proc.kill("SIGKILL");
    }
  });

  it("lists only routes with our protocol and neighbours on the asked device", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    await ip("-n", NS, "route", "add", "10.99.0.0/24", "via", "198.18.0.9", "dev", "ul0");
    await ip("-n", NS, "route", "add", "10.244.77.0/24", "via", "10.244.77.0", "dev", "weft.1", "onlink");
    await ip("-n", NS, "neigh", "replace", "198.18.0.77", "lladdr", "0e:00:00:00:77:77", "dev", "ul0", "nud", "permanent");
    expect(await dp.call("routes.list")).toEqual([]);
    expect(await dp.call(`neighbours:${l.index}.list`)).toEqual([]);
    expect(await dp.call(`neighbours:${ul0}.list`)).toEqual([{ index: ul0, ip: "198.18.0.77", mac: "0e:00:00:00:77:77" }]);
    expect(await dp.call("routes.scan")).toEqual([]);
    expect(await dp.call(`neighbours:${l.index}.scan`)).toEqual([]);
    expect(await dp.call(`neighbours:${ul0}.scan`)).toEqual([{ index: ul0, ip: "198.18.0.77", mac: "0e:00:00:00:77:77" }]);
    // The same IP on another device is another entry (a notification about it is not about ours).
    const ids = await Promise.all([l.index, ul0].map((index) => dp.call<string>(`neighbours:${l.index}.id`, { index, ip: "198.18.0.77", mac: "0e:00:00:00:77:77" })));
    expect(ids[0]).not.toBe(ids[1]);
    await ip("-n", NS, "route", "del", "10.244.77.0/24");
  });

  it("announces the changes drift repair needs: deleted routes, ARP and FDB entries, addresses, MTU and the device", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    await dp.call("routes.put", { dst: "10.244.9.0/24", gateway: "10.244.9.0", oif: l.index, onlink: true });
    await dp.call(`neighbours:${l.index}.put`, { index: l.index, ip: "10.244.9.0", mac: "0e:00:00:00:09:09" });
    await dp.call(`fdb:${l.index}.put`, { index: l.index, mac: "0e:00:00:00:09:09", dst: "198.18.0.99" });
    dp.changes.length = 0;
    await ip("-n", NS, "route", "del", "10.244.9.0/24");
    await ip("-n", NS, "neigh", "del", "10.244.9.0", "dev", "weft.1");
    await sh("ip", ["netns", "exec", NS, "bridge", "fdb", "del", "0e:00:00:00:09:09", "dev", "weft.1", "dst", "198.18.0.99", "self"]);
    await ip("-n", NS, "addr", "del", "10.244.1.0/32", "dev", "weft.1");
    await ip("-n", NS, "link", "set", "weft.1", "mtu", "1300");
    await ip("-n", NS, "link", "del", "weft.1");
    const seen = (pred: (c: KernelChange) => boolean) => waitFor("notification", async () => dp.changes.some(pred), 3000, 20);
    await seen((c) => c.kind === "route" && c.deleted && c.value.dst === "10.244.9.0/24" && c.ours);
    await seen((c) => c.kind === "neighbour" && c.deleted && c.value.ip === "10.244.9.0" && c.value.index === l.index);
    await seen((c) => c.kind === "fdb" && c.deleted && c.value.mac === "0e:00:00:00:09:09" && c.value.dst === "198.18.0.99");
    await seen((c) => c.kind === "address" && c.deleted && c.address.ip === "10.244.1.0");
    await seen((c) => c.kind === "link" && !c.deleted && c.link.name === "weft.1" && c.link.mtu === 1300);
    await seen((c) => c.kind === "link" && c.deleted && c.link.index === l.index);
  });

  it("mutes route and neighbour notifications for a bulk pass, and reports them as lost afterwards", async () => {
    await dp.call("routes.put", { dst: "10.244.11.0/24", gateway: "198.18.0.9", oif: ul0, onlink: false });
    await dp.call("mute");
    dp.changes.length = 0;
    await ip("-n", NS, "route", "del", "10.244.11.0/24");
    await ip("-n", NS, "link", "set", "ul1", "mtu", "1400");
    await waitFor("link notification while muted", async () => dp.changes.some((c) => c.kind === "link" && c.link.name === "ul1" && c.link.mtu === 1400), 3000, 20);
    expect(dp.changes.filter((c) => c.kind === "route")).toEqual([]);
    await dp.call("unmute");
    await waitFor("lost (muted)", async () => dp.changes.some((c) => c.kind === "lost" && c.why === "muted"), 3000, 20);
    dp.changes.length = 0;
    await dp.call("routes.put", { dst: "10.244.11.0/24", gateway: "198.18.0.9", oif: ul0, onlink: false });
    await ip("-n", NS, "route", "del", "10.244.11.0/24");
    await waitFor("route notifications again", async () => dp.changes.some((c) => c.kind === "route" && c.deleted && c.value.dst === "10.244.11.0/24"), 3000, 20);
  });

  it("finds the default route's interface", async () => {
    expect(await dp.call("defaultRouteIndex")).toBe(null);
    await ip("-n", NS, "route", "add", "default", "via", "198.18.0.9", "dev", "ul0");
    expect(await dp.call("defaultRouteIndex")).toBe(ul0);
  });

  it("tolerates deleting what is gone", async () => {
    await dp.call("deleteLink", 9999);
    expect(await dp.call("getLink", "weft.1")).toBe(null);
  });

  it("stays closed after close(): no socket is reopened", async () => {
    await dp.call("close");
    await expect(dp.call("getLink", "lo")).rejects.toThrow(/dataplane closed/);
  });
});

describe.skipIf(!env.ok)("NetlinkDataplane notification overflow (kernel)", () => {
  const NS2 = `${NS_PREFIX}${run}-ovf`;
  let dp: Driver | undefined;

  afterAll(async () => {
    dp?.proc.kill("SIGKILL");
    await cleanupNetns(NS2);
  });

  it("survives a notification flood: reports lost changes, reopens, and keeps reporting", async () => {
    await addNetns(NS2);
    await ip("-n", NS2, "link", "add", "ul0", "type", "veth", "peer", "name", "ul1");
    await ip("-n", NS2, "link", "set", "ul0", "up");
    // A 4 KiB receive buffer overflows after a few notifications while 3,000 routes go in at once,
    // and the agent's event loop is busy meanwhile (the binding then sees POLLERR, which aborts an
    // unpatched binding; scripts/patch-netlink.mjs).
    dp = startDriver(NS2, 4096);
    await dp.ready;
    await dp.call("watch");
    const batch = Array.from({ length: 3000 }, (_, i) => `route add 10.${(i >> 8) & 255}.${i & 255}.0/24 dev ul0`).join("\n") + "\n";
    const busy = dp.call("block", 1500);
    await new Promise((r) => setTimeout(r, 200));
    await sh("ip", ["-n", NS2, "-batch", "-"], { input: batch });
    await busy;
    await waitFor("a lost event", async () => dp!.changes.some((c) => c.kind === "lost" && c.why === "overflow"), 5000, 20);
    await new Promise((r) => setTimeout(r, 300));
    dp.changes.length = 0;
    await ip("-n", NS2, "route", "del", "10.0.7.0/24");
    await waitFor("notifications after the reopen", async () => dp!.changes.some((c) => c.kind === "route" && c.deleted && c.value.dst === "10.0.7.0/24"), 3000, 20);
    // The process is alive (an unpatched binding aborts it): it still answers.
    expect(await dp.call("listAddresses")).toEqual([{ index: 1, ip: "127.0.0.1", prefix: 8 }]);
  });
});
