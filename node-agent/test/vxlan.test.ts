import { readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { pino } from "pino";
import { WeftError } from "../../lib/src/errors.js";
import { parseNetworkConfig } from "../../lib/src/net-config.js";
import { VxlanBackend } from "../src/backends/vxlan.js";
import type { Route } from "../src/dataplane/dataplane.js";
import { AgentState } from "../src/state.js";
import { FakeDataplane } from "./helpers/fake-dataplane.js";
import { localNode, network, peer, silentLog, tmpDir, vxlanOnFake } from "./helpers/fixtures.js";

const make = (dp: FakeDataplane, state: AgentState, over: { vxlanDevice?: string } = {}) => new VxlanBackend({ dataplane: dp, state, log: silentLog, network, ...over });
const routesOf = (d: ReturnType<VxlanBackend["desired"]>) => d.stages.flat().find((s) => s.table.kind === "route")!.entries.map((e) => e.value as Route);
const count = (d: ReturnType<VxlanBackend["desired"]>, kind: string) => d.stages.flat().find((s) => s.table.kind === kind)!.entries.length;

describe("VxlanBackend", () => {
  it("creates weft.<VNI> with MTU iface-50, marked as weft's, and keeps its MAC across restarts", async () => {
    const dir = tmpDir();
    const { dp, backend, attrs } = await vxlanOnFake(dir);
    expect(backend.deviceName).toBe("weft.1");
    expect(backend.mtu()).toBe(1450);
    const link = dp.links.get("weft.1")!;
    expect(link).toMatchObject({ mtu: 1450, mac: (attrs as { vtepMac: string }).vtepMac, alias: "weft:vxlan", up: true });
    expect(link.vxlan).toMatchObject({ vni: 1, localIP: "198.18.0.1", port: 8472, learning: false, parentIndex: 2 });
    expect(await make(dp, new AgentState(dir)).init(localNode)).toEqual(attrs);
    expect(dp.links.get("weft.1")!.index).toBe(link.index);
    // After a reboot the device is gone: the MAC must come from the state dir alone.
    const rebooted = new FakeDataplane();
    expect(await make(rebooted, new AgentState(dir)).init(localNode)).toEqual(attrs);
    expect(rebooted.links.get("weft.1")!.mac).toBe(link.mac);
  });

  it("refuses a device of its name that weft did not create, and leaves it alone", async () => {
    const dp = new FakeDataplane();
    // flanneld's device: same kind, same VNI, no weft alias.
    dp.links.set("flannel.1", { index: 7, name: "flannel.1", mac: "0e:f1:00:00:00:01", mtu: 1450, up: true, kind: "vxlan",
      vxlan: { vni: 1, localIP: "198.18.0.1", parentIndex: 2, port: 8472, learning: false, gbp: false } });
    dp.fdbMap.set("7|0e:f1:00:00:00:02|198.18.0.2", { index: 7, mac: "0e:f1:00:00:00:02", dst: "198.18.0.2" });
    const b = make(dp, new AgentState(tmpDir()), { vxlanDevice: "flannel.1" });
    await expect(b.init(localNode)).rejects.toMatchObject({ code: "CONFIG_INVALID", message: expect.stringMatching(/flannel.1 exists but was not created by weft.*will not adopt, change or delete it.*--vxlan-device/) });
    expect(dp.links.get("flannel.1")!.index).toBe(7);
    expect(dp.fdbMap.size).toBe(1);
    expect(dp.calls.filter((c) => !c.startsWith("list"))).toEqual([]);
  });

  it("recreates its own device when it is incompatible, and repairs drift", async () => {
    const { dp, backend } = await vxlanOnFake();
    await backend.configureSubnet(peer(1));
    const l = dp.links.get("weft.1")!;
    dp.links.set("weft.1", { ...l, vxlan: { ...l.vxlan!, port: 4789 } });
    expect(await make(dp, new AgentState(tmpDir())).init(localNode)).toBeTruthy();
    expect(dp.links.get("weft.1")!.index).not.toBe(l.index);
    expect(dp.links.get("weft.1")!.vxlan!.port).toBe(8472);

    expect(await backend.repair()).toEqual(["device", "address"]);
    expect(await backend.repair()).toEqual([]);
    const cur = dp.links.get("weft.1")!;
    dp.links.set("weft.1", { ...cur, mtu: 1300 });
    expect(backend.concerns({ kind: "link", deleted: false, link: { ...cur, mtu: 1300 } })).toBe(true);
    expect(backend.concerns({ kind: "link", deleted: false, link: cur })).toBe(false);
    expect(await backend.repair()).toEqual(["mtu"]);
    expect(dp.links.get("weft.1")!.mtu).toBe(1450);
    dp.addresses.length = 0;
    expect(backend.concerns({ kind: "address", deleted: true, address: { index: cur.index, ip: "10.244.1.0", prefix: 32 } })).toBe(true);
    expect(await backend.repair()).toEqual(["address"]);
    await dp.deleteLink(cur.index);
    expect(backend.concerns({ kind: "link", deleted: true, link: cur })).toBe(true);
    expect(await backend.repair()).toEqual(["device", "address"]);
    expect(dp.links.get("weft.1")).toMatchObject({ mac: cur.mac, mtu: 1450, up: true });
  });

  it("knows its own device when the mark is gone (alias cleared, or a crash between creating and marking it)", async () => {
    const dir = tmpDir();
    const { dp, backend } = await vxlanOnFake(dir);
    const l = dp.links.get("weft.1")!;
    dp.links.set("weft.1", { ...l, alias: undefined });
    expect(backend.concerns({ kind: "link", deleted: false, link: { ...l, alias: undefined } })).toBe(true);
    expect(await backend.repair()).toEqual(["alias"]);
    expect(dp.links.get("weft.1")).toMatchObject({ index: l.index, alias: "weft:vxlan" });
    // A restart finds an unmarked device with the VTEP MAC it stored: ours, adopted and marked.
    dp.links.set("weft.1", { ...l, alias: undefined });
    await make(dp, new AgentState(dir)).init(localNode);
    expect(dp.links.get("weft.1")).toMatchObject({ index: l.index, alias: "weft:vxlan" });
  });

  it("does not rewrite the state file when the MAC is unchanged, and warns about a corrupt one", async () => {
    const dir = tmpDir();
    const saves: string[] = [];
    class CountingState extends AgentState {
      override async saveVtepMac(device: string, mac: string) { saves.push(mac); await super.saveVtepMac(device, mac); }
    }
    await make(new FakeDataplane(), new CountingState(dir)).init(localNode);
    await make(new FakeDataplane(), new CountingState(dir)).init(localNode);
    expect(saves.length).toBe(1);
    writeFileSync(join(dir, "agent-state.json"), "{not json");
    const warnings: string[] = [];
    const log = pino({ level: "warn" }, { write: (line: string) => warnings.push(line) });
    await make(new FakeDataplane(), new AgentState(dir, log)).init(localNode);
    expect(warnings.join("")).toMatch(/state file unreadable or corrupt/);
  });

  it("survives concurrent state writes in one process (unique temp files)", async () => {
    const dir = tmpDir();
    const st = new AgentState(dir);
    await Promise.all(Array.from({ length: 8 }, (_, i) => st.saveVtepMac(`weft.${i}`, `0e:00:00:00:00:0${i}`)));
    expect(readdirSync(dir).filter((f) => f.endsWith(".tmp"))).toEqual([]);
    for (let i = 0; i < 8; i++) expect(await st.vtepMac(`weft.${i}`)).toBe(`0e:00:00:00:00:0${i}`);
  });

  it("refuses a device name equal to the underlay interface", async () => {
    const b = make(new FakeDataplane(), new AgentState(tmpDir()), { vxlanDevice: "eth0" });
    await expect(b.init(localNode)).rejects.toMatchObject({ code: "CONFIG_INVALID", message: expect.stringMatching(/underlay interface/) });
  });

  it("rejects peers that clash with our subnet or our VTEP MAC", async () => {
    const { backend, attrs } = await vxlanOnFake();
    await backend.configureSubnet(peer(1));
    const own = (attrs as { vtepMac: string }).vtepMac;
    const d = backend.desired([
      peer(2), peer(1, { nodeName: "node-x" }), peer(3, { attrs: { type: "vxlan", vni: 1, vtepMac: own } }),
      peer(4, { attrs: { type: "vxlan", vni: 1, vtepMac: "0e:00:00:00:00:44" } }),
      peer(6, { subnet: "10.244.0.0/16" }),
    ]);
    expect(routesOf(d).map((r) => r.dst)).toEqual(["10.244.2.0/24", "10.244.4.0/24"]);
    expect(d.rejected.get("10.244.1.0/24")).toMatchObject({ reason: "overlaps_own_subnet", detail: expect.stringMatching(/overlaps our own lease 10.244.1.0\/24/) });
    expect(d.rejected.get("10.244.0.0/16")?.reason).toBe("overlaps_own_subnet");
    expect(d.rejected.get("10.244.3.0/24")).toMatchObject({ reason: "duplicate_vtep_mac", detail: expect.stringMatching(/is our own/) });
    // Two peers with one MAC never reach the backend: the peer table keeps the first holder (peer-table.test.ts).
  });

  it("adopts the live device's MAC when the state dir was wiped", async () => {
    const { dp, attrs } = await vxlanOnFake();
    expect(await make(dp, new AgentState(tmpDir())).init(localNode)).toEqual(attrs);
  });

  it("addresses the device with the subnet's network address /32 only", async () => {
    const { dp, backend } = await vxlanOnFake();
    dp.addresses.push({ index: backend.deviceIndex, ip: "10.244.9.0", prefix: 32 });
    await backend.configureSubnet(peer(5));
    expect(dp.addresses).toEqual([{ index: backend.deviceIndex, ip: "10.244.5.0", prefix: 32 }]);
  });

  it("with DirectRouting, routes peers on the underlay subnet directly and tunnels the rest", async () => {
    const direct = parseNetworkConfig('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": true}}');
    const { backend } = await vxlanOnFake(undefined, direct);
    await backend.configureSubnet(peer(1));
    const far = peer(3, { publicIP: "198.18.1.3" });
    const d = backend.desired([peer(2), far]);
    expect(routesOf(d)).toEqual(expect.arrayContaining([
      { dst: "10.244.2.0/24", gateway: "198.18.0.2", oif: 2, onlink: false },
      { dst: "10.244.3.0/24", gateway: "10.244.3.0", oif: backend.deviceIndex, onlink: true },
    ]));
    expect(count(d, "neighbour")).toBe(1);
    expect(count(d, "fdb")).toBe(1);
    expect(backend.pathTo(peer(2))).toBe("direct");
    expect(backend.pathTo(far)).toBe("vxlan");
    // Without DirectRouting everything is tunnelled.
    const { backend: plain } = await vxlanOnFake();
    expect(count(plain.desired([peer(2), far]), "fdb")).toBe(2);
    expect(plain.pathTo(peer(2))).toBe("vxlan");
  });
});

describe("VxlanBackend device conflicts", () => {
  it("fails with the reason, without looping, when the kernel refuses a VXLAN device whose VNI and port another device uses", async () => {
    const dp = new FakeDataplane();
    let creates = 0;
    dp.createLink = async () => { creates++; throw new WeftError("ALREADY_EXISTS", "create vxlan weft.1: an interface of that name exists"); };
    await expect(make(dp, new AgentState(tmpDir())).init(localNode)).rejects.toMatchObject({
      code: "CONFIG_INVALID", message: expect.stringMatching(/cannot create vxlan weft.1: .*same VNI and UDP port.*change VNI\/Port in the network config/),
    });
    expect(creates).toBe(1);
  });
});
