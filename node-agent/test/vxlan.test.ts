import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { VxlanBackendConfig } from "../../lib/src/net-config.js";
import { VxlanBackend } from "../src/backends/vxlan.js";
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
