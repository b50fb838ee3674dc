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
import { createRtNetlink, ifla, rt, AttrStream, FlagsNew, putString, putU16be, getU16be, parseAttributes, type RtNetlinkSocket } from "netlink";
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

  private routeMsg(r: Route): [rt.Route, rt.RouteAttrs] {
    const [dst, len] = r.dst.split("/");
    return [
      { family: AF_INET, dstLen: Number(len), table: RT_TABLE_MAIN, protocol: WEFT_RT_PROTO as rt.RouteProtocol, scope: "UNIVERSE", type: "UNICAST",
        flags: r.onlink ? { __unknown: RTNH_F_ONLINK } : {} },
      { dst: ip4(dst!), gateway: ip4(r.gateway), oif: r.oif, table: RT_TABLE_MAIN },
    ];
  }

  private static protoNum(p: unknown): number {
    return typeof p === "number" ? p : typeof p === "string" ? ((rt.RouteProtocol as unknown as Record<string, number>)[p] ?? -1) : -1;
  }

  async listRoutes(): Promise<Route[]> {
    const msgs = await this.dump("list routes", (s, o) => s.getRoutes({ family: AF_INET }, undefined, o));
    const out: Route[] = [];
    for (const m of msgs) {
      const table = m.attrs.table ?? m.data.table;
      if (m.data.family !== AF_INET || table !== RT_TABLE_MAIN || NetlinkDataplane.protoNum(m.data.protocol) !== WEFT_RT_PROTO) continue;
      const flags = (m.data.flags ?? {}) as { __unknown?: number };
      out.push({
        dst: `${m.attrs.dst ? fmtIp(m.attrs.dst) : "0.0.0.0"}/${m.data.dstLen ?? 0}`, gateway: fmtIp(m.attrs.gateway),
        oif: m.attrs.oif ?? 0, onlink: ((flags.__unknown ?? 0) & RTNH_F_ONLINK) !== 0,
      });
    }
    return out;
  }

  /** dst -> protocol number of the main-table routes (metric 0, as ours). */
  private routeOwners(): Promise<Map<string, number>> {
    this.ownerDump ??= this.dump("list routes", (s, o) => s.getRoutes({ family: AF_INET }, undefined, o)).then((msgs) => {
      const out = new Map<string, number>();
      for (const m of msgs) {
        if (m.data.family !== AF_INET || (m.attrs.table ?? m.data.table) !== RT_TABLE_MAIN || (m.attrs.priority ?? 0) !== 0) continue;
        out.set(`${m.attrs.dst ? fmtIp(m.attrs.dst) : "0.0.0.0"}/${m.data.dstLen ?? 0}`, NetlinkDataplane.protoNum(m.data.protocol));
      }
      return out;
    }).finally(() => (this.ownerDump = undefined));
    return this.ownerDump;
  }

  async replaceRoute(r: Route): Promise<void> {
    const what = `replace route ${r.dst} via ${r.gateway}`;
    try {
      await this.run(what, (s, o) => s.newRoute(...this.routeMsg(r), { ...o, flags: CREATE_EXCL }));
      return;
    } catch (err) {
      if (errnoOf((err as Error).cause) !== "EEXIST") throw err;
    }
    // A route to this dst exists. Replace it only if it is ours (a peer's route that changed); never clobber someone else's.
    const proto = (await this.routeOwners()).get(r.dst);
    if (proto !== undefined && proto !== WEFT_RT_PROTO) {
      throw new WeftError("DATAPLANE_OP_FAILED", `${what}: a route to ${r.dst} with protocol ${proto} (not weft's ${WEFT_RT_PROTO}) exists; leaving it alone. Remove it if the overlay should own ${r.dst}`);
    }
    await this.run(what, (s, o) => s.newRoute(...this.routeMsg(r), { ...o, flags: CREATE_REPLACE }));
  }

  async deleteRoute(r: Route): Promise<void> {
    await this.tolerateAbsent(`delete route ${r.dst}`, (s, o) => s.delRoute(...this.routeMsg(r), o));
  }

  async defaultRouteIndex(): Promise<number | undefined> {
    const msgs = await this.dump("list routes", (s, o) => s.getRoutes({ family: AF_INET }, undefined, o));
    const d = msgs.find((m) => (m.attrs.table ?? m.data.table) === RT_TABLE_MAIN && (m.data.dstLen ?? 0) === 0 && m.attrs.oif);
    return d?.attrs.oif;
  }

  // ---- neighbours (ARP) ----

  async listNeighbours(index: number): Promise<Neighbour[]> {
    const msgs = await this.dump("list neighbours", (s, o) => s.getNeighbors({ family: AF_INET }, undefined, o));
    return msgs
      .filter((m) => m.data.family === AF_INET && m.data.ifindex === index && m.data.state?.permanent && m.attrs.dst && m.attrs.lladdr)
      .map((m) => ({ index, ip: fmtIp(m.attrs.dst), mac: fmtMac(m.attrs.lladdr) }));
  }

  async replaceNeighbour(n: Neighbour): Promise<void> {
    await this.run(`replace neighbour ${n.ip}`, (s, o) => s.newNeighbor({ family: AF_INET, ifindex: n.index, state: { permanent: true } },
      { dst: ip4(n.ip), lladdr: macBuf(n.mac) }, { ...o, flags: CREATE_REPLACE }));
  }

  async deleteNeighbour(n: Neighbour): Promise<void> {
    await this.tolerateAbsent(`delete neighbour ${n.ip}`, (s, o) => s.delNeighbor({ family: AF_INET, ifindex: n.index }, { dst: ip4(n.ip) }, o));
  }

  // ---- FDB ----

  async listFdb(index: number): Promise<FdbEntry[]> {
    const msgs = await this.dump("list fdb", (s, o) => s.getNeighbors({ family: AF_BRIDGE }, undefined, o));
    return msgs
      .filter((m) => m.data.family === AF_BRIDGE && m.data.ifindex === index && m.data.state?.permanent && m.attrs.dst && m.attrs.lladdr)
      .map((m) => ({ index, mac: fmtMac(m.attrs.lladdr), dst: fmtIp(m.attrs.dst) }));
  }

  async replaceFdb(e: FdbEntry): Promise<void> {
    await this.run(`replace fdb ${e.mac} dst ${e.dst}`, (s, o) => s.newNeighbor({ family: AF_BRIDGE, ifindex: e.index, state: { permanent: true }, flags: { self: true } },
      { lladdr: macBuf(e.mac), dst: ip4(e.dst) }, { ...o, flags: CREATE_REPLACE }));
  }

  async deleteFdb(e: FdbEntry): Promise<void> {
    await this.tolerateAbsent(`delete fdb ${e.mac} dst ${e.dst}`, (s, o) => s.delNeighbor({ family: AF_BRIDGE, ifindex: e.index, flags: { self: true } },
      { lladdr: macBuf(e.mac), dst: ip4(e.dst) }, o));
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
