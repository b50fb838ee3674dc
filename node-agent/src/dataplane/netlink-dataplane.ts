// Dataplane over rtnetlink (the `netlink` package, pinned 0.3.0): one request
// socket, no process spawned per change.
//
// The binding aborts the whole process, uncatchably, when the socket's receive
// buffer overflows (ENOBUFS). So the socket gets an 8 MB receive buffer, at
// most MAX_IN_FLIGHT requests are outstanding at any time, and every request
// carries a deadline (a socket that dies otherwise leaves its promises pending).
// If the socket reports an error it is dropped and the next call opens a new
// one; the reconciler's next pass re-reads everything, which is the standard
// ENOBUFS recovery.
//
// Deadlines: the library's own `timeout` option arms one setTimeout per
// request and doubled the cost of each operation in our measurements, so every
// request instead gets a deadline checked by one sweep timer. A request past
// its deadline fails, and its socket is considered broken and replaced.
//
// The per-peer objects (routes, ARP and FDB entries: 3N requests in a full
// pass, and the three dumps of every pass) bypass the library's encoders and
// parsers: they are hand-encoded into one Buffer and sent on the library's
// socket with a sequence number registered in its request table, so ACKs and
// multipart dumps still arrive through the library's receive path, and dump
// replies are read straight from the raw attributes. Same bound, deadline and
// error text; half the time of a full pass and far less garbage
// (docs/benchmarks.md).
import { createRtNetlink, ifla, rt, AttrStream, FlagsNew, putString, putU16be, getU16be, parseAttributes, type RtNetlinkSocket } from "netlink";
import { getSystemErrorName } from "node:util";
import { WeftError } from "../../../lib/src/errors.js";
import { WEFT_RT_PROTO, type Address, type Dataplane, type EnsureLinkResult, type FdbEntry, type Link, type Neighbour, type Route, type VxlanInfo, type VxlanLinkSpec } from "./dataplane.js";

const AF_INET = 2;
const AF_BRIDGE = 7;
const RT_TABLE_MAIN = 254;
const RTNH_F_ONLINK = 4;
const IFLA_INFO_KIND = 1;
const IFLA_INFO_DATA = 2;
const MAX_IN_FLIGHT = 64;
const REQUEST_TIMEOUT_MS = 5000;
const RECV_BUFFER = 8 << 20;

const CREATE_EXCL = FlagsNew.CREATE | FlagsNew.EXCL;
const CREATE_REPLACE = FlagsNew.CREATE | FlagsNew.REPLACE;

export interface NetlinkDataplaneOptions {
  /** Called when the socket fails; the dataplane reopens it on the next call. */
  readonly onSocketError?: (err: Error) => void;
}

const ip4 = (s: string): Buffer => Buffer.from(s.split(".").map(Number));
const macBuf = (s: string): Buffer => Buffer.from(s.split(":").map((h) => parseInt(h, 16)));
// ---- hand-encoded requests for the per-peer objects ----
// The library builds each request from attribute objects (an AttrStream of small
// Buffers, spread option objects, two promise hops per request); for the 3N
// requests of a full pass that allocation dominated GC time. These encoders
// produce the same bytes as rt.formatRouteMessage / rt.formatNeighborMessage
// (netlink-encode.test.ts checks that), in one Buffer, with the nlmsghdr in front.
const NLMSG_HDRLEN = 16;
const NLM_F_REQUEST = 1;
const NLM_F_ACK = 4;
const NLMSG_ERROR = 2;
const RTM_NEWROUTE = 24;
const RTM_DELROUTE = 25;
const RTM_NEWNEIGH = 28;
const RTM_DELNEIGH = 29;
const NUD_PERMANENT = 0x80;
const NTF_SELF = 0x02;
const RTN_UNICAST = 1;
const NDA_DST = 1;
const NDA_LLADDR = 2;
const RTA_DST = 1;
const RTA_OIF = 4;
const RTA_GATEWAY = 5;
const RTA_TABLE = 15;

/** Writes dotted-quad `s` at `off`; throws on anything that is not four octets. */
function writeIp4(b: Buffer, off: number, s: string): void {
  let octet = 0, n = 0, digits = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (!digits || n > 2) throw new WeftError("INTERNAL", `not an IPv4 address: ${s}`);
      b[off + n++] = octet; octet = 0; digits = 0;
    } else if (c >= 48 && c <= 57 && digits < 3) {
      octet = octet * 10 + (c - 48); digits++;
      if (octet > 255) throw new WeftError("INTERNAL", `not an IPv4 address: ${s}`);
    } else throw new WeftError("INTERNAL", `not an IPv4 address: ${s}`);
  }
  if (!digits || n !== 3) throw new WeftError("INTERNAL", `not an IPv4 address: ${s}`);
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

function header(len: number, type: number, flags: number): Buffer {
  const b = Buffer.allocUnsafe(len).fill(0);
  b.writeUInt32LE(len, 0);
  b.writeUInt16LE(type, 4);
  b.writeUInt16LE(flags | NLM_F_REQUEST | NLM_F_ACK, 6);
  // seq (8) and port (12) are filled in when sent
  return b;
}

function attrHdr(b: Buffer, off: number, len: number, type: number): number {
  b.writeUInt16LE(len, off);
  b.writeUInt16LE(type, off + 2);
  return off + 4;
}

/** RTM_NEWROUTE / RTM_DELROUTE for one of our onlink routes (main table, protocol WEFT_RT_PROTO). */
export function encodeRoute(type: number, flags: number, r: Route): Buffer {
  const slash = r.dst.indexOf("/");
  const len = Number(r.dst.slice(slash + 1));
  if (slash < 0 || !Number.isInteger(len) || len < 0 || len > 32) throw new WeftError("INTERNAL", `not a CIDR: ${r.dst}`);
  const b = header(NLMSG_HDRLEN + 12 + 8 * 4, type, flags);
  let o = NLMSG_HDRLEN;
  b[o] = AF_INET; b[o + 1] = len; b[o + 4] = RT_TABLE_MAIN; b[o + 5] = WEFT_RT_PROTO; b[o + 6] = 0; b[o + 7] = RTN_UNICAST;
  b.writeUInt32LE(r.onlink ? RTNH_F_ONLINK : 0, o + 8);
  o += 12;
  writeIp4(b, attrHdr(b, o, 8, RTA_DST), r.dst.slice(0, slash)); o += 8;
  writeIp4(b, attrHdr(b, o, 8, RTA_GATEWAY), r.gateway); o += 8;
  b.writeUInt32LE(r.oif, attrHdr(b, o, 8, RTA_OIF)); o += 8;
  b.writeUInt32LE(RT_TABLE_MAIN, attrHdr(b, o, 8, RTA_TABLE));
  return b;
}

function ndmsg(b: Buffer, family: number, index: number, state: number, flags: number): number {
  const o = NLMSG_HDRLEN;
  b[o] = family;
  b.writeInt32LE(index, o + 4);
  b.writeUInt16LE(state, o + 8);
  b[o + 10] = flags;
  return o + 12;
}

/** ARP entry: RTM_NEWNEIGH (permanent, dst + lladdr) or RTM_DELNEIGH (dst only). */
export function encodeNeighbour(type: number, flags: number, n: Neighbour): Buffer {
  const add = type === RTM_NEWNEIGH;
  const b = header(NLMSG_HDRLEN + 12 + 8 + (add ? 10 : 0), type, flags);
  let o = ndmsg(b, AF_INET, n.index, add ? NUD_PERMANENT : 0, 0);
  writeIp4(b, attrHdr(b, o, 8, NDA_DST), n.ip); o += 8;
  if (add) writeMac(b, attrHdr(b, o, 10, NDA_LLADDR), n.mac);
  return b;
}

/** FDB entry (AF_BRIDGE, NTF_SELF): lladdr + dst; permanent when added. */
export function encodeFdb(type: number, flags: number, e: FdbEntry): Buffer {
  const b = header(NLMSG_HDRLEN + 12 + 12 + 8, type, flags);
  let o = ndmsg(b, AF_BRIDGE, e.index, type === RTM_NEWNEIGH ? NUD_PERMANENT : 0, NTF_SELF);
  writeMac(b, attrHdr(b, o, 10, NDA_LLADDR), e.mac); o += 12;
  writeIp4(b, attrHdr(b, o, 8, NDA_DST), e.dst);
  return b;
}

export const RequestTypes = { RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH, RTM_DELNEIGH } as const;

const NLM_F_DUMP = 0x300;
const RTM_GETROUTE = 26;
const RTM_GETNEIGH = 30;
const RTA_PRIORITY = 6;

interface RawMessage {
  readonly type: number;
  readonly data: Buffer;
}

/** Calls fn(type, offset, length) for each rtattr in b[off..]. */
function eachAttr(b: Buffer, off: number, fn: (type: number, start: number, len: number) => void): void {
  while (off + 4 <= b.length) {
    const len = b.readUInt16LE(off);
    if (len < 4 || off + len > b.length) break;
    fn(b.readUInt16LE(off + 2) & 0x3fff, off + 4, len - 4);
    off += (len + 3) & ~3;
  }
}

const ipAt = (b: Buffer, o: number, len: number): string => (len === 4 ? `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}` : "");
const macAt = (b: Buffer, o: number, len: number): string => {
  let s = "";
  for (let i = 0; i < len; i++) s += (i ? ":" : "") + (b[o + i]! < 16 ? "0" : "") + b[o + i]!.toString(16);
  return s;
};

interface RawRoute {
  family: number; dstLen: number; table: number; protocol: number; flags: number;
  dst: string; gateway: string; oif: number; priority: number;
}

/** Fields of one RTM_NEWROUTE dump entry (rtmsg + the attributes we use); undefined if too short. */
function parseRawRoute(b: Buffer): RawRoute | undefined {
  if (b.length < 12) return undefined;
  const r: RawRoute = { family: b[0]!, dstLen: b[1]!, table: b[4]!, protocol: b[5]!, flags: b.readUInt32LE(8), dst: "0.0.0.0", gateway: "", oif: 0, priority: 0 };
  eachAttr(b, 12, (t, o, len) => {
    if (t === RTA_DST) r.dst = ipAt(b, o, len);
    else if (t === RTA_GATEWAY) r.gateway = ipAt(b, o, len);
    else if (t === RTA_OIF && len >= 4) r.oif = b.readUInt32LE(o);
    else if (t === RTA_TABLE && len >= 4) r.table = b.readUInt32LE(o);
    else if (t === RTA_PRIORITY && len >= 4) r.priority = b.readUInt32LE(o);
  });
  return r;
}

/** Permanent neighbour / FDB entries on `index` with both dst and lladdr, as [ip, mac] pairs. */
function parseRawNeighbours(msgs: readonly RawMessage[], family: number, index: number): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const m of msgs) {
    const b = m.data;
    if (m.type !== RTM_NEWNEIGH || b.length < 12 || b[0] !== family || b.readInt32LE(4) !== index || !(b.readUInt16LE(8) & NUD_PERMANENT)) continue;
    let dst: string | undefined;
    let mac: string | undefined;
    eachAttr(b, 12, (t, o, len) => {
      if (t === NDA_DST) dst = ipAt(b, o, len);
      else if (t === NDA_LLADDR) mac = macAt(b, o, len);
    });
    if (dst !== undefined && mac !== undefined) out.push([dst, mac]);
  }
  return out;
}

/** The parts of the library's NetlinkSocket the raw path uses (public in JS, protected in its typings). */
interface NlSocketInternals {
  generateSeq(): number;
  makeRef(seq: number, cb: (err: Error | null, msg?: Array<{ type: number; data: Buffer }>) => void): number;
  dropRef(seq: number): void;
  readonly requests: Map<number, unknown>;
  readonly socket: { send(msg: Buffer, options: undefined, cb: (err?: Error) => void): void };
}

const fmtIp = (b: Buffer | undefined): string => (b && b.length === 4 ? `${b[0]}.${b[1]}.${b[2]}.${b[3]}` : "");
const fmtMac = (b: Buffer | undefined): string => (b ? [...b].map((x) => x.toString(16).padStart(2, "0")).join(":") : "");

function errnoOf(err: unknown): string | undefined {
  const m = /Request rejected: (E[A-Z]+)/.exec(err instanceof Error ? err.message : String(err));
  return m?.[1];
}

function isAbsent(err: unknown): boolean {
  const e = errnoOf(err);
  return e === "ENOENT" || e === "ESRCH" || e === "ENODEV" || e === "EADDRNOTAVAIL";
}

/**
 * Counting semaphore that hands a released slot straight to the oldest waiter, so
 * a caller arriving in between can never overtake it and exceed the bound.
 * close() is final: waiters and later callers are rejected.
 */
export class Semaphore {
  private active = 0;
  private closed = false;
  private readonly waiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];

  constructor(private readonly limit: number) {}

  get inUse(): number {
    return this.active;
  }

  /** Takes a slot without waiting if one is free (and nobody waits); false otherwise. */
  tryAcquire(): boolean {
    if (this.closed) throw new WeftError("DATAPLANE_OP_FAILED", "dataplane closed");
    if (this.active < this.limit && this.waiters.length === 0) {
      this.active++;
      return true;
    }
    return false;
  }

  acquire(): Promise<void> {
    if (this.closed) return Promise.reject(new WeftError("DATAPLANE_OP_FAILED", "dataplane closed"));
    if (this.active < this.limit) {
      this.active++;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  release(): void {
    const next = this.waiters.shift();
    if (next) next.resolve(); // the slot passes on; `active` stays the same
    else this.active--;
  }

  close(): void {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w.reject(new WeftError("DATAPLANE_OP_FAILED", "dataplane closed"));
  }
}

interface InFlight {
  readonly sock: RtNetlinkSocket;
  readonly deadline: number;
  readonly reject: (err: Error) => void;
}

export class NetlinkDataplane implements Dataplane {
  private sock: RtNetlinkSocket | undefined;
  private localPort = 0;
  private readonly pending = new Set<InFlight>();
  private sweeper: NodeJS.Timeout | undefined;
  private readonly slots = new Semaphore(MAX_IN_FLIGHT);
  private closed = false;
  private dumpChain: Promise<unknown> = Promise.resolve();
  /** One shared dump answers every route-ownership question asked while it runs. */
  private ownerDump: Promise<Map<string, number>> | undefined;

  constructor(private readonly opts: NetlinkDataplaneOptions = {}) {}

  private socket(): RtNetlinkSocket {
    if (this.closed) throw new WeftError("DATAPLANE_OP_FAILED", "dataplane closed");
    if (this.sock) return this.sock;
    const s = createRtNetlink({ ref: false, recvBufferSize: RECV_BUFFER, sendBufferSize: 1 << 20 });
    s.socket.on("error", (err: Error) => {
      this.dropSocket(s, err);
      this.opts.onSocketError?.(err);
    });
    this.sock = s;
    this.localPort = s.socket.address().port;
    this.sweeper ??= setInterval(() => this.sweep(), 500).unref();
    return s;
  }

  /** Closes a broken socket and fails whatever still waits on it. */
  private dropSocket(s: RtNetlinkSocket, err: Error): void {
    if (this.sock === s) this.sock = undefined;
    try { s.socket.close(); } catch { /* already closed */ }
    for (const p of this.pending) if (p.sock === s) { this.pending.delete(p); p.reject(err); }
  }

  private sweep(): void {
    const now = Date.now();
    for (const p of this.pending) {
      if (p.deadline <= now) this.dropSocket(p.sock, new Error(`netlink request timed out after ${REQUEST_TIMEOUT_MS} ms`));
    }
  }

  /** Runs one request with a bounded number in flight. */
  private async run<T>(what: string, fn: (s: RtNetlinkSocket, o: { localPort: number }) => Promise<T>): Promise<T> {
    await this.slots.acquire();
    try {
      const sock = this.socket();
      return await new Promise<T>((resolve, reject) => {
        const entry: InFlight = { sock, deadline: Date.now() + REQUEST_TIMEOUT_MS, reject };
        this.pending.add(entry);
        fn(sock, { localPort: this.localPort }).then(
          (v) => { this.pending.delete(entry); resolve(v); },
          (e) => { this.pending.delete(entry); reject(e); });
      });
    } catch (err) {
      if (err instanceof WeftError) throw err;
      const wrapped = new WeftError("DATAPLANE_OP_FAILED", `${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      (wrapped as WeftError & { errno?: string }).errno = errnoOf(err);
      throw wrapped;
    } finally {
      this.slots.release();
    }
  }

  /**
   * Sends one hand-encoded request (`msg`, seq and port filled in here) and waits
   * for its ACK. Same bound, deadline and error shape as run(), with one promise
   * per request instead of the library's four.
   */
  private raw(what: string, msg: Buffer): Promise<void> {
    return this.rawRequest(what, msg, () => undefined);
  }

  private rawRequest<T>(what: string, msg: Buffer, onReply: (msgs: readonly RawMessage[]) => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const fail = (err: unknown) => {
        if (err instanceof WeftError) return reject(err);
        const wrapped = new WeftError("DATAPLANE_OP_FAILED", `${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
        (wrapped as WeftError & { errno?: string }).errno = errnoOf(err);
        reject(wrapped);
      };
      const go = () => {
        let sock: RtNetlinkSocket;
        try {
          sock = this.socket();
        } catch (err) {
          this.slots.release();
          return fail(err);
        }
        const nl = sock.socket as unknown as NlSocketInternals;
        const seq = nl.generateSeq();
        msg.writeUInt32LE(seq, 8);
        msg.writeUInt32LE(this.localPort, 12);
        let done = false;
        const finish = (err: Error | undefined, msgs?: readonly RawMessage[]) => {
          if (done) return;
          done = true;
          this.pending.delete(entry);
          if (nl.requests.has(seq)) {
            try { nl.dropRef(seq); } catch { /* socket already closed */ }
          }
          this.slots.release();
          if (err) return fail(err);
          let v: T;
          try {
            v = onReply(msgs ?? []);
          } catch (e) {
            return fail(e);
          }
          resolve(v);
        };
        const entry: InFlight = { sock, deadline: Date.now() + REQUEST_TIMEOUT_MS, reject: finish };
        this.pending.add(entry);
        try {
          nl.makeRef(seq, (err, msgs) => {
            if (err) return finish(err);
            const m = msgs?.[0];
            if (m && m.type === NLMSG_ERROR) {
              const errno = m.data.length >= 4 ? m.data.readInt32LE(0) : 0;
              if (errno !== 0) {
                let code = String(errno);
                try { code = getSystemErrorName(errno); } catch { /* unknown errno */ }
                // Same text as the library's checkError, which errnoOf() matches.
                return finish(new Error(`Request rejected: ${code}`));
              }
              return finish(undefined, []);
            }
            finish(undefined, msgs);
          });
          nl.socket.send(msg, undefined, (err) => { if (err) finish(err); });
        } catch (err) {
          finish(err as Error);
        }
      };
      let now: boolean;
      try {
        now = this.slots.tryAcquire();
      } catch (err) {
        return fail(err);
      }
      if (now) go();
      else this.slots.acquire().then(go, fail);
    });
  }

  /** A dump through the raw path: the replies (DONE removed) go to `parse` unparsed. */
  private rawDump<T>(what: string, type: number, family: number, parse: (msgs: readonly RawMessage[]) => T): Promise<T> {
    const msg = header(NLMSG_HDRLEN + 12, type, NLM_F_DUMP);
    msg[NLMSG_HDRLEN] = family;
    const p = this.dumpChain.then(() => this.rawRequest(what, msg, parse));
    this.dumpChain = p.catch(() => undefined);
    return p;
  }

  private async rawTolerateAbsent(what: string, msg: Buffer): Promise<void> {
    try {
      await this.raw(what, msg);
    } catch (err) {
      if (isAbsent((err as Error).cause)) return;
      throw err;
    }
  }

  /** The kernel runs one dump per socket at a time; interleaved dumps corrupt each other's multipart replies. */
  private dump<T>(what: string, fn: (s: RtNetlinkSocket, o: { localPort: number }) => Promise<T>): Promise<T> {
    const p = this.dumpChain.then(() => this.run(what, fn));
    this.dumpChain = p.catch(() => undefined);
    return p;
  }

  private async tolerateAbsent(what: string, fn: (s: RtNetlinkSocket, o: { localPort: number }) => Promise<unknown>): Promise<void> {
    try {
      await this.run(what, fn);
    } catch (err) {
      if (isAbsent((err as Error).cause)) return;
      throw err;
    }
  }

  // ---- links ----

  private toLink(m: rt.LinkMessage): Link {
    let kind: string | undefined;
    let vxlan: VxlanInfo | undefined;
    if (m.attrs.linkinfo) {
      let data: Buffer | undefined;
      parseAttributes(m.attrs.linkinfo, (a) => {
        if (a.type === IFLA_INFO_KIND) kind = a.data.toString("utf8").replace(/\0+$/, "");
        else if (a.type === IFLA_INFO_DATA) data = a.data;
      });
      if (kind === "vxlan" && data) {
        const v = ifla.parseVxlan(data);
        vxlan = {
          vni: v.id ?? 0, localIP: v.local ? fmtIp(v.local) : undefined, parentIndex: v.link,
          port: v.port ? getU16be(v.port) : 0, learning: !!v.learning, gbp: !!v.gbp,
        };
      }
    }
    return {
      index: m.data.index!, name: m.attrs.ifname ?? "", mac: fmtMac(m.attrs.address), mtu: m.attrs.mtu ?? 0,
      up: !!m.data.flags?.up, kind, ...(vxlan ? { vxlan } : {}),
    };
  }

  async getLink(name: string): Promise<Link | undefined> {
    try {
      const [m] = await this.run(`get link ${name}`, (s, o) => s.getLink({}, { ifname: name }, o));
      return m ? this.toLink(m) : undefined;
    } catch (err) {
      if (isAbsent((err as Error).cause)) return undefined;
      throw err;
    }
  }

  async listLinks(): Promise<Link[]> {
    const msgs = await this.dump("list links", (s, o) => s.getLinks(undefined, undefined, o));
    return msgs.map((m) => this.toLink(m));
  }

  private vxlanLinkInfo(spec: VxlanLinkSpec): Buffer {
    const st = new AttrStream();
    st.push(IFLA_INFO_KIND, putString("vxlan"));
    st.push(IFLA_INFO_DATA, ifla.formatVxlan({
      id: spec.vni, local: ip4(spec.localIP), link: spec.parentIndex, port: putU16be(spec.port),
      learning: spec.learning ? 1 : 0, ...(spec.gbp ? { gbp: true as const } : {}),
    }));
    return Buffer.concat(st.bufs);
  }

  /** Flannel's vxlanLinksIncompat: what cannot be changed on a live device. */
  static incompatibility(l: Link, spec: VxlanLinkSpec): string | undefined {
    if (l.kind !== "vxlan" || !l.vxlan) return `is a ${l.kind ?? "plain"} link, not vxlan`;
    const v = l.vxlan;
    if (v.vni !== spec.vni) return `has VNI ${v.vni}, want ${spec.vni}`;
    if ((v.localIP ?? "") !== spec.localIP) return `has local ${v.localIP ?? "none"}, want ${spec.localIP}`;
    if (v.parentIndex !== undefined && v.parentIndex !== spec.parentIndex) return `is on ifindex ${v.parentIndex}, want ${spec.parentIndex}`;
    if (v.port !== spec.port) return `has port ${v.port}, want ${spec.port}`;
    if (v.learning !== spec.learning) return `has learning ${v.learning}, want ${spec.learning}`;
    if (v.gbp !== spec.gbp) return `has gbp ${v.gbp}, want ${spec.gbp}`;
    return undefined;
  }

  async ensureVxlan(spec: VxlanLinkSpec): Promise<EnsureLinkResult> {
    let outcome: EnsureLinkResult["outcome"] = "reused";
    let link = await this.getLink(spec.name);
    if (link && link.kind !== "vxlan") {
      // Not ours to delete: a typo in --vxlan-device must not take down eth0 or a bridge.
      throw new WeftError("CONFIG_INVALID", `interface ${spec.name} exists and is a ${link.kind ?? "plain"} link, not vxlan; weft will not delete it. Choose another --vxlan-device name or remove that interface`);
    }
    if (link && NetlinkDataplane.incompatibility(link, spec)) {
      await this.deleteLink(spec.name);
      link = undefined;
      outcome = "recreated";
    }
    if (!link) {
      try {
        await this.run(`create vxlan ${spec.name}`, (s, o) => s.newLink({ family: 0 },
          { ifname: spec.name, mtu: spec.mtu, address: macBuf(spec.mac), linkinfo: this.vxlanLinkInfo(spec) }, { ...o, flags: CREATE_EXCL }));
        if (outcome === "reused") outcome = "created";
      } catch (err) {
        // Lost a race with another creator: fine if what exists is compatible.
        if (errnoOf((err as Error).cause) !== "EEXIST") throw err;
      }
      link = await this.getLink(spec.name);
      if (!link) throw new WeftError("DATAPLANE_OP_FAILED", `vxlan ${spec.name} vanished right after creation`);
      const why = NetlinkDataplane.incompatibility(link, spec);
      if (why) throw new WeftError("DATAPLANE_OP_FAILED", `vxlan ${spec.name} ${why}`);
    }
    const index = link.index;
    if (link.mtu !== spec.mtu) await this.run(`set mtu of ${spec.name}`, (s, o) => s.setLink({ index }, { mtu: spec.mtu }, o));
    if (link.mac !== spec.mac) await this.run(`set mac of ${spec.name}`, (s, o) => s.setLink({ index }, { address: macBuf(spec.mac) }, o));
    if (!link.up) await this.run(`set ${spec.name} up`, (s, o) => s.setLink({ index, change: { up: true }, flags: { up: true } }, undefined, o));
    const final = await this.getLink(spec.name);
    // Something (e.g. systemd MACAddressPolicy) may rewrite the MAC; peers would then send to the wrong VTEP.
    if (!final || final.mac !== spec.mac) {
      throw new WeftError("DATAPLANE_OP_FAILED", `vxlan ${spec.name} has MAC ${final?.mac ?? "?"} after setup, want ${spec.mac}`);
    }
    return { link: final, outcome };
  }

  async deleteLink(name: string): Promise<void> {
    const l = await this.getLink(name);
    if (!l) return;
    await this.tolerateAbsent(`delete link ${name}`, (s, o) => s.delLink({ index: l.index }, undefined, o));
  }

  // ---- addresses ----

  async listAddresses(index?: number): Promise<Address[]> {
    const msgs = await this.dump("list addresses", (s, o) => s.getAddresses({ family: AF_INET }, undefined, o));
    return msgs
      .filter((m) => m.data.family === AF_INET && (index === undefined || m.data.index === index))
      .map((m) => ({ index: m.data.index!, ip: fmtIp(m.attrs.local ?? m.attrs.address), prefix: m.data.prefixlen ?? 32 }));
  }

  async addAddress(a: Address): Promise<void> {
    try {
      await this.run(`add address ${a.ip}/${a.prefix}`, (s, o) => s.newAddress({ family: AF_INET, prefixlen: a.prefix, index: a.index },
        { local: ip4(a.ip), address: ip4(a.ip) }, { ...o, flags: CREATE_EXCL }));
    } catch (err) {
      if (errnoOf((err as Error).cause) !== "EEXIST") throw err;
    }
  }

  async deleteAddress(a: Address): Promise<void> {
    await this.tolerateAbsent(`delete address ${a.ip}/${a.prefix}`, (s, o) => s.delAddress({ family: AF_INET, prefixlen: a.prefix, index: a.index },
      { local: ip4(a.ip), address: ip4(a.ip) }, o));
  }

  // ---- routes ----

  async listRoutes(): Promise<Route[]> {
    return this.rawDump("list routes", RTM_GETROUTE, AF_INET, (msgs) => {
      const out: Route[] = [];
      for (const m of msgs) {
        if (m.type !== RTM_NEWROUTE) continue;
        const r = parseRawRoute(m.data);
        if (!r || r.family !== AF_INET || r.table !== RT_TABLE_MAIN || r.protocol !== WEFT_RT_PROTO) continue;
        out.push({ dst: `${r.dst}/${r.dstLen}`, gateway: r.gateway, oif: r.oif, onlink: (r.flags & RTNH_F_ONLINK) !== 0 });
      }
      return out;
    });
  }

  /** dst -> protocol number of the main-table routes (metric 0, as ours). */
  private routeOwners(): Promise<Map<string, number>> {
    this.ownerDump ??= this.rawDump("list routes", RTM_GETROUTE, AF_INET, (msgs) => {
      const out = new Map<string, number>();
      for (const m of msgs) {
        if (m.type !== RTM_NEWROUTE) continue;
        const r = parseRawRoute(m.data);
        if (!r || r.family !== AF_INET || r.table !== RT_TABLE_MAIN || r.priority !== 0) continue;
        out.set(`${r.dst}/${r.dstLen}`, r.protocol);
      }
      return out;
    }).finally(() => (this.ownerDump = undefined));
    return this.ownerDump;
  }

  async replaceRoute(r: Route): Promise<void> {
    const what = `replace route ${r.dst} via ${r.gateway}`;
    try {
      await this.raw(what, encodeRoute(RTM_NEWROUTE, CREATE_EXCL, r));
      return;
    } catch (err) {
      if (errnoOf((err as Error).cause) !== "EEXIST") throw err;
    }
    // A route to this dst exists. Replace it only if it is ours (a peer's route that changed); never clobber someone else's.
    const proto = (await this.routeOwners()).get(r.dst);
    if (proto !== undefined && proto !== WEFT_RT_PROTO) {
      throw new WeftError("DATAPLANE_OP_FAILED", `${what}: a route to ${r.dst} with protocol ${proto} (not weft's ${WEFT_RT_PROTO}) exists; leaving it alone. Remove it if the overlay should own ${r.dst}`);
    }
    await this.raw(what, encodeRoute(RTM_NEWROUTE, CREATE_REPLACE, r));
  }

  async deleteRoute(r: Route): Promise<void> {
    await this.rawTolerateAbsent(`delete route ${r.dst}`, encodeRoute(RTM_DELROUTE, 0, r));
  }

  async defaultRouteIndex(): Promise<number | undefined> {
    const msgs = await this.dump("list routes", (s, o) => s.getRoutes({ family: AF_INET }, undefined, o));
    const d = msgs.find((m) => (m.attrs.table ?? m.data.table) === RT_TABLE_MAIN && (m.data.dstLen ?? 0) === 0 && m.attrs.oif);
    return d?.attrs.oif;
  }

  // ---- neighbours (ARP) ----

  async listNeighbours(index: number): Promise<Neighbour[]> {
    return this.rawDump("list neighbours", RTM_GETNEIGH, AF_INET, (msgs) =>
      parseRawNeighbours(msgs, AF_INET, index).map(([ip, mac]) => ({ index, ip, mac })));
  }

  async replaceNeighbour(n: Neighbour): Promise<void> {
    await this.raw(`replace neighbour ${n.ip}`, encodeNeighbour(RTM_NEWNEIGH, CREATE_REPLACE, n));
  }

  async deleteNeighbour(n: Neighbour): Promise<void> {
    await this.rawTolerateAbsent(`delete neighbour ${n.ip}`, encodeNeighbour(RTM_DELNEIGH, 0, n));
  }

  // ---- FDB ----

  async listFdb(index: number): Promise<FdbEntry[]> {
    return this.rawDump("list fdb", RTM_GETNEIGH, AF_BRIDGE, (msgs) =>
      parseRawNeighbours(msgs, AF_BRIDGE, index).map(([dst, mac]) => ({ index, mac, dst })));
  }

  async replaceFdb(e: FdbEntry): Promise<void> {
    await this.raw(`replace fdb ${e.mac} dst ${e.dst}`, encodeFdb(RTM_NEWNEIGH, CREATE_REPLACE, e));
  }

  async deleteFdb(e: FdbEntry): Promise<void> {
    await this.rawTolerateAbsent(`delete fdb ${e.mac} dst ${e.dst}`, encodeFdb(RTM_DELNEIGH, 0, e));
  }

  /** Final: queued and later requests fail; the socket is not reopened. */
  close(): void {
    this.closed = true;
    this.slots.close();
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
    if (this.sock) this.dropSocket(this.sock, new Error("dataplane closed"));
  }
}
