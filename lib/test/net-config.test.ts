import { describe, expect, it } from "vitest";
import { formatIpv4 } from "../src/cidr.js";
import { networkConfigJson, parseNetworkConfig, subnetCount } from "../src/net-config.js";
import { weftErrorMessage } from "./weft-error.js";

const parse = (o: unknown) => parseNetworkConfig(JSON.stringify(o));
const errorOf = (text: string) => weftErrorMessage(() => parseNetworkConfig(text), "CONFIG_INVALID");

describe("network config (Flannel net-conf.json)", () => {
  it("fills Flannel's defaults for a /16: SubnetLen 24, first subnet skipped, last subnet included", () => {
    const c = parse({ Network: "10.244.0.0/16" });
    expect(c.subnetLen).toBe(24);
    expect(formatIpv4(c.subnetMin)).toBe("10.244.1.0");
    expect(formatIpv4(c.subnetMax)).toBe("10.244.255.0");
    expect(subnetCount(c)).toBe(255);
  });

  it("defaults the backend to vxlan with VNI 1 and port 8472 when Backend is absent", () => {
    expect(parse({ Network: "10.244.0.0/16" }).backend).toEqual({ type: "vxlan", vni: 1, port: 8472, mtu: 0, gbp: false, learning: false, directRouting: false });
  });

  it("uses prefix+2 as SubnetLen for networks smaller than /22", () => {
    expect(parse({ Network: "10.0.0.0/24" }).subnetLen).toBe(26);
    expect(parse({ Network: "10.0.0.0/22" }).subnetLen).toBe(24);
  });

  it("treats null SubnetLen and zero SubnetMin/SubnetMax as unset, as Flannel does", () => {
    const c = parse({ Network: "10.0.0.0/24", SubnetLen: null, SubnetMin: "0.0.0.0", SubnetMax: "" });
    expect(c.subnetLen).toBe(26);
    expect(formatIpv4(c.subnetMin)).toBe("10.0.0.64");
    expect(formatIpv4(c.subnetMax)).toBe("10.0.0.192");
  });

  it("accepts keys in any case, as Go's decoder does", () => {
    const c = parse({ network: "10.1.0.0/16", subnetlen: 20, backend: { type: "host-gw" } });
    expect(c.subnetLen).toBe(20);
    expect(c.backend.type).toBe("host-gw");
  });

  it("keeps explicit SubnetMin/SubnetMax and backend settings", () => {
    const c = parse({ Network: "10.0.0.0/8", SubnetLen: 20, SubnetMin: "10.10.0.0", SubnetMax: "10.99.0.0", Backend: { Type: "vxlan", VNI: 4, Port: 4789, MTU: 9000 } });
    expect(formatIpv4(c.subnetMin)).toBe("10.10.0.0");
    expect(formatIpv4(c.subnetMax)).toBe("10.99.0.0");
    expect(c.backend).toMatchObject({ vni: 4, port: 4789, mtu: 9000 });
    expect(JSON.parse(networkConfigJson(c))).toMatchObject({ Network: "10.0.0.0/8", SubnetLen: 20, Backend: { Type: "vxlan", VNI: 4, Port: 4789 } });
  });

  it("defaults WireGuard's listen port to 51820", () => {
    expect(parse({ Network: "10.244.0.0/16", Backend: { Type: "wireguard" } }).backend).toEqual({ type: "wireguard", listenPort: 51820, mtu: 0, persistentKeepaliveInterval: 0 });
  });

  it.each([
    ["not json", "{", /not valid JSON/],
    ["missing Network", "{}", /Network: is missing/],
    ["bad CIDR", '{"Network":"10.244.0.0"}', /not an IPv4 CIDR/],
    ["host bits", '{"Network":"10.244.1.0/16"}', /host bits set; use 10\.244\.0\.0\/16/],
    ["SubnetLen too large", '{"Network":"10.244.0.0/16","SubnetLen":31}', /SubnetLen: 31 is larger than 30/],
    ["SubnetLen too small", '{"Network":"10.244.0.0/16","SubnetLen":17}', /fewer than four subnets.*at least 18/],
    ["network too small", '{"Network":"10.0.0.0/29"}', /too small/],
    ["SubnetMin outside", '{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}', /SubnetMin: 10\.245\.0\.0 is outside Network/],
    ["SubnetMax unaligned", '{"Network":"10.244.0.0/16","SubnetMax":"10.244.9.7"}', /SubnetMax: 10\.244\.9\.7 is not the start of a \/24 subnet; use 10\.244\.9\.0/],
    ["min above max", '{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0"}', /above SubnetMax/],
    ["unknown backend", '{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}', /Backend\.Type: "udp" is not supported; set it to one of vxlan, host-gw, wireguard/],
    ["backend without type", '{"Network":"10.244.0.0/16","Backend":{}}', /Backend\.Type: is missing/],
    ["unknown key", '{"Network":"10.244.0.0/16","SubnetLenght":24}', /SubnetLenght: unknown key/],
    ["unknown backend key", '{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw","VNI":3}}', /Backend\.VNI: unknown key/],
    ["VNI out of range", '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":0}}', /Backend\.VNI: 0 is not an integer between 1 and 16777215/],
    ["VNI as string", '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":"1"}}', /Backend\.VNI/],
    ["IPv6", '{"Network":"10.244.0.0/16","EnableIPv6":true}', /IPv6 is not supported yet/],
    ["Flannel-only key", '{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","PSK":"x"}}', /Backend\.PSK: a pre-shared key in the network config would be sent to every client of GetNetworkConfig; remove it, .*--wireguard-psk-file/],
  ])("rejects %s with a message naming the field and the fix", (_name, text, re) => {
    const msg = errorOf(text);
    expect(msg).toMatch(re);
    expect(msg).toMatch(/^network config: /);
    expect(msg).toContain(";");
  });
});
