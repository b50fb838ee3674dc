import { describe, expect, it } from "vitest";
import { dstOfNexthopId, nexthopIdFor } from "../src/dataplane/nexthop-id.js";

describe("nexthop ids derived from the route's dst", () => {
  it("gives every (network, prefix length) up to /31 its own non-zero id, which decodes back", () => {
    const dsts = ["10.244.2.0/24", "10.244.2.0/25", "10.244.2.0/23", "10.244.0.0/16", "10.0.0.0/8", "0.0.0.0/0", "255.255.255.254/31", "192.168.255.0/24", "10.244.2.128/25"];
    const ids = dsts.map((d) => nexthopIdFor(d)!);
    expect(new Set(ids).size).toBe(dsts.length);
    for (const [i, d] of dsts.entries()) {
      expect(ids[i]).toBeGreaterThan(0);
      expect(ids[i]).toBeLessThanOrEqual(0xffffffff);
      expect(dstOfNexthopId(ids[i]!)).toBe(d);
    }
    expect(nexthopIdFor("10.244.2.0/24")).toBe(0x0af40280);
  });

  it("gives none to a /32 or to a dst with host bits (they stay plain routes)", () => {
    expect(nexthopIdFor("10.244.2.7/32")).toBeUndefined();
    expect(nexthopIdFor("10.244.2.1/24")).toBeUndefined();
    expect(nexthopIdFor("not a cidr")).toBeUndefined();
  });

  it("decodes any id a kernel may hold to one dst, and refuses what no nexthop id can be", () => {
    for (const id of [1, 2, 3, 0x80000000, 0xffffffff, 183764608]) {
      const dst = dstOfNexthopId(id)!;
      expect(nexthopIdFor(dst)).toBe(id);
    }
    expect(dstOfNexthopId(0)).toBeUndefined();
    expect(dstOfNexthopId(2 ** 32)).toBeUndefined();
    expect(dstOfNexthopId(1.5)).toBeUndefined();
  });
});
