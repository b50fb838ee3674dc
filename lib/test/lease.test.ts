import { describe, expect, it } from "vitest";
import { validateBackendAttrs, validateNodeName, validatePublicIp } from "../src/lease.js";
import { weftErrorMessage } from "./weft-error.js";

const messageOf = (fn: () => void) => weftErrorMessage(fn, "INVALID_ARGUMENT");

describe("lease field validation", () => {
  it("accepts DNS-1123 node names", () => {
    for (const n of ["node-a", "n1", "ip-10-0-0-1.eu-west-1.compute.internal"]) expect(() => validateNodeName(n)).not.toThrow();
  });
  it.each(["", "Node-A", "-a", "a-", "a_b", "x".repeat(254), "a b"])("rejects node name %j naming node_name", (n) => {
    expect(messageOf(() => validateNodeName(n))).toMatch(/^node_name: /);
  });
  it.each(["", "1.2.3", "10.0.0.256", "::1", "0.0.0.0", "127.0.0.1", "224.0.0.1"])("rejects public IP %j naming public_ip", (ip) => {
    expect(messageOf(() => validatePublicIp(ip))).toMatch(/^public_ip: /);
  });
  it("checks backend attributes against the network's backend", () => {
    expect(() => validateBackendAttrs({ type: "vxlan", vni: 1, vtepMac: "0e:00:00:00:00:01" }, "vxlan", 1)).not.toThrow();
    expect(messageOf(() => validateBackendAttrs(undefined, "vxlan", 1))).toMatch(/backend_attributes: missing/);
    expect(messageOf(() => validateBackendAttrs({ type: "host-gw" }, "vxlan", 1))).toMatch(/are for host-gw but the network's backend is vxlan/);
    expect(messageOf(() => validateBackendAttrs({ type: "vxlan", vni: 2, vtepMac: "0e:00:00:00:00:01" }, "vxlan", 1))).toMatch(/vxlan\.vni: 2 differs/);
    expect(messageOf(() => validateBackendAttrs({ type: "vxlan", vni: 1, vtepMac: "01:00:00:00:00:01" }, "vxlan", 1))).toMatch(/vtep_mac/);
    expect(messageOf(() => validateBackendAttrs({ type: "wireguard", publicKey: "short", listenPort: 51820 }, "wireguard"))).toMatch(/public_key/);
    expect(() => validateBackendAttrs({ type: "wireguard", publicKey: "4gWfAxuBB2AecKbmbl1MM43Eyka2iRj0xeV0PkkLr3Q=", listenPort: 51820 }, "wireguard")).not.toThrow();
  });
});
