// Dataplane over rtnetlink: one request channel (netlink-channel.ts), one
// notification socket (netlink-monitor.ts), every message from
// rtnl-codec.ts. No process is spawned per change. The tables' putMany and
// removeMany send a pass's objects in batches (NetlinkChannel.batch).
//
// A route onto one of our tunnel devices goes through a nexthop object of
// ours, numbered after the route's dst (nexthop-id.ts says why: it makes
// route inserts linear), where the kernel has nexthop objects. To the rest of
// the agent a route is still dst, gateway and device: the route table adds,
// lists and removes each route together with its nexthop.
//
// Errors keep the kernel's errno as a number (NetlinkError.errno) and are
// compared as numbers; they leave this file as DATAPLANE_OP_FAILED with the
// NetlinkError as cause.
import { readFile } from "node:fs/promises";
import { constants } from "node:os";
import { WeftError } from "../../../lib/src/errors.js";
import {
  WEFT_RT_PROTO, fdbKey, fdbSame, neighbourId, neighbourKey, neighbourSame, routeId, routeKey, routeSame,
  type Address, type Dataplane, type FdbEntry, type KernelChange, type KernelTable, type Link, type LinkChange, type LinkSpec, type Neighbour, type Route,
} from "./dataplane.js";
import { NetlinkChannel, NetlinkError, type NetlinkChannelOptions } from "./netlink-channel.js";
import { NetlinkMonitor } from "./netlink-monitor.js";
import { dstOfNexthopId, nexthopIdFor } from "./nexthop-id.js";
import {
  AF_BRIDGE, AF_INET, encodeAddress, encodeDelLink, encodeDump, encodeFdb, encodeGetLink, encodeNeighbour, encodeNewLink, encodeNexthop, encodeRoute, encodeSetLink,
  FDB_LENGTH, neighbourLength, nexthopLength, ROUTE_DELETION_LENGTH, routeLength, writeFdb, writeNeighbour, writeNexthop, writeRoute, writeRouteDeletion,
  isMainTable, isOurRoute, isOurRouteHeader, neighbourHeader, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, ourNexthopId, ourRouteNexthopId, parseAddress, parseLink, parseNeighbour, parseNexthop, parseRoute, RTM,
  type ParsedNeighbour, type ParsedNexthop, type ParsedRoute, type RawMessage,
} from "./rtnl-codec.js";

const { EEXIST, ENOENT, ESRCH, ENODEV, EADDRNOTAVAIL, EOPNOTSUPP } = constants.errno;
const CREATE_EXCL = NLM_F_CREATE | NLM_F_EXCL;
const CREATE_REPLACE = NLM_F_CREATE | NLM_F_REPLACE;

const routeWhat = (r: Route): string => `route ${r.dst}${r.gateway ? ` via ${r.gateway}` : ""} dev ${r.oif}`;
const errnoIs = (err: unknown, ...codes: number[]): boolean => err instanceof NetlinkError && codes.includes(err.errno);
/** What "already gone" looks like for deletes and lookups. */
const isAbsent = (err: unknown): boolean => errnoIs(err, ENOENT, ESRCH, ENODEV, EADDRNOTAVAIL);

/** One of our routes (main table, our protocol); the header says whether it is before any attribute is read. */
const parseOurRoute = (m: RawMessage): ParsedRoute | undefined => {
  if (m.type !== RTM.NEWROUTE || !isOurRouteHeader(m)) return undefined;
  const r = parseRoute(m);
  return r && isOurRoute(r) ? r : undefined;
};

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
  /**
   * Whether routes go through nexthop objects. Default: yes when the kernel has them and lists a
   * route's gateway and device beside its nexthop id (net.ipv4.nexthop_compat_mode, on by default).
   */
  readonly nexthops?: boolean;
};

export class NetlinkDataplane implements Dataplane {
  private readonly ch: NetlinkChannel;
  private readonly monitor: NetlinkMonitor;
  /** One shared dump answers every route-ownership question asked while it runs. */
  private ownerDump: { started: number; p: Promise<Map<string, number>> } | undefined;
  private readonly nexthopsOption: boolean | undefined;
  private nexthopProbe: Promise<boolean> | undefined;
  /**
   * Listed routes not in the form a put makes (an older weft's plain route, our nexthop left without
   * its route), each with the nexthop of ours that goes when it goes: put replaces them, remove takes both.
   */
  private readonly staleRoutes = new WeakMap<Route, number | undefined>();
  /** A reading of the routes has looked for nexthops of ours without a route (scanOurRoutes). */
  private swept = false;

  constructor(opts: NetlinkDataplaneOptions = {}) {
    this.nexthopsOption = opts.nexthops;
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

  /** Whether routes go through nexthop objects: asked of the kernel once. */
  private usesNexthops(): Promise<boolean> {
    return (this.nexthopProbe ??= this.probeNexthops());
  }

  private async probeNexthops(): Promise<boolean> {
    if (this.nexthopsOption !== undefined) return this.nexthopsOption;
    // In mode 0 a route's dump carries its nexthop id alone: our routes could not be compared.
    const compat = await readFile("/proc/sys/net/ipv4/nexthop_compat_mode", "utf8").catch(() => "1");
    if (compat.trim() === "0") return false;
    try {
      await this.ch.request("look up nexthop 1", encodeNexthop(RTM.GETNEXTHOP, 0, 1));
      return true;
    } catch (err) {
      // "No such nexthop" is a kernel that has them; older ones do not know the request (EOPNOTSUPP).
      if (err instanceof NetlinkError) return isAbsent(err);
      this.nexthopProbe = undefined;
      throw opFailed(err);
    }
  }

  /**
   * The nexthop object route `r` goes through, if any. Only routes onto a tunnel device (onlink, or no
   * gateway at all) get one: a route via a gateway it must reach on its own goes onto a real link (the
   * underlay), and when a link loses carrier the kernel silently flushes the nexthop objects on it with
   * every route using them, where a plain route stays, marked linkdown, and works again at once.
   */
  private nexthopFor(r: Route, nexthops: boolean): number | undefined {
    return nexthops && (r.onlink || r.gateway === undefined) ? nexthopIdFor(r.dst) : undefined;
  }

  private stale(r: Route, nexthop: number | undefined): Route {
    this.staleRoutes.set(r, nexthop);
    return r;
  }

  /**
   * Our routes, one at a time (KernelTable.scan). With nexthop objects, a route not in the form a put
   * makes is marked stale, so the reconciler puts it right. With `sweep`, the nexthops are read too:
   * a route's nexthop must be ours, and a nexthop of ours without its route is listed as a stale route
   * to its dst, so the reconciler puts the route back or removes the nexthop. Only the first reading
   * (left-overs of a crash between a nexthop and its route) and --cleanup sweep: the timer's readings
   * would parse 5,000 more objects each time for nexthops nothing routes through, and a nexthop that
   * someone else replaces is announced (netlink-monitor.ts).
   */
  private async scanOurRoutes(visit: (r: Route) => void, restart: () => void, sweep = !this.swept): Promise<void> {
    if (!(await this.usesNexthops())) return this.scan("list routes", RTM.GETROUTE, AF_INET, (m) => parseOurRoute(m)?.route, visit, restart);
    const nexthops = sweep ? new Set<number>() : undefined;
    if (nexthops) await this.scan("list nexthops", RTM.GETNEXTHOP, 0, (m) => (m.type === RTM.NEWNEXTHOP ? ourNexthopId(m) : undefined), (id) => nexthops.add(id), () => nexthops.clear());
    await this.scan("list routes", RTM.GETROUTE, AF_INET, (m) => {
      const p = parseOurRoute(m);
      if (!p) return undefined;
      const want = this.nexthopFor(p.route, true);
      const ours = p.nh !== undefined && (!nexthops || nexthops.has(p.nh));
      if (want === undefined ? p.nh === undefined : p.nh === want && ours) return p.route;
      return this.stale(p.route, ours ? p.nh : undefined);
    }, visit, restart);
    if (!nexthops) return;
    // What is left after the routes that use them: a second dump, not a set of every route's id.
    await this.scan("list routes", RTM.GETROUTE, AF_INET, (m) => {
      const nh = ourRouteNexthopId(m);
      if (nh !== undefined) nexthops.delete(nh);
      return undefined;
    }, () => undefined, () => undefined);
    for (const id of nexthops) {
      const dst = dstOfNexthopId(id);
      if (dst) visit(this.stale({ dst, oif: 0, onlink: false }, id));
    }
    this.swept = true;
  }

  private async listOurRoutes(): Promise<Route[]> {
    const out: Route[] = [];
    await this.scanOurRoutes((r) => out.push(r), () => { out.length = 0; }, true);
    return out;
  }

  /** The nexthop of ours that goes when route `r` goes: a listed route's own, or the one a put makes. */
  private nexthopOf(r: Route, nexthops: boolean): number | undefined {
    return this.staleRoutes.has(r) ? this.staleRoutes.get(r) : this.nexthopFor(r, nexthops);
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
   * left alone. A plain route that replaced one through our nexthop (a peer now reached via the
   * underlay) takes that nexthop away: nothing uses it any more.
   */
  private async addRoute(r: Route, nh: number | undefined): Promise<void> {
    const what = routeWhat(r);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await this.ch.request(`add ${what}`, encodeRoute(RTM.NEWROUTE, CREATE_EXCL, r, nh));
        return;
      } catch (err) {
        if (!errnoIs(err, EEXIST)) throw opFailed(err);
      }
      const proto = (await this.routeOwners(performance.now())).get(r.dst);
      if (proto === WEFT_RT_PROTO) {
        await this.request(`replace ${what}`, encodeRoute(RTM.NEWROUTE, NLM_F_REPLACE, r, nh));
        const old = nh === undefined && (await this.usesNexthops()) ? nexthopIdFor(r.dst) : undefined;
        if (old !== undefined && (await this.nexthop(old))?.protocol === WEFT_RT_PROTO) {
          await this.tolerateAbsent(`delete nexthop ${old}, no longer used by the route to ${r.dst}`, encodeNexthop(RTM.DELNEXTHOP, 0, old));
        }
        return;
      }
      if (proto !== undefined) {
        throw new WeftError("DATAPLANE_OP_FAILED", `add ${what}: a route to ${r.dst} with protocol ${proto} (not weft's ${WEFT_RT_PROTO}) exists; leaving it alone. Remove it if the overlay should own ${r.dst}`);
      }
      // It vanished between our add and the dump: add again.
    }
    throw new WeftError("DATAPLANE_OP_FAILED", `add ${what}: a route to ${r.dst} keeps appearing and vanishing; will retry`);
  }

  private async nexthop(id: number): Promise<ParsedNexthop | undefined> {
    try {
      const [m] = await this.ch.request(`look up nexthop ${id}`, encodeNexthop(RTM.GETNEXTHOP, 0, id));
      return m && m.type === RTM.NEWNEXTHOP ? parseNexthop(m) : undefined;
    } catch (err) {
      if (isAbsent(err)) return undefined;
      throw opFailed(err);
    }
  }

  /**
   * Our nexthop object `id` with `r`'s gateway and device: added (true), or replaced if it is ours (the
   * route using it follows at once). One with that id and another protocol is reported and left alone.
   */
  private async putNexthop(id: number, r: Route): Promise<boolean> {
    const what = `nexthop ${id} for ${routeWhat(r)}`;
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await this.ch.request(`add ${what}`, encodeNexthop(RTM.NEWNEXTHOP, CREATE_EXCL, id, r));
        return true;
      } catch (err) {
        if (!errnoIs(err, EEXIST)) throw opFailed(err);
      }
      const cur = await this.nexthop(id);
      if (!cur) continue;
      if (cur.protocol !== WEFT_RT_PROTO) {
        throw new WeftError("DATAPLANE_OP_FAILED", `add ${what}: nexthop ${id} exists with protocol ${cur.protocol} (not weft's ${WEFT_RT_PROTO}); leaving it alone. weft numbers the nexthop of the route to ${r.dst} ${id}: delete or renumber that nexthop if the overlay should own ${r.dst}`);
      }
      // A route's scope fits a nexthop with a gateway or one without, not both, so the kernel refuses to
      // turn one into the other under it: that change takes a new nexthop (the route goes with the old).
      if ((cur.gateway === undefined) !== (r.gateway === undefined)) {
        await this.tolerateAbsent(`delete ${what}`, encodeNexthop(RTM.DELNEXTHOP, 0, id));
        continue;
      }
      await this.request(`replace ${what}`, encodeNexthop(RTM.NEWNEXTHOP, NLM_F_REPLACE, id, r));
      return false;
    }
    throw new WeftError("DATAPLANE_OP_FAILED", `add ${what}: nexthop ${id} keeps appearing and vanishing; will retry`);
  }

  /**
   * Puts routes in few round trips: their nexthop objects first, where routes have them, then the
   * routes. A nexthop made for a route the kernel then refuses goes again, so no nexthop of ours is
   * left without a route (if that fails too, the next reading of the routes looks for one). One route
   * is a batch of one: the same requests.
   */
  private async putRoutes(rs: readonly Route[]): Promise<Array<unknown>> {
    const errs = new Array<unknown>(rs.length);
    const nexthops = await this.usesNexthops();
    const nh = nexthops ? rs.map((r) => this.nexthopFor(r, true)) : undefined;
    /** The nexthops this call made (not found there): a refused route takes its own with it. */
    const made: number[] = [];
    /** Requests that hit EEXIST take the one-by-one path, which decides whose the object is. */
    const settle = async (batch: number[], errors: Array<unknown>, slow: (i: number) => Promise<unknown>): Promise<void> => {
      const retry: number[] = [];
      batch.forEach((i, k) => {
        const e = errors[k];
        if (e instanceof WeftError && errnoIs(e.cause, EEXIST)) retry.push(i);
        else if (e) errs[i] = e;
      });
      await Promise.all(retry.map((i) => slow(i).catch((err: unknown) => { errs[i] = err; })));
    };
    if (nh) {
      const batch = rs.flatMap((_, i) => (nh[i] !== undefined ? [i] : []));
      const errors = await this.many(batch, (i) => nexthopLength(RTM.NEWNEXTHOP, rs[i]), (b, off, i) => writeNexthop(b, off, RTM.NEWNEXTHOP, CREATE_EXCL, nh[i]!, rs[i]), (i) => `add nexthop ${nh[i]} for ${routeWhat(rs[i]!)}`);
      batch.forEach((i, k) => { if (!errors[k]) made.push(i); });
      await settle(batch, errors, async (i) => { if (await this.putNexthop(nh[i]!, rs[i]!)) made.push(i); });
    }
    const batch = rs.flatMap((_, i) => (errs[i] ? [] : [i]));
    const errors = await this.many(batch, (i) => routeLength(rs[i]!, nh?.[i]), (b, off, i) => writeRoute(b, off, RTM.NEWROUTE, CREATE_EXCL, rs[i]!, nh?.[i]), (i) => `add ${routeWhat(rs[i]!)}`);
    await settle(batch, errors, (i) => this.addRoute(rs[i]!, nh?.[i]));
    const orphans = made.filter((i) => errs[i]);
    const left = await this.many(orphans, () => nexthopLength(RTM.DELNEXTHOP), (b, off, i) => writeNexthop(b, off, RTM.DELNEXTHOP, 0, nh![i]!), (i) => `delete nexthop ${nh![i]}`, true);
    if (left.some((e) => e)) this.swept = false;
    return errs;
  }

  /** Removes many routes, and the nexthops of ours that go with them, in few round trips. */
  private async removeRoutes(rs: readonly Route[]): Promise<Array<unknown>> {
    const errs = await this.many(rs, () => ROUTE_DELETION_LENGTH, (b, off, r) => writeRouteDeletion(b, off, 0, r.dst), (r) => `delete route ${r.dst}`, true);
    const nexthops = await this.usesNexthops();
    const gone: Array<{ i: number; id: number }> = [];
    for (let i = 0; i < rs.length; i++) {
      const id = errs[i] ? undefined : this.nexthopOf(rs[i]!, nexthops);
      if (id !== undefined) gone.push({ i, id });
    }
    const errors = await this.many(gone, () => nexthopLength(RTM.DELNEXTHOP), (b, off, n) => writeNexthop(b, off, RTM.DELNEXTHOP, 0, n.id), (n) => `delete nexthop ${n.id} of route ${rs[n.i]!.dst}`, true);
    gone.forEach((n, k) => { if (errors[k]) errs[n.i] = errors[k]; });
    if (errors.some((e) => e)) this.swept = false;
    return errs;
  }

  readonly routes: KernelTable<Route> = {
    kind: "route",
    list: () => this.listOurRoutes(),
    scan: (visit, restart) => this.scanOurRoutes(visit, restart),
    id: routeId,
    key: routeKey,
    // A stale route (not in the form a put makes) is never the same as the one wanted.
    same: (a, b) => routeSame(a, b) && !this.staleRoutes.has(a) && !this.staleRoutes.has(b),
    put: async (r) => {
      const [err] = await this.putRoutes([r]);
      if (err) throw err;
    },
    remove: async (r) => {
      const [err] = await this.removeRoutes([r]);
      if (err) throw err;
    },
    putMany: (rs) => this.putRoutes(rs),
    removeMany: (rs) => this.removeRoutes(rs),
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
