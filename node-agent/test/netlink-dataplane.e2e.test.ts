// NetlinkDataplane against the real kernel, in one throwaway namespace with a
// veth underlay. The dataplane runs in a child process inside the namespace.
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addNetns, bridgeFdbJson, cleanupNetns, ip, ipJson, kernelTestEnv, newRunId, NS_PREFIX, sh } from "../../test/e2e/netns.js";
import { Cluster } from "../../test/e2e/cluster.js";
import type { Link } from "../src/dataplane/dataplane.js";

const env = kernelTestEnv();
const run = newRunId();
const NS = `${NS_PREFIX}${run}-dp`;

class Driver {
  private seq = 0;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  readonly ready: Promise<void>;
  constructor(readonly proc: ChildProcess) {
    let onReady!: () => void;
    this.ready = new Promise((r) => (onReady = r));
    createInterface({ input: proc.stdout! }).on("line", (line) => {
      const m = JSON.parse(line) as { ready?: boolean; id: number; result?: unknown; error?: { message: string; code?: string } };
      if (m.ready) return onReady();
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

describe.skipIf(!env.ok)("NetlinkDataplane (kernel, one namespace)", () => {
  let dp: Driver;
  let ul0 = 0;
  const spec = (over: Record<string, unknown> = {}) => ({
    name: "weft.1", vni: 1, localIP: "198.18.0.1", parentIndex: ul0, port: 8472, learning: false, gbp: false, mtu: 1450, mac: "0e:00:00:00:01:01", ...over,
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
    const links = await ipJson<Array<{ ifname: string; ifindex: number }>>(NS, "link", "show", "ul0");
    ul0 = links[0]!.ifindex;
    const proc = spawn("ip", ["netns", "exec", NS, process.execPath, "--import", "tsx", "node-agent/test/helpers/dataplane-driver.ts"], { stdio: ["pipe", "pipe", "pipe"] });
    dp = new Driver(proc);
    await dp.ready;
  });

  afterAll(async () => {
    dp?.proc.stdin?.end();
    dp?.proc.kill("SIGKILL");
    await cleanupNetns(`${NS_PREFIX}${run}-`);
  });

  it("creates the VXLAN device as Flannel does and is idempotent", async () => {
    const first = await dp.call<{ link: Link; outcome: string }>("ensureVxlan", spec());
    expect(first.outcome).toBe("created");
    expect(first.link).toMatchObject({ name: "weft.1", mac: "0e:00:00:00:01:01", mtu: 1450, up: true, kind: "vxlan" });
    expect(first.link.vxlan).toMatchObject({ vni: 1, localIP: "198.18.0.1", port: 8472, learning: false, parentIndex: ul0 });
    const [d] = await ipJson<Array<{ linkinfo: { info_data: Record<string, unknown> } }>>(NS, "-d", "link", "show", "weft.1");
    expect(d!.linkinfo.info_data).toMatchObject({ id: 1, local: "198.18.0.1", port: 8472, learning: false });
    const again = await dp.call<{ link: Link; outcome: string }>("ensureVxlan", spec());
    expect(again.outcome).toBe("reused");
    expect(again.link.index).toBe(first.link.index);
  });

  it("reuses a compatible device and only fixes MTU and MAC", async () => {
    const before = await dp.call<Link>("getLink", "weft.1");
    const r = await dp.call<{ link: Link; outcome: string }>("ensureVxlan", spec({ mtu: 1400, mac: "0e:00:00:00:01:02" }));
    expect(r.outcome).toBe("reused");
    expect(r.link).toMatchObject({ index: before.index, mtu: 1400, mac: "0e:00:00:00:01:02" });
    await dp.call("ensureVxlan", spec());
  });

  it("recreates an incompatible device", async () => {
    const before = await dp.call<Link>("getLink", "weft.1");
    const r = await dp.call<{ link: Link; outcome: string }>("ensureVxlan", spec({ port: 4789 }));
    expect(r.outcome).toBe("recreated");
    expect(r.link.vxlan!.port).toBe(4789);
    expect(r.link.index).not.toBe(before.index);
    const back = await dp.call<{ link: Link; outcome: string }>("ensureVxlan", spec());
    expect(back.outcome).toBe("recreated");
  });

  it("refuses to delete a non-vxlan interface that has the device's name", async () => {
    await ip("-n", NS, "link", "add", "weft.9", "type", "veth", "peer", "name", "weft.9p");
    const err = await dp.call("ensureVxlan", spec({ name: "weft.9" })).catch((e: Error & { code?: string }) => e);
    expect(err).toMatchObject({ code: "CONFIG_INVALID", message: expect.stringMatching(/weft.9 exists and is a veth link, not vxlan; weft will not delete it/) });
    expect((await ipJson(NS, "link", "show", "weft.9")).length).toBe(1);
    await ip("-n", NS, "link", "del", "weft.9");
  });

  it("adds, lists and deletes the address idempotently", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    const a = { index: l.index, ip: "10.244.1.0", prefix: 32 };
    await dp.call("addAddress", a);
    await dp.call("addAddress", a);
    expect(await dp.call("listAddresses", l.index)).toEqual([a]);
    await dp.call("deleteAddress", a);
    await dp.call("deleteAddress", a);
    expect(await dp.call("listAddresses", l.index)).toEqual([]);
    await dp.call("addAddress", a);
  });

  it("adds, lists and deletes route, neighbour and FDB entries idempotently", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    const route = { dst: "10.244.5.0/24", gateway: "10.244.5.0", oif: l.index, onlink: true };
    const neigh = { index: l.index, ip: "10.244.5.0", mac: "0e:00:00:00:05:05" };
    const fdb = { index: l.index, mac: "0e:00:00:00:05:05", dst: "198.18.0.5" };
    for (let i = 0; i < 2; i++) {
      await dp.call("replaceNeighbour", neigh);
      await dp.call("replaceFdb", fdb);
      await dp.call("replaceRoute", route);
    }
    expect(await dp.call("listRoutes")).toEqual([route]);
    expect(await dp.call("listNeighbours", l.index)).toEqual([neigh]);
    expect(await dp.call("listFdb", l.index)).toEqual([fdb]);
    const { stdout } = await sh("ip", ["-n", NS, "route", "show", "10.244.5.0/24"]);
    expect(stdout.trim()).toBe("10.244.5.0/24 via 10.244.5.0 dev weft.1 proto 87 onlink");
    const f = await bridgeFdbJson(NS, "weft.1");
    expect(f.find((e) => e.mac === "0e:00:00:00:05:05")).toMatchObject({ dst: "198.18.0.5", state: "permanent" });
    for (let i = 0; i < 2; i++) {
      await dp.call("deleteRoute", route);
      await dp.call("deleteNeighbour", neigh);
      await dp.call("deleteFdb", fdb);
    }
    expect(await dp.call("listRoutes")).toEqual([]);
    expect(await dp.call("listNeighbours", l.index)).toEqual([]);
    expect(await dp.call("listFdb", l.index)).toEqual([]);
  });

  it("replaces its own route to a dst but never a foreign one", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    const ours = { dst: "10.244.6.0/24", gateway: "10.244.6.0", oif: l.index, onlink: true };
    await dp.call("replaceRoute", ours);
    await dp.call("replaceRoute", { ...ours, gateway: "10.244.6.1" });
    expect(await dp.call("listRoutes")).toEqual([{ ...ours, gateway: "10.244.6.1" }]);
    await dp.call("deleteRoute", { ...ours, gateway: "10.244.6.1" });
    await ip("-n", NS, "route", "add", "10.244.7.0/24", "via", "198.18.0.9", "dev", "ul0", "proto", "static");
    const err = await dp.call("replaceRoute", { dst: "10.244.7.0/24", gateway: "10.244.7.0", oif: l.index, onlink: true }).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/route to 10.244.7.0\/24 with protocol 4 .* exists; leaving it alone/);
    const { stdout } = await sh("ip", ["-n", NS, "route", "show", "10.244.7.0/24"]);
    expect(stdout.trim()).toBe("10.244.7.0/24 via 198.18.0.9 dev ul0 proto static");
    await ip("-n", NS, "route", "del", "10.244.7.0/24");
  });

  it("lists only routes with our protocol and neighbours on our device", async () => {
    const l = await dp.call<Link>("getLink", "weft.1");
    await ip("-n", NS, "route", "add", "10.99.0.0/24", "via", "198.18.0.9", "dev", "ul0");
    await ip("-n", NS, "route", "add", "10.244.77.0/24", "via", "10.244.77.0", "dev", "weft.1", "onlink");
    await ip("-n", NS, "neigh", "replace", "198.18.0.77", "lladdr", "0e:00:00:00:77:77", "dev", "ul0", "nud", "permanent");
    expect(await dp.call("listRoutes")).toEqual([]);
    expect(await dp.call("listNeighbours", l.index)).toEqual([]);
    await ip("-n", NS, "route", "del", "10.244.77.0/24");
  });

  it("finds the default route's interface", async () => {
    expect(await dp.call("defaultRouteIndex")).toBe(null);
    await ip("-n", NS, "route", "add", "default", "via", "198.18.0.9", "dev", "ul0");
    expect(await dp.call("defaultRouteIndex")).toBe(ul0);
  });

  it("deletes the device and tolerates deleting it again", async () => {
    await dp.call("deleteLink", "weft.1");
    await dp.call("deleteLink", "weft.1");
    expect(await dp.call("getLink", "weft.1")).toBe(null);
  });

  it("stays closed after close(): no socket is reopened", async () => {
    await dp.call("close");
    await expect(dp.call("getLink", "lo")).rejects.toThrow(/dataplane closed/);
  });
});
