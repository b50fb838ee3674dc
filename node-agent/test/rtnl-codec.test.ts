// The hand-encoded requests must carry exactly the bytes the netlink library's
// own formatters produce for the same objects (header fields aside), and the
// parsers must read back what the encoders wrote.
import { describe, expect, it } from "vitest";
import { AttrStream, rt } from "netlink";
import { WEFT_RT_PROTO } from "../src/dataplane/dataplane.js";
import {
  encodeAddress, encodeFdb, encodeNeighbour, encodeNewLink, encodeRoute, encodeSetLink, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE,
  parseAddress, parseLink, parseNeighbour, parseRoute, RTM, splitMessages, type RawMessage,
} from "../src/dataplane/rtnl-codec.js";

const ip4 = (s: string) => Buffer.from(s.split(".").map(Number));
const mac = (s: string) => Buffer.from(s.split(":").map((h) => parseInt(h, 16)));
const lib = <M>(fmt: (m: M, s: AttrStream) => void, m: M) => {
  const st = new AttrStream();
  fmt(m, st);
  return Buffer.concat(st.bufs).toString("hex");
};
const body = (b: Buffer) => b.subarray(16).toString("hex");
const hdr = (b: Buffer) => ({ len: b.readUInt32LE(0), type: b.readUInt16LE(4), flags: b.readUInt16LE(6) });
const CREATE_EXCL = NLM_F_CREATE | NLM_F_EXCL;
const CREATE_REPLACE = NLM_F_CREATE | NLM_F_REPLACE;
const REQ_ACK = 1 | NLM_F_ACK;

/** The kernel's echo of a request: the same message, read back as one datagram. */
function asReply(b: Buffer): RawMessage {
  let m: RawMessage | undefined;
  splitMessages(b, (x) => (m = x));
  return m!;
}

describe("rtnetlink codec", () => {
  it("routes match rt.formatRouteMessage and parse back", () => {
    for (const r of [
      { dst: "10.244.5.0/24", gateway: "10.244.5.0", oif: 7, onlink: true },
      { dst: "10.255.255.0/24", gateway: "10.255.255.0", oif: 65536, onlink: false },
      { dst: "0.0.0.0/0", gateway: "192.0.2.1", oif: 2, onlink: true },
    ]) {
      const [dst, len] = r.dst.split("/");
      const want = lib(rt.formatRouteMessage, { kind: "route", data: {
        family: 2, dstLen: Number(len), table: 254, protocol: WEFT_RT_PROTO as rt.RouteProtocol, scope: "UNIVERSE", type: "UNICAST",
        flags: r.onlink ? { __unknown: 4 } : {} }, attrs: { dst: ip4(dst!), gateway: ip4(r.gateway), oif: r.oif, table: 254 } } as rt.RouteMessage);
      const add = encodeRoute(RTM.NEWROUTE, CREATE_EXCL, r);
      expect(body(add)).toBe(want);
      expect(hdr(add)).toEqual({ len: add.length, type: 24, flags: CREATE_EXCL | REQ_ACK });
      const del = encodeRoute(RTM.DELROUTE, 0, r);
      expect(body(del)).toBe(want);
      expect(hdr(del)).toEqual({ len: del.length, type: 25, flags: REQ_ACK });
      expect(parseRoute(asReply(add))).toEqual({ route: r, table: 254, protocol: WEFT_RT_PROTO, priority: 0 });
    }
  });

  it("routes without a gateway go straight onto the device (scope link)", () => {
    const r = { dst: "10.244.0.0/16", oif: 9, onlink: false };
    const b = encodeRoute(RTM.NEWROUTE, CREATE_REPLACE, r);
    expect(body(b)).toBe(lib(rt.formatRouteMessage, { kind: "route", data: {
      family: 2, dstLen: 16, table: 254, protocol: WEFT_RT_PROTO as rt.RouteProtocol, scope: "LINK", type: "UNICAST", flags: {} },
      attrs: { dst: ip4("10.244.0.0"), oif: 9, table: 254 } } as rt.RouteMessage));
    expect(parseRoute(asReply(b))!.route).toEqual(r);
  });

  it("ARP entries match rt.formatNeighborMessage and parse back", () => {
    const n = { index: 9, ip: "10.1.2.0", mac: "0e:BE:00:0a:ff:02" };
    const add = encodeNeighbour(RTM.NEWNEIGH, CREATE_REPLACE, n);
    expect(body(add)).toBe(lib(rt.formatNeighborMessage, { kind: "neighbor", data: { family: 2, ifindex: 9, state: { permanent: true } }, attrs: { dst: ip4(n.ip), lladdr: mac(n.mac) } } as rt.NeighborMessage));
    expect(hdr(add)).toEqual({ len: add.length, type: 28, flags: CREATE_REPLACE | REQ_ACK });
    expect(parseNeighbour(asReply(add))).toEqual({ family: 2, index: 9, permanent: true, dst: "10.1.2.0", lladdr: "0e:be:00:0a:ff:02" });
    const del = encodeNeighbour(RTM.DELNEIGH, 0, n);
    expect(body(del)).toBe(lib(rt.formatNeighborMessage, { kind: "neighbor", data: { family: 2, ifindex: 9 }, attrs: { dst: ip4(n.ip) } } as rt.NeighborMessage));
    expect(hdr(del)).toEqual({ len: del.length, type: 29, flags: REQ_ACK });
  });

  it("FDB entries match rt.formatNeighborMessage and parse back", () => {
    const e = { index: 9, mac: "0e:be:00:00:01:02", dst: "198.19.0.1" };
    const add = encodeFdb(RTM.NEWNEIGH, CREATE_REPLACE, e);
    expect(body(add)).toBe(lib(rt.formatNeighborMessage, { kind: "neighbor", data: { family: 7, ifindex: 9, state: { permanent: true }, flags: { self: true } }, attrs: { lladdr: mac(e.mac), dst: ip4(e.dst) } } as rt.NeighborMessage));
    expect(parseNeighbour(asReply(add))).toEqual({ family: 7, index: 9, permanent: true, dst: "198.19.0.1", lladdr: "0e:be:00:00:01:02" });
    const del = encodeFdb(RTM.DELNEIGH, 0, e);
    expect(body(del)).toBe(lib(rt.formatNeighborMessage, { kind: "neighbor", data: { family: 7, ifindex: 9, flags: { self: true } }, attrs: { lladdr: mac(e.mac), dst: ip4(e.dst) } } as rt.NeighborMessage));
  });

  it("links and addresses round-trip", () => {
    const spec = { name: "weft.1", kind: "vxlan", mtu: 1450, mac: "0e:00:00:00:01:01", alias: "weft:vxlan",
      vxlan: { vni: 7, localIP: "198.18.0.1", parentIndex: 3, port: 8472, learning: false, gbp: true } };
    const b = encodeNewLink(spec);
    expect(hdr(b)).toEqual({ len: b.length, type: 16, flags: CREATE_EXCL | REQ_ACK });
    expect(parseLink(asReply(b))).toEqual({ index: 0, name: "weft.1", mac: "0e:00:00:00:01:01", mtu: 1450, up: false, kind: "vxlan", alias: "weft:vxlan", vxlan: spec.vxlan });
    const set = encodeSetLink(5, { up: true, mtu: 1400 });
    expect(parseLink(asReply(set))).toMatchObject({ index: 5, mtu: 1400, up: true });
    expect(set.readUInt32LE(16 + 12)).toBe(1); // ifi_change: only IFF_UP is touched
    expect(encodeSetLink(5, { mtu: 1400 }).readUInt32LE(16 + 12)).toBe(0);
    const a = { index: 4, ip: "10.244.1.0", prefix: 32 };
    expect(parseAddress(asReply(encodeAddress(RTM.NEWADDR, CREATE_EXCL, a)))).toEqual(a);
  });

  it("rejects malformed addresses instead of sending garbage", () => {
    expect(() => encodeNeighbour(RTM.NEWNEIGH, 0, { index: 1, ip: "10.1.2", mac: "0e:be:00:00:01:02" })).toThrow(/IPv4/);
    expect(() => encodeNeighbour(RTM.NEWNEIGH, 0, { index: 1, ip: "10.1.2.256", mac: "0e:be:00:00:01:02" })).toThrow(/IPv4/);
    expect(() => encodeFdb(RTM.NEWNEIGH, 0, { index: 1, mac: "0e:be:00:00:01", dst: "1.2.3.4" })).toThrow(/MAC/);
    expect(() => encodeRoute(RTM.NEWROUTE, 0, { dst: "10.0.0.0/33", gateway: "10.0.0.0", oif: 1, onlink: true })).toThrow(/CIDR/);
  });

  it("splits a datagram into its messages and stops at a truncated one", () => {
    const a = encodeFdb(RTM.NEWNEIGH, 0, { index: 1, mac: "0e:be:00:00:01:02", dst: "1.2.3.4" });
    const b = encodeNeighbour(RTM.NEWNEIGH, 0, { index: 2, ip: "10.0.0.1", mac: "0e:be:00:00:01:03" });
    const seen: number[] = [];
    splitMessages(Buffer.concat([a, b, b.subarray(0, 20)]), (m) => seen.push(m.type));
    expect(seen).toEqual([28, 28]);
  });
});
