import { describe, expect, it } from "vitest";
import { parseNetworkConfig } from "../../lib/src/net-config.js";
import { HostGwBackend } from "../src/backends/host-gw.js";
import { createBackend } from "../src/backends/index.js";
import { Reconciler } from "../src/reconciler.js";
import { FakeDataplane } from "./helpers/fake-dataplane.js";
import { backendDeps, localNode, peer, silentLog } from "./helpers/fixtures.js";

const hostGw = parseNetworkConfig('{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}');
const hgPeer = (i: number, publicIP = `198.18.0.${i}`) => peer(i, { publicIP, attrs: { type: "host-gw" } });

async function setup(mtu?: number) {
  const dp = new FakeDataplane();
  const net = mtu ? parseNetworkConfig(`{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw", "MTU": ${mtu}}}`) : hostGw;
  const b = await createBackend(backendDeps(dp, { net }));
  expect(b).toBeInstanceOf(HostGwBackend);
  expect(await b.init({ ...localNode, network: net })).toEqual({ type: "host-gw" });
  await b.configureSubnet(peer(1));
  return { dp, b };
}

describe("HostGwBackend", () => {
  it("routes each peer's subnet via its public IP on the underlay, at the interface MTU", async () => {
    const { dp, b } = await setup();
    expect(b.mtu()).toBe(1500);
    expect(b.devices).toEqual([]);
    const r = await new Reconciler(silentLog).reconcile(b.desired([hgPeer(2), hgPeer(3)]));
    expect(r.programmed.size).toBe(2);
    expect([...dp.routeMap.values()]).toEqual([
      { dst: "10.244.2.0/24", gateway: "198.18.0.2", oif: 2, onlink: false },
      { dst: "10.244.3.0/24", gateway: "198.18.0.3", oif: 2, onlink: false },
    ]);
    expect(b.pathTo(hgPeer(2))).toBe("host-gw");
    expect((await setup(9000)).b.mtu()).toBe(9000);
  });

  it("rejects a peer on another L2 segment with the reason and the fix, and programs the rest", async () => {
    const { dp, b } = await setup();
    const r = await new Reconciler(silentLog).reconcile(b.desired([hgPeer(2), hgPeer(3, "198.18.1.3")]));
    expect([...r.programmed]).toEqual(["10.244.2.0/24"]);
    expect(r.errors).toBe(0);
    expect(r.rejected.get("10.244.3.0/24")).toEqual({
      reason: "not_on_segment",
      detail: expect.stringMatching(/public IP 198.18.1.3 is not on eth0's subnet 198.18.0.0\/24: host-gw needs every node on one L2 segment; use the vxlan backend/),
    });
    expect(dp.routeMap.has("10.244.3.0/24")).toBe(false);
  });

  it("removes stale routes of ours, e.g. VXLAN routes left from before a backend switch", async () => {
    const { dp, b } = await setup();
    dp.routeMap.set("10.244.9.0/24", { dst: "10.244.9.0/24", gateway: "10.244.9.0", oif: 33, onlink: true });
    dp.routeMap.set("10.244.2.0/24", { dst: "10.244.2.0/24", gateway: "10.244.2.0", oif: 33, onlink: true });
    await new Reconciler(silentLog).reconcile(b.desired([hgPeer(2), peer(4)]));
    expect([...dp.routeMap.values()]).toEqual([{ dst: "10.244.2.0/24", gateway: "198.18.0.2", oif: 2, onlink: false }]);
  });

  it("refuses a --public-ip other than the interface's address (NAT)", async () => {
    const b = await createBackend(backendDeps(new FakeDataplane(), { net: hostGw }));
    await expect(b.init({ ...localNode, network: hostGw, iface: { ...localNode.iface, publicIP: "203.0.113.9" } }))
      .rejects.toMatchObject({ code: "CONFIG_INVALID", message: expect.stringMatching(/--public-ip 203.0.113.9 is not the address of eth0.*vxlan backend behind NAT/) });
  });
});

describe("peer screening", () => {
  it("rejects a lease whose public IP is not IPv4 instead of failing the pass", async () => {
    const { b } = await setup();
    const d = b.desired([hgPeer(2, "not-an-ip")]);
    expect(d.rejected.get("10.244.2.0/24")).toEqual({ reason: "invalid", detail: 'public IP "not-an-ip" is not an IPv4 address' });
  });
});
