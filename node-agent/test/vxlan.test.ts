import { mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { VxlanBackendConfig } from "../../lib/src/net-config.js";
import { pino } from "pino";
import { VxlanBackend } from "../src/backends/vxlan.js";
import { FakeDataplane } from "../src/dataplane/fake-dataplane.js";
import { AgentState } from "../src/state.js";
import { localNode, network, peer, silentLog, vxlanOnFake } from "./helpers/fixtures.js";

describe("VxlanBackend", () => {
  it("creates weft.<VNI> with MTU iface-50 and keeps its MAC across restarts", async () => {
    const dir = mkdtempSync(join(tmpdir(), "weft-vx-"));
    const { dp, backend, attrs } = await vxlanOnFake(dir);
    expect(backend.deviceName).toBe("weft.1");
    expect(backend.mtu()).toBe(1450);
    const link = dp.links.get("weft.1")!;
    expect(link).toMatchObject({ mtu: 1450, mac: (attrs as { vtepMac: string }).vtepMac });
    expect(link.vxlan).toMatchObject({ vni: 1, localIP: "198.18.0.1", port: 8472, learning: false, parentIndex: 2 });
    const again = new VxlanBackend({ dataplane: dp, state: new AgentState(dir), log: silentLog, config: network.backend as VxlanBackendConfig });
    expect(await again.init(localNode)).toEqual(attrs);
    expect(dp.links.get("weft.1")!.index).toBe(link.index);
    // After a reboot the device is gone: the MAC must come from the state dir alone.
    const rebooted = new FakeDataplane();
    const fresh = new VxlanBackend({ dataplane: rebooted, state: new AgentState(dir), log: silentLog, config: network.backend as VxlanBackendConfig });
    expect(await fresh.init(localNode)).toEqual(attrs);
    expect(rebooted.links.get("weft.1")!.mac).toBe(link.mac);
  });

  it("does not rewrite the state file when the MAC is unchanged, and warns about a corrupt one", async () => {
    const dir = mkdtempSync(join(tmpdir(), "weft-vx-"));
    const saves: string[] = [];
    class CountingState extends AgentState {
      override async saveVtepMac(device: string, mac: string) { saves.push(mac); await super.saveVtepMac(device, mac); }
    }
    const make = (state: AgentState) => new VxlanBackend({ dataplane: new FakeDataplane(), state, log: silentLog, config: network.backend as VxlanBackendConfig });
    await make(new CountingState(dir)).init(localNode);
    await make(new CountingState(dir)).init(localNode);
    expect(saves.length).toBe(1);
    writeFileSync(join(dir, "agent-state.json"), "{not json");
    const warnings: string[] = [];
    const log = pino({ level: "warn" }, { write: (line: string) => warnings.push(line) });
    await make(new AgentState(dir, log)).init(localNode);
    expect(warnings.join("")).toMatch(/state file unreadable or corrupt/);
  });

  it("survives concurrent state writes in one process (unique temp files)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "weft-vx-"));
    const st = new AgentState(dir);
    await Promise.all(Array.from({ length: 8 }, (_, i) => st.saveVtepMac(`weft.${i}`, `0e:00:00:00:00:0${i}`)));
    expect(readdirSync(dir).filter((f) => f.endsWith(".tmp"))).toEqual([]);
    for (let i = 0; i < 8; i++) expect(await st.vtepMac(`weft.${i}`)).toBe(`0e:00:00:00:00:0${i}`);
  });

  it("refuses a device name equal to the underlay interface", async () => {
    const b = new VxlanBackend({ dataplane: new FakeDataplane(), state: new AgentState(mkdtempSync(join(tmpdir(), "weft-vx-"))), log: silentLog, config: network.backend as VxlanBackendConfig, deviceName: "eth0" });
    await expect(b.init(localNode)).rejects.toMatchObject({ code: "CONFIG_INVALID", message: expect.stringMatching(/underlay interface/) });
  });

  it("rejects peers that clash with our subnet or our VTEP MAC, and peers sharing one MAC", async () => {
    const { backend, attrs } = await vxlanOnFake(mkdtempSync(join(tmpdir(), "weft-vx-")));
    await backend.configureSubnet(peer(1));
    const own = (attrs as { vtepMac: string }).vtepMac;
    const d = backend.desired([
      peer(2), peer(1, { nodeName: "node-x" }), peer(3, { attrs: { type: "vxlan", vni: 1, vtepMac: own } }),
      peer(4, { attrs: { type: "vxlan", vni: 1, vtepMac: "0e:00:00:00:00:44" } }), peer(5, { attrs: { type: "vxlan", vni: 1, vtepMac: "0e:00:00:00:00:44" } }),
      peer(6, { subnet: "10.244.0.0/16" }),
    ]);
    expect(d.routes.map((r) => r.peer)).toEqual(["10.244.2.0/24"]);
    expect(d.rejected.get("10.244.1.0/24")).toMatch(/overlaps our own lease 10.244.1.0\/24/);
    expect(d.rejected.get("10.244.0.0/16")).toMatch(/overlaps our own lease/);
    expect(d.rejected.get("10.244.3.0/24")).toMatch(/is our own/);
    expect(d.rejected.get("10.244.4.0/24")).toMatch(/also advertised by node-5/);
    expect(d.rejected.get("10.244.5.0/24")).toMatch(/also advertised by node-4/);
  });

  it("adopts the live device's MAC when the state dir was wiped", async () => {
    const { dp, attrs } = await vxlanOnFake(mkdtempSync(join(tmpdir(), "weft-vx-")));
    const fresh = new VxlanBackend({ dataplane: dp, state: new AgentState(mkdtempSync(join(tmpdir(), "weft-vx-"))), log: silentLog, config: network.backend as VxlanBackendConfig });
    expect(await fresh.init(localNode)).toEqual(attrs);
  });

  it("addresses the device with the subnet's network address /32 only", async () => {
    const { dp, backend } = await vxlanOnFake(mkdtempSync(join(tmpdir(), "weft-vx-")));
    dp.addresses.push({ index: backend.deviceIndex, ip: "10.244.9.0", prefix: 32 });
    await backend.configureSubnet(peer(5));
    expect(dp.addresses).toEqual([{ index: backend.deviceIndex, ip: "10.244.5.0", prefix: 32 }]);
  });
});
