import { describe, expect, it } from "vitest";
import { parseCidr } from "../../lib/src/cidr.js";
import { checkPeerLease } from "../src/peer-validation.js";
import { network, peer } from "./helpers/fixtures.js";

// network: 10.244.0.0/16, SubnetLen 24; our own subnet 10.244.1.0/24.
const own = parseCidr("10.244.1.0/24")!;
const reasonOf = (over: Parameters<typeof peer>[1]) => {
  const r = checkPeerLease(peer(2, over), network, own);
  return "rejection" in r ? r.rejection.reason : "ok";
};

describe("checkPeerLease", () => {
  it("accepts a node subnet of the network with a unicast public IP", () => {
    expect(checkPeerLease(peer(2), network, own)).toEqual({ net: parseCidr("10.244.2.0/24") });
    expect(reasonOf({ publicIP: "169.254.3.4" })).toBe("ok");
  });

  it("refuses subnets that would route traffic outside the cluster network or over our own pods", () => {
    for (const subnet of ["128.0.0.0/1", "8.8.8.0/24", "10.245.0.0/24", "10.244.2.0/23", "10.244.2.0/25", "192.168.0.0/16"]) {
      expect(reasonOf({ subnet }), subnet).toBe("outside_network");
    }
    for (const subnet of ["0.0.0.0/0", "0.0.0.0/1", "10.0.0.0/8", "10.244.1.0/24", "10.244.0.0/16", "10.244.1.128/25", "10.244.0.0/23"]) expect(reasonOf({ subnet }), subnet).toBe("overlaps_own_subnet");
    for (const subnet of ["10.244.2.1/24", "10.244.2.0/024", "banana", ""]) expect(reasonOf({ subnet }), subnet).toBe("invalid");
  });

  it("refuses public IPs no node can have, and overlay addresses", () => {
    for (const publicIP of ["0.0.0.0", "0.1.2.3", "127.0.0.1", "224.0.0.1", "239.1.1.1", "240.0.0.1", "255.255.255.255", "10.244.7.1", "198.18.0.256", "::1", ""]) {
      const r = checkPeerLease(peer(2, { publicIP }), network, own);
      expect(r, publicIP).toMatchObject({ rejection: { reason: "invalid", detail: expect.stringMatching(/public IP/) } });
    }
  });

  it("refuses a WireGuard listen port beyond 65535 (proto uint32)", () => {
    const wg = (listenPort: number) => reasonOf({ attrs: { type: "wireguard", publicKey: Buffer.alloc(32, 1).toString("base64"), listenPort } });
    expect(wg(51820)).toBe("ok");
    expect(wg(0)).toBe("ok");
    expect(wg(65536)).toBe("invalid");
    expect(wg(2 ** 32 - 1)).toBe("invalid");
  });
});
