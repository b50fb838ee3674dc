import { describe, expect, it } from "vitest";
import { parseNetworkConfig } from "../../lib/src/net-config.js";
import { isAllocatable, pickSubnet, subnetIp } from "../src/allocator.js";

const cfg = parseNetworkConfig('{"Network":"10.244.0.0/16","SubnetMax":"10.244.4.0"}');
const ips = (...s: string[]) => new Set(s.map(subnetIp));
const input = (taken: Set<number>, freed = new Map<number, number>()) => ({ isTaken: (ip: number) => taken.has(ip), freedOrder: (ip: number) => freed.get(ip) });

describe("allocator", () => {
  it("hands out never-used subnets first, in address order, skipping the network's first subnet", () => {
    expect(pickSubnet(cfg, input(new Set()))).toBe("10.244.1.0/24");
    expect(pickSubnet(cfg, input(ips("10.244.1.0/24")))).toBe("10.244.2.0/24");
  });

  it("hands out freed subnets last, least recently freed first", () => {
    const freed = new Map([[subnetIp("10.244.1.0/24"), 9], [subnetIp("10.244.2.0/24"), 3]]);
    expect(pickSubnet(cfg, input(ips("10.244.3.0/24"), freed))).toBe("10.244.4.0/24");
    expect(pickSubnet(cfg, input(ips("10.244.3.0/24", "10.244.4.0/24"), freed))).toBe("10.244.2.0/24");
  });

  it("returns undefined when every subnet is taken", () => {
    expect(pickSubnet(cfg, input(ips("10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24")))).toBeUndefined();
  });

  it("knows which subnets belong to the network's range", () => {
    expect(isAllocatable(cfg, "10.244.4.0/24")).toBe(true);
    expect(isAllocatable(cfg, "10.244.0.0/24")).toBe(false);
    expect(isAllocatable(cfg, "10.244.5.0/24")).toBe(false);
    expect(isAllocatable(cfg, "10.244.2.0/25")).toBe(false);
    expect(isAllocatable(cfg, "garbage")).toBe(false);
  });
});
