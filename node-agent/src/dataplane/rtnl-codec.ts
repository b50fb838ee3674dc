// rtnetlink messages, encoded and parsed by hand: every request the agent
// sends and every reply or notification it reads goes through this file, so
// there is one encoding path (no library encoders beside it). The hot
// per-peer messages (route, ARP, FDB) are written in place, so a batch puts
// a thousand of them into one Buffer. Layouts follow
// <linux/rtnetlink.h>, <linux/if_link.h> and <linux/neighbour.h>.
import { WeftError } from "../../../lib/src/errors.js";
import type { Address, FdbEntry, Link, LinkChange, LinkSpec, Neighbour, Route, VxlanInfo } from "./dataplane.js";
import { WEFT_RT_PROTO } from "./dataplane.js";

export const NLMSG_HDRLEN = 16;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ACK = 0x4;
export const NLM_F_DUMP_INTR = 0x10;
export const NLM_F_DUMP = 0x300;
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;

export const RTM = {
  NEWLINK: 16, DELLINK: 17, GETLINK: 18, SETLINK: 19,
  NEWADDR: 20, DELADDR: 21, GETADDR: 22,
  NEWROUTE: 24, DELROUTE: 25, GETROUTE: 26,
  NEWNEIGH: 28, DELNEIGH: 29, GETNEIGH: 30,
  NEWNEXTHOP: 104, DELNEXTHOP: 105, GETNEXTHOP: 106,
} as const;

/** rtnetlink multicast groups (numbers for NETLINK_ADD_MEMBERSHIP, not bitmasks). */
export const RTNLGRP = { LINK: 1, NEIGH: 3, IPV4_IFADDR: 5, IPV4_ROUTE: 7, NEXTHOP: 32 } as const;

export const AF_INET = 2;
export const AF_BRIDGE = 7;
const RT_TABLE_MAIN = 254;
const RTN_UNICAST = 1;
const RT_SCOPE_UNIVERSE = 0;
const RT_SCOPE_LINK = 253;
const RT_SCOPE_NOWHERE = 255;
const RTNH_F_ONLINK = 4;
const NUD_PERMANENT = 0x80;
const NTF_SELF = 0x02;
const IFF_UP = 0x1;

const IFLA_ADDRESS = 1;
const IFLA_IFNAME = 3;
const IFLA_MTU = 4;
const IFLA_LINK = 5;
const IFLA_LINKINFO = 18;
const IFLA_IFALIAS = 20;
const IFLA_INFO_KIND = 1;
const IFLA_INFO_DATA = 2;
const IFLA_VXLAN_ID = 1;
const IFLA_VXLAN_LINK = 3;
const IFLA_VXLAN_LOCAL = 4;
const IFLA_VXLAN_LEARNING = 7;
const IFLA_VXLAN_PORT = 15;
const IFLA_VXLAN_GBP = 23;
const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const RTA_DST = 1;
const RTA_OIF = 4;
const RTA_GATEWAY = 5;
const RTA_PRIORITY = 6;
const RTA_TABLE = 15;
const RTA_NH_ID = 30;
const NHA_ID = 1;
const NHA_OIF = 5;
const NHA_GATEWAY = 6;
const NDA_DST = 1;
const NDA_LLADDR = 2;

// ---- writing ----

function badIp(s: string): never {
  throw new WeftError("INTERNAL", `not an IPv4 address: ${s}`);
}

/** Writes dotted-quad `s` at `off`; throws on anything that is not four octets. */
function writeIp4(b: Buffer, off: number, s: string): void {
  let octet = 0, n = 0, digits = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (!digits || n > 2) badIp(s);
      b[off + n++] = octet; octet = 0; digits = 0;
    } else if (c >= 48 && c <= 57 && digits < 3) {
      octet = octet * 10 + (c - 48); digits++;
      if (octet > 255) badIp(s);
    } else badIp(s);
  }
  if (!digits || n !== 3) badIp(s);
  b[off + 3] = octet;
}

const hexVal = (c: number): number => (c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : c >= 65 && c <= 70 ? c - 55 : -1);

/** Writes "aa:bb:cc:dd:ee:ff" at `off`. */
function writeMac(b: Buffer, off: number, s: string): void {
  if (s.length !== 17) throw new WeftError("INTERNAL", `not a MAC address: ${s}`);
  for (let i = 0; i < 6; i++) {
    const hi = hexVal(s.charCodeAt(i * 3)), lo = hexVal(s.charCodeAt(i * 3 + 1));
    if (hi < 0 || lo < 0 || (i < 5 && s.charCodeAt(i * 3 + 2) !== 58)) throw new WeftError("INTERNAL", `not a MAC address: ${s}`);
    b[off + i] = (hi << 4) | lo;
  }
}

/** A zeroed message of `len` bytes with its nlmsghdr; seq is set when sent. */
function message(len: number, type: number, flags: number): Buffer {
  const b = Buffer.alloc(len);
  b.writeUInt32LE(len, 0);
  b.writeUInt16LE(type, 4);
  b.writeUInt16LE(flags | NLM_F_REQUEST, 6);
  return b;
}

function attrHdr(b: Buffer, off: number, len: number, type: number): number {
  b.writeUInt16LE(len, off);
  b.writeUInt16LE(type, off + 2);
  return off + 4;
}

/**
 * Builds variable-length attribute lists (links here, WireGuard's generic netlink messages in
 * kernel-control.ts); rtnetlink's per-peer messages use fixed layouts instead.
 */
export class Attrs {
  private readonly parts: Buffer[] = [];
  /** Bytes so far, padding included. */
  length = 0;

  bytes(type: number, data: Buffer): this {
    if (4 + data.length > 0xffff) throw new WeftError("INVALID_ARGUMENT", `a netlink attribute of ${4 + data.length} bytes does not fit its 16-bit length`);
    const h = Buffer.alloc(4);
    h.writeUInt16LE(4 + data.length, 0);
    h.writeUInt16LE(type, 2);
    const pad = Buffer.alloc((4 - (data.length % 4)) % 4);
    this.parts.push(h, data, pad);
    this.length += h.length + data.length + pad.length;
    return this;
  }

  u8(type: number, v: number): this { return this.bytes(type, Buffer.from([v])); }
  u16(type: number, v: number): this { const d = Buffer.alloc(2); d.writeUInt16LE(v); return this.bytes(type, d); }
  u32(type: number, v: number): this { const d = Buffer.alloc(4); d.writeUInt32LE(v >>> 0); return this.bytes(type, d); }
  be16(type: number, v: number): this { const d = Buffer.alloc(2); d.writeUInt16BE(v); return this.bytes(type, d); }
  flag(type: number): this { return this.bytes(type, Buffer.alloc(0)); }
  str(type: number, s: string): this { return this.bytes(type, Buffer.from(`${s}\0`, "utf8")); }
  ip4(type: number, s: string): this { const d = Buffer.alloc(4); writeIp4(d, 0, s); return this.bytes(type, d); }
  mac(type: number, s: string): this { const d = Buffer.alloc(6); writeMac(d, 0, s); return this.bytes(type, d); }
  /** `type` may carry NLA_F_NESTED where the receiver checks it (generic netlink families do). */
  nest(type: number, inner: Attrs): this { return this.bytes(type, inner.toBuffer()); }
  toBuffer(): Buffer { return Buffer.concat(this.parts); }
}

function linkMessage(type: number, flags: number, index: number, ifFlags: number, ifChange: number, attrs: Attrs | undefined): Buffer {
  const a = attrs?.toBuffer() ?? Buffer.alloc(0);
  const b = message(NLMSG_HDRLEN + 16 + a.length, type, flags);
  b.writeInt32LE(index, NLMSG_HDRLEN + 4);
  b.writeUInt32LE(ifFlags, NLMSG_HDRLEN + 8);
  b.writeUInt32LE(ifChange, NLMSG_HDRLEN + 12);
  a.copy(b, NLMSG_HDRLEN + 16);
  return b;
}

export function encodeGetLink(name: string): Buffer {
  return linkMessage(RTM.GETLINK, NLM_F_ACK, 0, 0, 0, new Attrs().str(IFLA_IFNAME, name));
}

export function encodeNewLink(spec: LinkSpec): Buffer {
  const a = new Attrs().str(IFLA_IFNAME, spec.name).u32(IFLA_MTU, spec.mtu).str(IFLA_IFALIAS, spec.alias);
  if (spec.mac) a.mac(IFLA_ADDRESS, spec.mac);
  const info = new Attrs().str(IFLA_INFO_KIND, spec.kind);
  if (spec.vxlan) {
    const v = spec.vxlan;
    const data = new Attrs().u32(IFLA_VXLAN_ID, v.vni).ip4(IFLA_VXLAN_LOCAL, v.localIP).u32(IFLA_VXLAN_LINK, v.parentIndex)
      .be16(IFLA_VXLAN_PORT, v.port).u8(IFLA_VXLAN_LEARNING, v.learning ? 1 : 0);
    if (v.gbp) data.flag(IFLA_VXLAN_GBP);
    info.nest(IFLA_INFO_DATA, data);
  }
  a.nest(IFLA_LINKINFO, info);
  return linkMessage(RTM.NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, 0, 0, 0, a);
}

export function encodeSetLink(index: number, c: LinkChange): Buffer {
  const a = new Attrs();
  if (c.mtu !== undefined) a.u32(IFLA_MTU, c.mtu);
  if (c.mac !== undefined) a.mac(IFLA_ADDRESS, c.mac);
  if (c.alias !== undefined) a.str(IFLA_IFALIAS, c.alias);
  const up = c.up === undefined ? 0 : IFF_UP;
  return linkMessage(RTM.NEWLINK, NLM_F_ACK, index, c.up ? IFF_UP : 0, up, a);
}

export function encodeDelLink(index: number): Buffer {
  return linkMessage(RTM.DELLINK, NLM_F_ACK, index, 0, 0, undefined);
}

export function encodeAddress(type: number, flags: number, a: Address): Buffer {
  const b = message(NLMSG_HDRLEN + 8 + 16, type, flags | NLM_F_ACK);
  const o = NLMSG_HDRLEN;
  b[o] = AF_INET;
  b[o + 1] = a.prefix;
  b.writeUInt32LE(a.index, o + 4);
  writeIp4(b, attrHdr(b, o + 8, 8, IFA_LOCAL), a.ip);
  writeIp4(b, attrHdr(b, o + 16, 8, IFA_ADDRESS), a.ip);
  return b;
}

/** Writes the nlmsghdr of a request of `len` bytes at `off` (seq is set when sent); the rest must be zero or written. */
function header(b: Buffer, off: number, len: number, type: number, flags: number): void {
  b.writeUInt32LE(len, off);
  b.writeUInt16LE(type, off + 4);
  b.writeUInt16LE(flags | NLM_F_REQUEST, off + 6);
}

/** Bytes of the route message for `r`: by nexthop id `nh` (RTA_NH_ID), or with its own gateway and device. */
export const routeLength = (r: Route, nh?: number): number => NLMSG_HDRLEN + 12 + 8 * (nh !== undefined ? 3 : r.gateway !== undefined ? 4 : 3);
/** Bytes of a deletion of our route to a dst (routeDeletion). */
export const ROUTE_DELETION_LENGTH = NLMSG_HDRLEN + 12 + 16;
/** Bytes of an ARP entry message (RTM_DELNEIGH carries no lladdr). */
export const neighbourLength = (type: number): number => NLMSG_HDRLEN + 12 + 8 + (type === RTM.NEWNEIGH ? 10 : 0);
export const FDB_LENGTH = NLMSG_HDRLEN + 12 + 12 + 8;

/** "10.244.2.0/24" -> [offset of "/", prefix length]; throws on anything else. */
function cidrParts(dst: string): [number, number] {
  const slash = dst.indexOf("/");
  const len = Number(dst.slice(slash + 1));
  if (slash < 0 || !Number.isInteger(len) || len < 0 || len > 32) throw new WeftError("INTERNAL", `not a CIDR: ${dst}`);
  return [slash, len];
}

/**
 * RTM_NEWROUTE / RTM_DELROUTE for one of our routes: main table, protocol
 * WEFT_RT_PROTO, via a gateway (scope universe, onlink if asked) or, without
 * one, straight onto the device (scope link). With `nh`, the gateway and
 * device are those of our nexthop object `nh` instead (the kernel refuses
 * both at once). Written at `off` of a zeroed `b` (a batch writes many
 * messages into one buffer); returns the message length.
 */
export function writeRoute(b: Buffer, off: number, type: number, flags: number, r: Route, nh?: number): number {
  const [slash, len] = cidrParts(r.dst);
  const gw = r.gateway !== undefined;
  const size = routeLength(r, nh);
  header(b, off, size, type, flags);
  let o = off + NLMSG_HDRLEN;
  b[o] = AF_INET; b[o + 1] = len; b[o + 4] = RT_TABLE_MAIN; b[o + 5] = WEFT_RT_PROTO;
  b[o + 6] = gw ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK; b[o + 7] = RTN_UNICAST;
  if (nh === undefined) b.writeUInt32LE(r.onlink ? RTNH_F_ONLINK : 0, o + 8);
  o += 12;
  writeIp4(b, attrHdr(b, o, 8, RTA_DST), r.dst.slice(0, slash)); o += 8;
  if (nh !== undefined) {
    b.writeUInt32LE(nh >>> 0, attrHdr(b, o, 8, RTA_NH_ID)); o += 8;
  } else {
    if (gw) { writeIp4(b, attrHdr(b, o, 8, RTA_GATEWAY), r.gateway!); o += 8; }
    b.writeUInt32LE(r.oif, attrHdr(b, o, 8, RTA_OIF)); o += 8;
  }
  b.writeUInt32LE(RT_TABLE_MAIN, attrHdr(b, o, 8, RTA_TABLE));
  return size;
}

/**
 * RTM_DELROUTE for our route to `dst` in whatever form it has (its own gateway, or a nexthop object):
 * the kernel matches main table, dst and our protocol, and any scope (RT_SCOPE_NOWHERE). Naming the
 * gateway or device would miss a route that uses a nexthop object.
 */
export function writeRouteDeletion(b: Buffer, off: number, flags: number, dst: string): number {
  const [slash, len] = cidrParts(dst);
  header(b, off, ROUTE_DELETION_LENGTH, RTM.DELROUTE, flags);
  let o = off + NLMSG_HDRLEN;
  b[o] = AF_INET; b[o + 1] = len; b[o + 4] = RT_TABLE_MAIN; b[o + 5] = WEFT_RT_PROTO; b[o + 6] = RT_SCOPE_NOWHERE;
  o += 12;
  writeIp4(b, attrHdr(b, o, 8, RTA_DST), dst.slice(0, slash)); o += 8;
  b.writeUInt32LE(RT_TABLE_MAIN, attrHdr(b, o, 8, RTA_TABLE));
  return ROUTE_DELETION_LENGTH;
}

/** Bytes of a nexthop message: a deletion or lookup names the id alone. */
export const nexthopLength = (type: number, r?: Route): number =>
  NLMSG_HDRLEN + 8 + 8 + (type === RTM.NEWNEXTHOP && r ? 8 + (r.gateway !== undefined ? 8 : 0) : 0);

/**
 * RTM_NEWNEXTHOP (our protocol; `r`'s gateway, device and onlink flag) or RTM_DELNEXTHOP /
 * RTM_GETNEXTHOP (the id alone: the kernel refuses any other header field there). Written as writeRoute.
 */
export function writeNexthop(b: Buffer, off: number, type: number, flags: number, id: number, r?: Route): number {
  const add = type === RTM.NEWNEXTHOP && r !== undefined;
  const size = nexthopLength(type, r);
  header(b, off, size, type, flags);
  let o = off + NLMSG_HDRLEN;
  if (add) {
    b[o] = AF_INET; b[o + 2] = WEFT_RT_PROTO;
    // The kernel takes onlink only with a gateway.
    b.writeUInt32LE(r.onlink && r.gateway !== undefined ? RTNH_F_ONLINK : 0, o + 4);
  }
  o += 8;
  b.writeUInt32LE(id >>> 0, attrHdr(b, o, 8, NHA_ID)); o += 8;
  if (add) {
    b.writeUInt32LE(r.oif, attrHdr(b, o, 8, NHA_OIF)); o += 8;
    if (r.gateway !== undefined) writeIp4(b, attrHdr(b, o, 8, NHA_GATEWAY), r.gateway);
  }
  return size;
}

export function encodeNexthop(type: number, flags: number, id: number, r?: Route): Buffer {
  const b = Buffer.alloc(nexthopLength(type, r));
  writeNexthop(b, 0, type, flags | NLM_F_ACK, id, r);
  return b;
}

export function encodeRoute(type: number, flags: number, r: Route, nh?: number): Buffer {
  const b = Buffer.alloc(routeLength(r, nh));
  writeRoute(b, 0, type, flags | NLM_F_ACK, r, nh);
  return b;
}

function ndmsg(b: Buffer, off: number, family: number, index: number, state: number, flags: number): number {
  const o = off + NLMSG_HDRLEN;
  b[o] = family;
  b.writeInt32LE(index, o + 4);
  b.writeUInt16LE(state, o + 8);
  b[o + 10] = flags;
  return o + 12;
}

/** ARP entry: RTM_NEWNEIGH (permanent, dst + lladdr) or RTM_DELNEIGH (dst only); written as writeRoute. */
export function writeNeighbour(b: Buffer, off: number, type: number, flags: number, n: Neighbour): number {
  const add = type === RTM.NEWNEIGH;
  const size = neighbourLength(type);
  header(b, off, size, type, flags);
  let o = ndmsg(b, off, AF_INET, n.index, add ? NUD_PERMANENT : 0, 0);
  writeIp4(b, attrHdr(b, o, 8, NDA_DST), n.ip); o += 8;
  if (add) writeMac(b, attrHdr(b, o, 10, NDA_LLADDR), n.mac);
  return size;
}

export function encodeNeighbour(type: number, flags: number, n: Neighbour): Buffer {
  const b = Buffer.alloc(neighbourLength(type));
  writeNeighbour(b, 0, type, flags | NLM_F_ACK, n);
  return b;
}

/** FDB entry (AF_BRIDGE, NTF_SELF): lladdr + dst; permanent when added; written as writeRoute. */
export function writeFdb(b: Buffer, off: number, type: number, flags: number, e: FdbEntry): number {
  header(b, off, FDB_LENGTH, type, flags);
  let o = ndmsg(b, off, AF_BRIDGE, e.index, type === RTM.NEWNEIGH ? NUD_PERMANENT : 0, NTF_SELF);
  writeMac(b, attrHdr(b, o, 10, NDA_LLADDR), e.mac); o += 12;
  writeIp4(b, attrHdr(b, o, 8, NDA_DST), e.dst);
  return FDB_LENGTH;
}

export function encodeFdb(type: number, flags: number, e: FdbEntry): Buffer {
  const b = Buffer.alloc(FDB_LENGTH);
  writeFdb(b, 0, type, flags | NLM_F_ACK, e);
  return b;
}

/** A dump request: the family-specific header is all zeros except its family byte. */
export function encodeDump(type: number, family: number): Buffer {
  const headerLen = type === RTM.GETLINK ? 16 : type === RTM.GETADDR || type === RTM.GETNEXTHOP ? 8 : 12;
  const b = message(NLMSG_HDRLEN + headerLen, type, NLM_F_DUMP);
  b[NLMSG_HDRLEN] = family;
  return b;
}

// ---- reading ----

/** Calls fn(type, offset, length) for each attribute in b[off..end), type without its flag bits. */
export function eachAttr(b: Buffer, off: number, end: number, fn: (type: number, start: number, len: number) => void): void {
  while (off + 4 <= end) {
    const len = b.readUInt16LE(off);
    if (len < 4 || off + len > end) break;
    fn(b.readUInt16LE(off + 2) & 0x3fff, off + 4, len - 4);
    off += (len + 3) & ~3;
  }
}

const ipAt = (b: Buffer, o: number, len: number): string => (len === 4 ? `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}` : "");
/** "00".."ff": a dump of 10,000 MACs builds no string per byte. */
const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));
const macAt = (b: Buffer, o: number, len: number): string => {
  if (len === 6) return `${HEX[b[o]!]}:${HEX[b[o + 1]!]}:${HEX[b[o + 2]!]}:${HEX[b[o + 3]!]}:${HEX[b[o + 4]!]}:${HEX[b[o + 5]!]}`;
  let s = "";
  for (let i = 0; i < len; i++) s += (i ? ":" : "") + HEX[b[o + i]!];
  return s;
};
const strAt = (b: Buffer, o: number, len: number): string => {
  let end = o + len;
  while (end > o && b[end - 1] === 0) end--;
  return b.toString("utf8", o, end);
};

/** One message in a datagram: its type and flags, and its payload as [start, end) of the datagram. */
export interface RawMessage {
  readonly type: number;
  readonly flags: number;
  readonly seq: number;
  readonly buf: Buffer;
  readonly start: number;
  readonly end: number;
}

/** Splits a datagram into its netlink messages. */
export function splitMessages(buf: Buffer, each: (m: RawMessage) => void): void {
  let off = 0;
  while (off + NLMSG_HDRLEN <= buf.length) {
    const len = buf.readUInt32LE(off);
    if (len < NLMSG_HDRLEN || off + len > buf.length) break;
    each({ type: buf.readUInt16LE(off + 4), flags: buf.readUInt16LE(off + 6), seq: buf.readUInt32LE(off + 8), buf, start: off + NLMSG_HDRLEN, end: off + len });
    off += (len + 3) & ~3;
  }
}

export function parseLink(m: RawMessage): Link | undefined {
  const { buf: b, start, end } = m;
  if (end - start < 16) return undefined;
  const index = b.readInt32LE(start + 4);
  const flags = b.readUInt32LE(start + 8);
  let name = "", mac = "", mtu = 0, alias: string | undefined, kind: string | undefined, parentIndex: number | undefined;
  let infoStart = -1, infoLen = 0;
  eachAttr(b, start + 16, end, (t, o, len) => {
    if (t === IFLA_IFNAME) name = strAt(b, o, len);
    else if (t === IFLA_ADDRESS) mac = macAt(b, o, len);
    else if (t === IFLA_MTU && len >= 4) mtu = b.readUInt32LE(o);
    else if (t === IFLA_LINK && len >= 4) parentIndex = b.readUInt32LE(o);
    else if (t === IFLA_IFALIAS) alias = strAt(b, o, len);
    else if (t === IFLA_LINKINFO) { infoStart = o; infoLen = len; }
  });
  let vxlan: VxlanInfo | undefined;
  if (infoStart >= 0) {
    let dataStart = -1, dataLen = 0;
    eachAttr(b, infoStart, infoStart + infoLen, (t, o, len) => {
      if (t === IFLA_INFO_KIND) kind = strAt(b, o, len);
      else if (t === IFLA_INFO_DATA) { dataStart = o; dataLen = len; }
    });
    if (kind === "vxlan" && dataStart >= 0) {
      const v = { vni: 0, localIP: "", parentIndex: 0, port: 0, learning: false, gbp: false };
      eachAttr(b, dataStart, dataStart + dataLen, (t, o, len) => {
        if (t === IFLA_VXLAN_ID && len >= 4) v.vni = b.readUInt32LE(o);
        else if (t === IFLA_VXLAN_LOCAL) v.localIP = ipAt(b, o, len);
        else if (t === IFLA_VXLAN_LINK && len >= 4) v.parentIndex = b.readUInt32LE(o);
        else if (t === IFLA_VXLAN_PORT && len >= 2) v.port = b.readUInt16BE(o);
        else if (t === IFLA_VXLAN_LEARNING && len >= 1) v.learning = b[o] !== 0;
        else if (t === IFLA_VXLAN_GBP) v.gbp = true;
      });
      vxlan = v;
    }
  }
  return {
    index, name, mac, mtu, up: (flags & IFF_UP) !== 0, kind,
    ...(alias ? { alias } : {}), ...(parentIndex !== undefined ? { parentIndex } : {}), ...(vxlan ? { vxlan } : {}),
  };
}

export function parseAddress(m: RawMessage): Address | undefined {
  const { buf: b, start, end } = m;
  if (end - start < 8 || b[start] !== AF_INET) return undefined;
  let local = "", address = "";
  eachAttr(b, start + 8, end, (t, o, len) => {
    if (t === IFA_LOCAL) local = ipAt(b, o, len);
    else if (t === IFA_ADDRESS) address = ipAt(b, o, len);
  });
  const ip = local || address;
  return ip ? { index: b.readUInt32LE(start + 4), ip, prefix: b[start + 1]! } : undefined;
}

export interface ParsedRoute {
  readonly route: Route;
  readonly table: number;
  readonly protocol: number;
  readonly priority: number;
  /** RTA_NH_ID: the nexthop object the route uses (its gateway and device are in `route` too). */
  readonly nh?: number;
}

/** An IPv4 route (any table and protocol); undefined for other families. */
export function parseRoute(m: RawMessage): ParsedRoute | undefined {
  const { buf: b, start, end } = m;
  if (end - start < 12 || b[start] !== AF_INET) return undefined;
  const dstLen = b[start + 1]!;
  let table = b[start + 4]!;
  const protocol = b[start + 5]!;
  const onlink = (b.readUInt32LE(start + 8) & RTNH_F_ONLINK) !== 0;
  let dst = "0.0.0.0", gateway: string | undefined, oif = 0, priority = 0, nh: number | undefined;
  eachAttr(b, start + 12, end, (t, o, len) => {
    if (t === RTA_DST) dst = ipAt(b, o, len);
    else if (t === RTA_NH_ID && len >= 4) nh = b.readUInt32LE(o);
    else if (t === RTA_GATEWAY) gateway = ipAt(b, o, len);
    else if (t === RTA_OIF && len >= 4) oif = b.readUInt32LE(o);
    else if (t === RTA_TABLE && len >= 4) table = b.readUInt32LE(o);
    else if (t === RTA_PRIORITY && len >= 4) priority = b.readUInt32LE(o);
  });
  const route: Route = gateway !== undefined ? { dst: `${dst}/${dstLen}`, gateway, oif, onlink } : { dst: `${dst}/${dstLen}`, oif, onlink };
  return nh === undefined ? { route, table, protocol, priority } : { route, table, protocol, priority, nh };
}

export function isOurRoute(p: ParsedRoute): boolean {
  return p.table === RT_TABLE_MAIN && p.protocol === WEFT_RT_PROTO;
}

/** Our protocol in the main table, read from the rtmsg header alone (RTA_TABLE only matters above 255). */
export function isOurRouteHeader(m: RawMessage): boolean {
  return m.end - m.start >= 12 && m.buf[m.start] === AF_INET && m.buf[m.start + 4] === RT_TABLE_MAIN && m.buf[m.start + 5] === WEFT_RT_PROTO;
}

/** RTA_NH_ID of one of our routes, read without parsing the rest; undefined for others' routes and plain ones. */
export function ourRouteNexthopId(m: RawMessage): number | undefined {
  if (m.type !== RTM.NEWROUTE || !isOurRouteHeader(m)) return undefined;
  let nh: number | undefined;
  eachAttr(m.buf, m.start + 12, m.end, (t, o, len) => { if (t === RTA_NH_ID && len >= 4) nh = m.buf.readUInt32LE(o); });
  return nh;
}

export function isMainTable(p: ParsedRoute): boolean {
  return p.table === RT_TABLE_MAIN;
}

export interface ParsedNexthop {
  readonly id: number;
  readonly protocol: number;
  readonly oif: number;
  readonly gateway?: string;
  readonly onlink: boolean;
}

/** An IPv4 nexthop object (RTM_NEWNEXTHOP / RTM_DELNEXTHOP); undefined for groups and other families. */
export function parseNexthop(m: RawMessage): ParsedNexthop | undefined {
  const { buf: b, start, end } = m;
  if (end - start < 8 || b[start] !== AF_INET) return undefined;
  let id = 0, oif = 0, gateway: string | undefined;
  eachAttr(b, start + 8, end, (t, o, len) => {
    if (t === NHA_ID && len >= 4) id = b.readUInt32LE(o);
    else if (t === NHA_OIF && len >= 4) oif = b.readUInt32LE(o);
    else if (t === NHA_GATEWAY) gateway = ipAt(b, o, len);
  });
  if (!id) return undefined;
  const onlink = (b.readUInt32LE(start + 4) & RTNH_F_ONLINK) !== 0;
  return gateway === undefined ? { id, protocol: b[start + 2]!, oif, onlink } : { id, protocol: b[start + 2]!, oif, gateway, onlink };
}

/** The id of one of our nexthop objects, read without parsing anything else; undefined for others'. */
export function ourNexthopId(m: RawMessage): number | undefined {
  if (m.end - m.start < 8 || m.buf[m.start + 2] !== WEFT_RT_PROTO) return undefined;
  let id: number | undefined;
  eachAttr(m.buf, m.start + 8, m.end, (t, o, len) => { if (t === NHA_ID && len >= 4) id = m.buf.readUInt32LE(o); });
  return id;
}

export interface ParsedNeighbour {
  readonly family: number;
  readonly index: number;
  readonly permanent: boolean;
  /** NDA_DST: the IP (ARP) or the remote VTEP (FDB). */
  readonly dst: string;
  readonly lladdr: string;
}

export function parseNeighbour(m: RawMessage): ParsedNeighbour | undefined {
  const { buf: b, start, end } = m;
  if (end - start < 12) return undefined;
  let dst = "", lladdr = "";
  eachAttr(b, start + 12, end, (t, o, len) => {
    if (t === NDA_DST) dst = ipAt(b, o, len);
    else if (t === NDA_LLADDR) lladdr = macAt(b, o, len);
  });
  return { family: b[start]!, index: b.readInt32LE(start + 4), permanent: (b.readUInt16LE(start + 8) & NUD_PERMANENT) !== 0, dst, lladdr };
}

/** The family and ifindex of a neighbour message, read without parsing attributes (notification filter). */
export function neighbourHeader(m: RawMessage): { family: number; index: number } | undefined {
  return m.end - m.start < 12 ? undefined : { family: m.buf[m.start]!, index: m.buf.readInt32LE(m.start + 4) };
}

/** The errno (positive) of an NLMSG_ERROR or NLMSG_DONE payload; 0 for an ACK or a clean DONE. */
export function errnoOf(m: RawMessage): number {
  return m.end - m.start >= 4 ? -m.buf.readInt32LE(m.start) : 0;
}
