import { describe, expect, it } from "vitest";
import { containsNet, formatCidr, formatIpv4, overlaps, parseCidr, parseIpv4 } from "../src/cidr.js";
import { parseDuration } from "../src/duration.js";

describe("cidr", () => {
  it("round-trips addresses at the edges", () => {
    for (const s of ["0.0.0.0", "255.255.255.255", "10.244.1.0", "198.18.0.1"]) expect(formatIpv4(parseIpv4(s)!)).toBe(s);
  });
  it.each(["256.1.1.1", "1.2.3", "01.2.3.4", "1.2.3.4 ", "a.b.c.d", ""])("rejects malformed address %j", (s) => {
    expect(parseIpv4(s)).toBeUndefined();
  });
  it("parses CIDRs strictly unless asked not to", () => {
    expect(parseCidr("10.244.1.0/24")).toEqual({ ip: parseIpv4("10.244.1.0"), prefix: 24 });
    expect(parseCidr("10.244.1.5/24")).toBeUndefined();
    expect(formatCidr(parseCidr("10.244.1.5/24", false)!)).toBe("10.244.1.0/24");
    expect(parseCidr("10.0.0.0/33")).toBeUndefined();
  });
  it("knows containment and overlap", () => {
    const net = parseCidr("10.244.0.0/16")!;
    expect(containsNet(net, parseCidr("10.244.7.0/24")!)).toBe(true);
    expect(containsNet(net, parseCidr("10.245.7.0/24")!)).toBe(false);
    expect(overlaps(parseCidr("10.244.7.0/24")!, net)).toBe(true);
    expect(overlaps(parseCidr("10.244.7.0/24")!, parseCidr("10.244.8.0/24")!)).toBe(false);
  });
});

describe("durations", () => {
  it.each([["30s", 30_000], ["24h", 86_400_000], ["1h30m", 5_400_000], ["500ms", 500]])("parses %s", (s, ms) => expect(parseDuration(s)).toBe(ms));
  it.each(["30", "-1s", "1x", "", "0s"])("rejects %j", (s) => expect(parseDuration(s)).toBeUndefined());
});
