// The hand-encoded per-peer requests must carry exactly the bytes the netlink
// library would have sent for the same objects (header fields aside).
import { describe, expect, it } from "vitest";
import { AttrStream, FlagsNew, rt } from "netlink";
import { encodeFdb, encodeNeighbour, encodeRoute, RequestTypes as T } from "../src/dataplane/netlink-dataplane.js";
import { WEFT_RT_PROTO } from "../src/dataplane/dataplane.js";

const ip4 = (s: string) => Buffer.from(s.split(".").map(Number));
const mac = (s: string) => Buffer.from(s.split(":").map((h) => parseInt(h, 16)));
const lib = <M>(fmt: (m: M, s: AttrStream) => void, m: M) => {
  const st = new AttrStream();
  fmt(m, st);
  return Buffer.concat(st.bufs).toString("hex");
};
const body = (b: Buffer) => b.subarray(16).toString("hex");
const hdr = (b: Buffer) => ({ len: b.readUInt32LE(0), type: b.readUInt16LE(4), flags: b.readUInt16LE(6) });
const CREATE_EXCL = FlagsNew.CREATE | FlagsNew.EXCL;
const CREATE_REPLACE = FlagsNew.CREATE | FlagsNew.REPLACE;

describe("hand-encoded rtnetlink requests", () => {
  it("routes match rt.formatRouteMessage", () => {
    for (const r of [
      { dst: "10.244.5.0/24", gateway: "10.244.5.0", oif: 7, onlink: true },
      { dst: "10.255.255.0/24", gateway: "10.255.255.0", oif: 65536, onlink: false },
      { dst: "0.0.0.0/0", gateway: "192.0.2.1", oif: 2, onlink: true },
    ]) {
      const [dst, len] = r.dst.split("/");
      const want = lib(rt.formatRouteMessage, { kind: "route", data: {
        family: 2, dstLen: Number(len), table: 254, protocol: WEFT_RT_PROTO as rt.RouteProtocol, scope: "UNIVERSE", type: "UNICAST",
        flags: r.onlink ? { __unknown: 4 } : {} }, attrs: { dst: ip4(dst!), gateway: ip4(r.gateway), oif: r.oif, table: 254 } } as rt.RouteMessage);
      const add = encodeRoute(T.RTM_NEWROUTE, CREATE_EXCL, r);
      expect(body(add)).toBe(want);
      expect(hdr(add)).toEqual({ len: add.length, type: 24, flags: CREATE_EXCL | 1 | 4 });
      const del = encodeRoute(T.RTM_DELROUTE, 0, r);
      expect(body(del)).toBe(want);
      expect(hdr(del)).toEqual({ len: del.length, type: 25, flags: 5 });
    }
  });

  it("ARP entries match rt.formatNeighborMessage", () => {
    const n = { index: 9, ip: "10.1.2.0", mac: "0e:BE:00:0a:ff:02" };
    const add = encodeNeighbour(T.RTM_NEWNEIGH, CREATE_REPLACE, n);
    expect(body(add)).toBe(lib(rt.formatNeighborMessage, { kind: "neighbor", data: { family: 2, ifindex: 9, state: { permanent: true } }, attrs: { dst: ip4(n.ip), lladdr: mac(n.mac) } } as rt.NeighborMessage));
    expect(hdr(add)).toEqual({ len: add.length, type: 28, flags: CREATE_REPLACE | 5 });
    const del = encodeNeighbour(T.RTM_DELNEIGH, 0, n);
    expect(body(del)).toBe(lib(rt.formatNeighborMessage, { kind: "neighbor", data: { family: 2, ifindex: 9 }, attrs: { dst: ip4(n.ip) } } as rt.NeighborMessage));
    expect(hdr(del)).toEqual({ len: del.length, type: 29, flags: 5 });
  });

  it("FDB entries match rt.formatNeighborMessage", () => {
    const e = { index: 9, mac: "0e:be:00:00:01:02", dst: "198.19.0.1" };
    const add = encodeFdb(T.RTM_NEWNEIGH, CREATE_REPLACE, e);
    expect(body(add)).toBe(lib(rt.formatNeighborMessage, { kind: "neighbor", data: { family: 7, ifindex: 9, state: { permanent: true }, flags: { self: true } }, attrs: { lladdr: mac(e.mac), dst: ip4(e.dst) } } as rt.NeighborMessage));
    const del = encodeFdb(T.RTM_DELNEIGH, 0, e);
    expect(body(del)).toBe(lib(rt.formatNeighborMessage, { kind: "neighbor", data: { family: 7, ifindex: 9, flags: { self: true } }, attrs: { lladdr: mac(e.mac), dst: ip4(e.dst) } } as rt.NeighborMessage));
    expect(hdr(del)).toEqual({ len: del.length, type: 29, flags: 5 });
  });

  it("rejects malformed addresses instead of sending garbage", () => {
    expect(() => encodeNeighbour(T.RTM_NEWNEIGH, 0, { index: 1, ip: "10.1.2", mac: "0e:be:00:00:01:02" })).toThrow(/IPv4/);
    expect(() => encodeNeighbour(T.RTM_NEWNEIGH, 0, { index: 1, ip: "10.1.2.256", mac: "0e:be:00:00:01:02" })).toThrow(/IPv4/);
    expect(() => encodeFdb(T.RTM_NEWNEIGH, 0, { index: 1, mac: "0e:be:00:00:01", dst: "1.2.3.4" })).toThrow(/MAC/);
    expect(() => encodeRoute(T.RTM_NEWROUTE, 0, { dst: "10.0.0.0/33", gateway: "10.0.0.0", oif: 1, onlink: true })).toThrow(/CIDR/);
  });
});
