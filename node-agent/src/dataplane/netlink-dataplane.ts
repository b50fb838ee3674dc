// Dataplane over rtnetlink: one request channel (netlink-channel.ts), one
// notification socket (netlink-monitor.ts), every message from
// rtnl-codec.ts. No process is spawned per change. The tables' putMany and
// removeMany send a pass's objects in batches (NetlinkChannel.batch).
//
// Errors keep the kernel's errno as a number (NetlinkError.errno) and are
// compared as numbers; they leave this file as DATAPLANE_OP_FAILED with the
// NetlinkError as cause.
import { constants } from "node:os";
import { WeftError } from "../../../lib/src/errors.js";
import {
  WEFT_RT_PROTO, fdbKey, fdbSame, neighbourId, neighbourKey, neighbourSame, routeId, routeKey, routeSame,
  type Address, type Dataplane, type FdbEntry, type KernelChange, type KernelTable, type Link, type LinkChange, type LinkSpec, type Neighbour, type Route,
} from "./dataplane.js";
import { NetlinkChannel, NetlinkError, type NetlinkChannelOptions } from "./netlink-channel.js";
import { NetlinkMonitor } from "./netlink-monitor.js";
import {
  AF_BRIDGE, AF_INET, encodeAddress, encodeDelLink, encodeDump, encodeFdb, encodeGetLink, encodeNeighbour, encodeNewLink, encodeRoute, encodeSetLink,
  FDB_LENGTH, neighbourLength, routeLength, writeFdb, writeNeighbour, writeRoute,
  isMainTable, isOurRoute, isOurRouteHeader, neighbourHeader, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, parseAddress, parseLink, parseNeighbour, parseRoute, RTM,
  type ParsedNeighbour, type ParsedRoute, type RawMessage,
} from "./rtnl-codec.js";

const { EEXIST, ENOENT, ESRCH, ENODEV, EADDRNOTAVAIL, EOPNOTSUPP } = constants.errno;
const CREATE_EXCL = NLM_F_CREATE | NLM_F_EXCL;
const CREATE_REPLACE = NLM_F_CREATE | NLM_F_REPLACE;

const routeWhat = (r: Route): string => `route ${r.dst}${r.gateway ? ` via ${r.gateway}` : ""} dev ${r.oif}`;
const errnoIs = (err: unknown, ...codes: number[]): boolean => err instanceof NetlinkError && codes.includes(err.errno);
/** What "already gone" looks like for deletes and lookups. */
const isAbsent = (err: unknown): boolean => errnoIs(err, ENOENT, ESRCH, ENODEV, EADDRNOTAVAIL);

const parseMainRoute = (m: RawMessage): ParsedRoute | undefined => {
  if (m.type !== RTM.NEWROUTE) return undefined;
  const r = parseRoute(m);
  return r && isMainTable(r) ? r : undefined;
};

const permanent = (m: RawMessage, family: number, index: number): ParsedNeighbour | undefined => {
  if (m.type !== RTM.NEWNEIGH) return undefined;
  const n = parseNeighbour(m);
  return n && n.family === family && n.index === index && n.permanent && n.dst && n.lladdr ? n : undefined;
};

function opFailed(err: unknown): WeftError {
  if (err instanceof WeftError) return err;
  return new WeftError("DATAPLANE_OP_FAILED", err instanceof Error ? err.message : String(err), { cause: err });
}

export type NetlinkDataplaneOptions = NetlinkChannelOptions & {
  /** Called when the notification socket fails (it is reopened and listeners get a "lost" event). */
  readonly onMonitorError?: (err: Error) => void;
  /** Receive buffer of the notification socket (tests shrink it to force an overflow). */
  readonly monitorBufferBytes?: number;
};

export class NetlinkDataplane implements Dataplane {
  private readonly ch: NetlinkChannel;
  private readonly monitor: NetlinkMonitor;
  /** One shared dump answers every route-ownership question asked while it runs. */
  private ownerDump: { started: number; p: Promise<Map<string, number>> } | undefined;

  constructor(opts: NetlinkDataplaneOptions = {}) {
    this.ch = new NetlinkChannel(opts);
    this.monitor = new NetlinkMonitor(opts.onMonitorError, opts.monitorBufferBytes);
  }

  private async request(what: string, msg: Buffer): Promise<RawMessage[]> {
    try {
      return await this.ch.request(what, msg);
    } catch (err) {
      throw opFailed(err);
    }
  }

  private async tolerateAbsent(what: string, msg: Buffer): Promise<void> {
    try {
      await this.ch.request(what, msg);
    } catch (err) {
      if (!isAbsent(err)) throw opFailed(err);
    }
  }

  /** Many requests in few datagrams (NetlinkChannel.batch); absent objects are fine for deletes. */
  private async many<T>(items: readonly T[], size: (o: T) => number, write: (b: Buffer, off: number, o: T) => number, what: (o: T) => string, absentOk = false): Promise<Array<unknown>> {
    let errs: Array<Error | undefined>;
    try {
      errs = await this.ch.batch(items, size, write, what);
    } catch (err) {
      return items.map(() => opFailed(err));
    }
    const out = new Array<unknown>(items.length);
    for (let i = 0; i < items.length; i++) {
      const e = errs[i];
      if (e && !(absentOk && isAbsent(e))) out[i] = opFailed(e);
    }
    return out;
  }

  private async dump<T>(what: string, type: number, family: number, parse: (m: RawMessage) => T | undefined): Promise<T[]> {
    const out: T[] = [];
    await this.scan(what, type, family, parse, (v) => out.push(v), () => { out.length = 0; });
    return out;
  }

  /** A dump parsed as it arrives: `visit` gets each parsed object while its datagram is at hand. */
  private async scan<T>(what: string, type: number, family: number, parse: (m: RawMessage) => T | undefined, visit: (v: T) => void, restart: () => void): Promise<void> {
    try {
      await this.ch.scan(what, encodeDump(type, family), (m) => {
        const v = parse(m);
        if (v !== undefined) visit(v);
      }, restart);
    } catch (err) {
      throw opFailed(err);
    }
  }

  // ---- links ----

  async getLink(name: string): Promise<Link | undefined> {
    try {
      const [m] = await this.ch.request(`get link ${name}`, encodeGetLink(name));
      return m ? parseLink(m) : undefined;
    } catch (err) {
      if (isAbsent(err)) return undefined;
      throw opFailed(err);
    }
  }

  listLinks(): Promise<Link[]> {
    return this.dump("list links", RTM.GETLINK, 0, (m) => (m.type === RTM.NEWLINK ? parseLink(m) : undefined));
  }

  async createLink(spec: LinkSpec): Promise<void> {
    try {
      await this.ch.request(`create ${spec.kind} ${spec.name}`, encodeNewLink(spec));
    } catch (err) {
      if (errnoIs(err, EEXIST)) throw new WeftError("ALREADY_EXISTS", `create ${spec.kind} ${spec.name}: an interface of that name exists`, { cause: err });
      // The kernel knows no such link kind (no module for it, e.g. wireguard before 5.6).
      if (errnoIs(err, EOPNOTSUPP)) throw new WeftError("NOT_SUPPORTED", `create ${spec.kind} ${spec.name}: this kernel has no ${spec.kind} link type`, { cause: err });
      throw opFailed(err);
    }
    // The kernel ignores IFLA_IFALIAS when it creates a link; it takes it as a change right after.
    const l = await this.getLink(spec.name);
    if (l && l.alias !== spec.alias) await this.setLink(l.index, { alias: spec.alias });
  }

  async setLink(index: number, change: LinkChange): Promise<void> {
    await this.request(`change link ${index} (${Object.keys(change).join(", ")})`, encodeSetLink(index, change));
  }

  deleteLink(index: number): Promise<void> {
    return this.tolerateAbsent(`delete link ${index}`, encodeDelLink(index));
  }

  // ---- addresses ----

  async listAddresses(index?: number): Promise<Address[]> {
    const all = await this.dump("list addresses", RTM.GETADDR, AF_INET, (m) => (m.type === RTM.NEWADDR ? parseAddress(m) : undefined));
    return index === undefined ? all : all.filter((a) => a.index === index);
  }

  async addAddress(a: Address): Promise<void> {
    try {
      await this.ch.request(`add address ${a.ip}/${a.prefix}`, encodeAddress(RTM.NEWADDR, CREATE_EXCL, a));
    } catch (err) {
      if (!errnoIs(err, EEXIST)) throw opFailed(err);
    }
  }

  deleteAddress(a: Address): Promise<void> {
    return this.tolerateAbsent(`delete address ${a.ip}/${a.prefix}`, encodeAddress(RTM.DELADDR, 0, a));
  }

  // ---- routes ----

  private mainRoutes(): Promise<ParsedRoute[]> {
    return this.dump("list routes", RTM.GETROUTE, AF_INET, parseMainRoute);
  }

  /** Our routes, one at a time (KernelTable.scan). */
  private scanOurRoutes(visit: (r: Route) => void, restart: () => void): Promise<void> {
    return this.scan("list routes", RTM.GETROUTE, AF_INET, (m) => {
      // The header says whether it is ours (main table, our protocol) before any attribute is read.
      if (m.type !== RTM.NEWROUTE || !isOurRouteHeader(m)) return undefined;
      const r = parseRoute(m);
      return r && isOurRoute(r) ? r.route : undefined;
    }, visit, restart);
  }

  /**
   * dst -> protocol of the main-table routes with metric 0 (as ours), from a dump that started after
   * `after` (performance.now()): one dump answers every put that hit EEXIST before it began.
   */
  private routeOwners(after: number): Promise<Map<string, number>> {
    if (!this.ownerDump || this.ownerDump.started < after) {
      const started = performance.now();
      const p = this.mainRoutes().then((rs) => new Map(rs.filter((r) => r.priority === 0).map((r) => [r.route.dst, r.protocol])));
      const entry = { started, p };
      this.ownerDump = entry;
      void p.finally(() => { if (this.ownerDump === entry) this.ownerDump = undefined; }).catch(() => undefined);
    }
    return this.ownerDump.p;
  }

  /**
   * Adds the route, or replaces ours to the same dst (a peer whose route changed). The kernel's
   * NLM_F_REPLACE takes the first route to that dst whatever its protocol, so it is used only after a
   * dump that began after the add failed showed the route there is ours; a foreign one is reported and
   * left alone.
   */
  private async putRoute(r: Route): Promise<void> {
    const what = routeWhat(r);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await this.ch.request(`add ${what}`, encodeRoute(RTM.NEWROUTE, CREATE_EXCL, r));
        return;
      } catch (err) {
        if (!errnoIs(err, EEXIST)) throw opFailed(err);
      }
      const proto = (await this.routeOwners(performance.now())).get(r.dst);
      if (proto === WEFT_RT_PROTO) {
        await this.request(`replace ${what}`, encodeRoute(RTM.NEWROUTE, NLM_F_REPLACE, r));
        return;
      }
      if (proto !== undefined) {
        throw new WeftError("DATAPLANE_OP_FAILED", `add ${what}: a route to ${r.dst} with protocol ${proto} (not weft's ${WEFT_RT_PROTO}) exists; leaving it alone. Remove it if the overlay should own ${r.dst}`);
      }
      // It vanished between our add and the dump: add again.
    }
    throw new WeftError("DATAPLANE_OP_FAILED", `add ${what}: a route to ${r.dst} keeps appearing and vanishing; will retry`);
  }

  readonly routes: KernelTable<Route> = {
    kind: "route",
    list: async () => (await this.mainRoutes()).filter(isOurRoute).map((r) => r.route),
    scan: (visit, restart) => this.scanOurRoutes(visit, restart),
    id: routeId,
    key: routeKey,
    same: routeSame,
    put: (r) => this.putRoute(r),
    remove: (r) => this.tolerateAbsent(`delete route ${r.dst}`, encodeRoute(RTM.DELROUTE, 0, r)),
    putMany: async (rs) => {
      const errs = await this.many(rs, routeLength, (b, off, r) => writeRoute(b, off, RTM.NEWROUTE, CREATE_EXCL, r), (r) => `add ${routeWhat(r)}`);
      // A route to that dst exists: ours with other values (replace it) or a foreign one (leave it), as putRoute decides.
      await Promise.all(rs.map(async (r, i) => {
        const e = errs[i];
        if (e instanceof WeftError && errnoIs(e.cause, EEXIST)) errs[i] = await this.putRoute(r).then(() => undefined, (err: unknown) => err);
      }));
      return errs;
    },
    removeMany: (rs) => this.many(rs, routeLength, (b, off, r) => writeRoute(b, off, RTM.DELROUTE, 0, r), (r) => `delete route ${r.dst}`, true),
  };

  async defaultRouteIndex(): Promise<number | undefined> {
    const d = (await this.mainRoutes()).find((r) => r.route.dst === "0.0.0.0/0" && r.route.oif);
    return d?.route.oif;
  }

  // ---- neighbours (ARP) and FDB ----

  private permanentOn(family: number, index: number): Promise<Array<{ dst: string; lladdr: string }>> {
    return this.dump(family === AF_BRIDGE ? "list fdb" : "list neighbours", RTM.GETNEIGH, family, (m) => permanent(m, family, index));
  }

  /** permanentOn, one entry at a time, mapped by `as` (KernelTable.scan). */
  private scanPermanentOn<T>(family: number, index: number, as: (dst: string, lladdr: string) => T, visit: (o: T) => void, restart: () => void): Promise<void> {
    return this.scan(family === AF_BRIDGE ? "list fdb" : "list neighbours", RTM.GETNEIGH, family, (m) => {
      // The family and device are in the header: other devices' entries are not parsed at all.
      const h = neighbourHeader(m);
      if (m.type !== RTM.NEWNEIGH || !h || h.family !== family || h.index !== index) return undefined;
      const n = permanent(m, family, index);
      return n ? as(n.dst, n.lladdr) : undefined;
    }, visit, restart);
  }

  neighbours(index: number): KernelTable<Neighbour> {
    // Only our devices' neighbour notifications are worth parsing.
    this.monitor.watchedLinks.add(index);
    return {
      kind: "neighbour",
      list: async () => (await this.permanentOn(AF_INET, index)).map((n) => ({ index, ip: n.dst, mac: n.lladdr })),
      scan: (visit, restart) => this.scanPermanentOn(AF_INET, index, (ip, mac) => ({ index, ip, mac }), visit, restart),
      // On this table's own device the IP alone identifies an entry: the value's own string, no new one
      // per peer. An entry of another device keeps the index in its id, so the two never meet.
      id: (n) => (n.index === index ? n.ip : neighbourId(n)),
      key: neighbourKey,
      same: neighbourSame,
      put: (n) => this.request(`replace neighbour ${n.ip}`, encodeNeighbour(RTM.NEWNEIGH, CREATE_REPLACE, n)).then(() => undefined),
      remove: (n) => this.tolerateAbsent(`delete neighbour ${n.ip}`, encodeNeighbour(RTM.DELNEIGH, 0, n)),
      putMany: (ns) => this.many(ns, () => neighbourLength(RTM.NEWNEIGH), (b, off, n) => writeNeighbour(b, off, RTM.NEWNEIGH, CREATE_REPLACE, n), (n) => `replace neighbour ${n.ip}`),
      removeMany: (ns) => this.many(ns, () => neighbourLength(RTM.DELNEIGH), (b, off, n) => writeNeighbour(b, off, RTM.DELNEIGH, 0, n), (n) => `delete neighbour ${n.ip}`, true),
    };
  }

  fdb(index: number): KernelTable<FdbEntry> {
    this.monitor.watchedLinks.add(index);
    return {
      kind: "fdb",
      list: async () => (await this.permanentOn(AF_BRIDGE, index)).map((n) => ({ index, mac: n.lladdr, dst: n.dst })),
      scan: (visit, restart) => this.scanPermanentOn(AF_BRIDGE, index, (dst, mac) => ({ index, mac, dst }), visit, restart),
      // On this table's own device the MAC alone identifies an entry (the value's own string, no new
      // one per peer): the kernel keeps one destination per unicast MAC (append is only for the
      // all-zeros and multicast entries), and a put replaces it.
      id: (e) => (e.index === index ? e.mac : fdbKey(e)),
      key: fdbKey,
      same: fdbSame,
      // NLM_F_REPLACE on a VXLAN FDB entry replaces the MAC's remote.
      put: (e) => this.request(`replace fdb ${e.mac} dst ${e.dst}`, encodeFdb(RTM.NEWNEIGH, CREATE_REPLACE, e)).then(() => undefined),
      remove: (e) => this.tolerateAbsent(`delete fdb ${e.mac} dst ${e.dst}`, encodeFdb(RTM.DELNEIGH, 0, e)),
      putMany: (es) => this.many(es, () => FDB_LENGTH, (b, off, e) => writeFdb(b, off, RTM.NEWNEIGH, CREATE_REPLACE, e), (e) => `replace fdb ${e.mac} dst ${e.dst}`),
      removeMany: (es) => this.many(es, () => FDB_LENGTH, (b, off, e) => writeFdb(b, off, RTM.DELNEIGH, 0, e), (e) => `delete fdb ${e.mac} dst ${e.dst}`, true),
    };
  }

  // ---- notifications ----

  watch(listener: (c: KernelChange) => void): () => void {
    return this.monitor.subscribe(listener);
  }

  muteObjectChanges(): () => void {
    return this.monitor.mute();
  }

  /** Final: queued and later requests fail; the sockets are not reopened. */
  close(): void {
    this.ch.close();
    this.monitor.close();
  }
}
