// In-kernel WireGuard over generic netlink (<linux/wireguard.h>). Messages are
// encoded and parsed here by hand, as rtnl-codec.ts does for rtnetlink: the
// `netlink` package's WireGuard structs cannot talk to the kernel (they number
// the commands from 1 where the kernel starts at 0, expect peers numbered from
// 1 where the kernel numbers every nest 0, and write nests without
// NLA_F_NESTED, which the kernel's strict parsing rejects). The package
// supplies only the raw socket, through NetlinkChannel.
//
// A big set is sent as several SET_DEVICE messages, like wg(8) does: each one
// runs under the RTNL lock, which the agent's route and link changes wait on
// too, so each is kept short. The set is therefore not atomic; a failure
// part-way leaves the earlier messages applied, and the caller's next pass
// reads the device again.
import { isIPv4, SocketAddress } from "node:net";
import { constants } from "node:os";
import { RawNetlinkSocket } from "netlink/dist/raw.js";
import { WeftError } from "../../../lib/src/errors.js";
import { errnoName, NetlinkChannel, NetlinkError, RECV_BUFFER, type RawSocket } from "../dataplane/netlink-channel.js";
import { Attrs, eachAttr, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_HDRLEN, type RawMessage } from "../dataplane/rtnl-codec.js";
import type { WgControl, WgDeviceSet, WgDeviceStatus, WgPeerOp, WgPeerStatus } from "./control.js";
import { isKey } from "./keys.js";

const NETLINK_GENERIC = 16;
const GENL_HDRLEN = 4;
const GENL_ID_CTRL = 0x10;
const CTRL_VERSION = 1;
const CTRL_CMD_GETFAMILY = 3;
const CTRL_ATTR_FAMILY_ID = 1;
const CTRL_ATTR_FAMILY_NAME = 2;

const WG_GENL_NAME = "wireguard";
const WG_GENL_VERSION = 1;
const WG_CMD_GET_DEVICE = 0;
const WG_CMD_SET_DEVICE = 1;
const WGDEVICE_A_IFNAME = 2;
const WGDEVICE_A_PRIVATE_KEY = 3;
const WGDEVICE_A_PUBLIC_KEY = 4;
const WGDEVICE_A_LISTEN_PORT = 6;
const WGDEVICE_A_PEERS = 8;
const WGPEER_A_PUBLIC_KEY = 1;
const WGPEER_A_PRESHARED_KEY = 2;
const WGPEER_A_FLAGS = 3;
const WGPEER_A_ENDPOINT = 4;
const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL = 5;
const WGPEER_A_LAST_HANDSHAKE_TIME = 6;
const WGPEER_A_RX_BYTES = 7;
const WGPEER_A_TX_BYTES = 8;
const WGPEER_A_ALLOWEDIPS = 9;
const WGPEER_F_REMOVE_ME = 1;
const WGPEER_F_REPLACE_ALLOWEDIPS = 2;
const WGALLOWEDIP_A_FAMILY = 1;
const WGALLOWEDIP_A_IPADDR = 2;
const WGALLOWEDIP_A_CIDR_MASK = 3;

/** WireGuard's nests must carry it: the kernel parses them strictly. */
const NLA_F_NESTED = 0x8000;
const AF_INET = 2;
const AF_INET6 = 10;
const KEY_LEN = 32;
const MAX_PEERS_PER_SET = 64;
const MAX_SET_BYTES = 32 << 10;

// ---- writing ----

/** nlmsghdr + genlmsghdr + attributes; seq is set when sent. */
function genlMessage(family: number, flags: number, cmd: number, version: number, attrs: Attrs): Buffer {
  const b = Buffer.alloc(NLMSG_HDRLEN + GENL_HDRLEN + attrs.length);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt16LE(family, 4);
  b.writeUInt16LE(flags | NLM_F_REQUEST, 6);
  b[NLMSG_HDRLEN] = cmd;
  b[NLMSG_HDRLEN + 1] = version;
  attrs.toBuffer().copy(b, NLMSG_HDRLEN + GENL_HDRLEN);
  return b;
}

const invalid = (device: string, what: string): WeftError => new WeftError("INVALID_ARGUMENT", `wireguard ${device}: ${what}`);

/** The 32 bytes of a base64 key; `what` names it, since a private key must not appear in the message. */
function keyBytes(device: string, key: string, what: string): Buffer {
  if (!isKey(key)) throw invalid(device, `${what} is not a base64 32-byte key`);
  return Buffer.from(key, "base64");
}

function ip4Bytes(ip: string): Buffer {
  return Buffer.from(ip.split(".").map(Number));
}

/** struct sockaddr_in for "a.b.c.d:port". */
function sockaddrIn(device: string, endpoint: string): Buffer {
  const m = /^(.+):(\d{1,5})$/.exec(endpoint);
  if (!m || !isIPv4(m[1]!) || Number(m[2]) > 0xffff) throw invalid(device, `endpoint "${endpoint}" is not IPv4 address:port`);
  const b = Buffer.alloc(16);
  b.writeUInt16LE(AF_INET, 0);
  b.writeUInt16BE(Number(m[2]), 2);
  ip4Bytes(m[1]!).copy(b, 4);
  return b;
}

function allowedIp(device: string, cidr: string): Attrs {
  const m = /^(.+)\/(\d{1,2})$/.exec(cidr);
  if (!m || !isIPv4(m[1]!) || Number(m[2]) > 32) throw invalid(device, `allowed IP "${cidr}" is not an IPv4 CIDR`);
  return new Attrs().u16(WGALLOWEDIP_A_FAMILY, AF_INET).bytes(WGALLOWEDIP_A_IPADDR, ip4Bytes(m[1]!)).u8(WGALLOWEDIP_A_CIDR_MASK, Number(m[2]));
}

function peerAttrs(device: string, op: WgPeerOp): Attrs {
  if (op.op === "remove") {
    return new Attrs().bytes(WGPEER_A_PUBLIC_KEY, keyBytes(device, op.publicKey, `peer public key "${op.publicKey}"`)).u32(WGPEER_A_FLAGS, WGPEER_F_REMOVE_ME);
  }
  const p = op.peer;
  const ips = new Attrs();
  for (const cidr of p.allowedIPs) ips.nest(NLA_F_NESTED, allowedIp(device, cidr));
  const a = new Attrs()
    .bytes(WGPEER_A_PUBLIC_KEY, keyBytes(device, p.publicKey, `peer public key "${p.publicKey}"`))
    .u32(WGPEER_A_FLAGS, WGPEER_F_REPLACE_ALLOWEDIPS)
    // Zeros clear a pre-shared key the configuration no longer has.
    .bytes(WGPEER_A_PRESHARED_KEY, p.presharedKey ? keyBytes(device, p.presharedKey, `preshared key of peer ${p.publicKey}`) : Buffer.alloc(KEY_LEN))
    .u16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, p.keepalive);
  if (p.endpoint) a.bytes(WGPEER_A_ENDPOINT, sockaddrIn(device, p.endpoint));
  return a.nest(WGPEER_A_ALLOWEDIPS | NLA_F_NESTED, ips);
}

/**
 * SET_DEVICE messages for `s`, in order: the peers in slices of at most
 * MAX_PEERS_PER_SET peers and about MAX_SET_BYTES, device attributes in the
 * first. Everything is encoded before anything is sent, so bad input changes nothing.
 */
function encodeSet(family: number, device: string, s: WgDeviceSet): Buffer[] {
  const messages: Buffer[] = [];
  let attrs = new Attrs().str(WGDEVICE_A_IFNAME, device);
  if (s.privateKey !== undefined) attrs.bytes(WGDEVICE_A_PRIVATE_KEY, keyBytes(device, s.privateKey, "private key"));
  if (s.listenPort !== undefined) attrs.u16(WGDEVICE_A_LISTEN_PORT, s.listenPort);
  let peers = new Attrs();
  let count = 0;
  const flush = () => {
    if (count) attrs.nest(WGDEVICE_A_PEERS | NLA_F_NESTED, peers);
    messages.push(genlMessage(family, NLM_F_ACK, WG_CMD_SET_DEVICE, WG_GENL_VERSION, attrs));
    attrs = new Attrs().str(WGDEVICE_A_IFNAME, device);
    peers = new Attrs();
    count = 0;
  };
  for (const op of s.peers ?? []) {
    const peer = peerAttrs(device, op);
    if (count && (count === MAX_PEERS_PER_SET || attrs.length + peers.length + peer.length > MAX_SET_BYTES)) flush();
    peers.nest(NLA_F_NESTED, peer);
    count++;
  }
  if (count || !messages.length) flush();
  return messages;
}

// ---- reading ----

/** A key, or undefined for an absent or all-zero one (no key set). */
function keyAt(b: Buffer, o: number, len: number): string | undefined {
  const k = b.subarray(o, o + len);
  return len === KEY_LEN && k.some((x) => x !== 0) ? k.toString("base64") : undefined;
}

/** struct sockaddr_in or sockaddr_in6 as "a.b.c.d:port" or "[v6]:port". */
function endpointAt(b: Buffer, o: number, len: number): string {
  if (len < 16) return "";
  const family = b.readUInt16LE(o);
  const port = b.readUInt16BE(o + 2);
  if (family === AF_INET) return `${b[o + 4]}.${b[o + 5]}.${b[o + 6]}.${b[o + 7]}:${port}`;
  if (family !== AF_INET6 || len < 28) return "";
  const groups = Array.from({ length: 8 }, (_, i) => b.readUInt16BE(o + 8 + 2 * i).toString(16));
  return `[${new SocketAddress({ address: groups.join(":"), family: "ipv6" }).address}]:${port}`;
}

type PeerDraft = { -readonly [K in keyof WgPeerStatus]: WgPeerStatus[K] } & { allowedIPs: string[] };

/**
 * One peer nest into `peers`. A peer whose allowed IPs did not fit one message
 * continues in the next, as a nest with only its public key and the rest of its
 * allowed IPs; keyed by public key, the parts merge.
 */
function readPeer(b: Buffer, start: number, end: number, peers: Map<string, PeerDraft>): void {
  let publicKey: string | undefined;
  const fields: Partial<PeerDraft> = {};
  const ips: string[] = [];
  eachAttr(b, start, end, (t, o, len) => {
    if (t === WGPEER_A_PUBLIC_KEY) publicKey = keyAt(b, o, len);
    else if (t === WGPEER_A_PRESHARED_KEY) {
      const k = keyAt(b, o, len);
      if (k) fields.presharedKey = k;
    } else if (t === WGPEER_A_ENDPOINT) fields.endpoint = endpointAt(b, o, len);
    else if (t === WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL && len >= 2) fields.keepalive = b.readUInt16LE(o);
    else if (t === WGPEER_A_LAST_HANDSHAKE_TIME && len >= 16) fields.lastHandshakeMs = Number(b.readBigInt64LE(o)) * 1000 + Math.floor(Number(b.readBigInt64LE(o + 8)) / 1e6);
    else if (t === WGPEER_A_RX_BYTES && len >= 8) fields.rxBytes = Number(b.readBigUInt64LE(o));
    else if (t === WGPEER_A_TX_BYTES && len >= 8) fields.txBytes = Number(b.readBigUInt64LE(o));
    else if (t === WGPEER_A_ALLOWEDIPS) {
      eachAttr(b, o, o + len, (_t, io, ilen) => {
        let family = 0, ip = "", cidr = 0;
        eachAttr(b, io, io + ilen, (at, ao, alen) => {
          if (at === WGALLOWEDIP_A_FAMILY && alen >= 2) family = b.readUInt16LE(ao);
          else if (at === WGALLOWEDIP_A_IPADDR && alen === 4) ip = `${b[ao]}.${b[ao + 1]}.${b[ao + 2]}.${b[ao + 3]}`;
          else if (at === WGALLOWEDIP_A_CIDR_MASK && alen >= 1) cidr = b[ao]!;
        });
        if (family === AF_INET && ip) ips.push(`${ip}/${cidr}`);
      });
    }
  });
  if (!publicKey) return;
  let p = peers.get(publicKey);
  if (!p) {
    p = { publicKey, endpoint: "", allowedIPs: [], keepalive: 0, lastHandshakeMs: 0, rxBytes: 0, txBytes: 0 };
    peers.set(publicKey, p);
  }
  Object.assign(p, fields);
  p.allowedIPs.push(...ips);
}

/** The messages of a GET_DEVICE dump as one device. */
function parseDevice(replies: readonly RawMessage[]): WgDeviceStatus {
  let publicKey: string | undefined;
  let listenPort = 0;
  const peers = new Map<string, PeerDraft>();
  for (const { buf: b, start, end } of replies) {
    eachAttr(b, start + GENL_HDRLEN, end, (t, o, len) => {
      if (t === WGDEVICE_A_PUBLIC_KEY) publicKey = keyAt(b, o, len);
      else if (t === WGDEVICE_A_LISTEN_PORT && len >= 2) listenPort = b.readUInt16LE(o);
      else if (t === WGDEVICE_A_PEERS) eachAttr(b, o, o + len, (_t, po, plen) => readPeer(b, po, po + plen, peers));
    });
  }
  for (const p of peers.values()) p.allowedIPs.sort();
  return { publicKey, listenPort, peers: [...peers.values()] };
}

// ---- the device ----

const openGenericSocket = (): RawSocket => new RawNetlinkSocket(NETLINK_GENERIC, { recvBufferSize: RECV_BUFFER, sendBufferSize: 1 << 20 });

export interface KernelWgControlOptions {
  /** Opens the generic netlink socket; tests pass a scripted one to play the kernel's replies. */
  readonly openSocket?: () => RawSocket;
}

export class KernelWgControl implements WgControl {
  readonly mode = "kernel" as const;
  private readonly channel: NetlinkChannel;
  private familyId: Promise<number> | undefined;

  constructor(private readonly device: string, opts: KernelWgControlOptions = {}) {
    this.channel = new NetlinkChannel({ openSocket: opts.openSocket ?? openGenericSocket });
  }

  async get(): Promise<WgDeviceStatus> {
    const family = await this.family();
    const what = `wireguard ${this.device}: read the device`;
    const msg = genlMessage(family, NLM_F_DUMP, WG_CMD_GET_DEVICE, WG_GENL_VERSION, new Attrs().str(WGDEVICE_A_IFNAME, this.device));
    return parseDevice(await this.channel.dump(what, msg).catch((err: unknown) => { throw this.failure(what, err); }));
  }

  async set(s: WgDeviceSet): Promise<void> {
    const family = await this.family();
    const what = `wireguard ${this.device}: configure the device`;
    for (const msg of encodeSet(family, this.device, s)) {
      await this.channel.request(what, msg).catch((err: unknown) => { throw this.failure(what, err); });
    }
  }

  close(): void {
    this.channel.close();
  }

  /** The family id, looked up once; a failed lookup is tried again by the next call. */
  private family(): Promise<number> {
    this.familyId ??= this.lookUpFamily().catch((err: unknown) => {
      this.familyId = undefined;
      throw err;
    });
    return this.familyId;
  }

  private async lookUpFamily(): Promise<number> {
    const what = `wireguard ${this.device}: look up the ${WG_GENL_NAME} netlink family`;
    const msg = genlMessage(GENL_ID_CTRL, NLM_F_ACK, CTRL_CMD_GETFAMILY, CTRL_VERSION, new Attrs().str(CTRL_ATTR_FAMILY_NAME, WG_GENL_NAME));
    const replies = await this.channel.request(what, msg).catch((err: unknown) => {
      // The kernel tries to load the module before it answers ENOENT.
      if (err instanceof NetlinkError && err.errno === constants.errno.ENOENT) {
        throw new WeftError("NOT_SUPPORTED", `wireguard ${this.device}: this kernel has no WireGuard (no "${WG_GENL_NAME}" generic netlink family)`, { cause: err });
      }
      throw this.failure(what, err);
    });
    let id: number | undefined;
    for (const { buf: b, start, end } of replies) {
      eachAttr(b, start + GENL_HDRLEN, end, (t, o, len) => { if (t === CTRL_ATTR_FAMILY_ID && len >= 2) id = b.readUInt16LE(o); });
    }
    if (id === undefined) throw new WeftError("DATAPLANE_OP_FAILED", `${what}: the answer has no family id`);
    return id;
  }

  /** An errno as a WeftError naming the device; anything else (the channel's own WeftErrors) as it is. */
  private failure(what: string, err: unknown): unknown {
    if (!(err instanceof NetlinkError)) return err;
    // WireGuard's own commands do not answer ENOENT; generic netlink does when the family is gone (module unloaded).
    if (err.errno === constants.errno.ENOENT) this.familyId = undefined;
    const why = err.errno === constants.errno.ENODEV ? "the device does not exist (ENODEV)" : errnoName(err.errno);
    return new WeftError("DATAPLANE_OP_FAILED", `${what}: ${why}`, { cause: err });
  }
}
