// In-memory Dataplane for unit tests of the reconciler, backends and agent. It
// keeps kernel-like tables, can be told to fail chosen operations, and lets a
// test play kernel notifications.
import { WeftError } from "../../../lib/src/errors.js";
import {
  fdbKey, fdbSame, neighbourId, neighbourKey, neighbourSame, routeId, routeKey, routeSame,
  type Address, type Dataplane, type FdbEntry, type KernelChange, type KernelTable, type Link, type LinkChange, type LinkSpec, type Neighbour, type Route,
} from "../../src/dataplane/dataplane.js";

export class FakeDataplane implements Dataplane {
  readonly links = new Map<string, Link>();
  readonly addresses: Address[] = [];
  readonly routeMap = new Map<string, Route>();
  /**
   * Routes someone else owns (other protocol): never listed (routes.list returns ours only, as the
   * real dataplane filters by protocol), never replaced (put fails, as the real one does), but
   * removing a route of that dst deletes them like a careless kernel call would, so a test notices
   * if the reconciler ever removes one.
   */
  readonly foreignRoutes = new Map<string, Route>();
  readonly neighbourMap = new Map<string, Neighbour>();
  readonly fdbMap = new Map<string, FdbEntry>();
  readonly calls: string[] = [];
  /** Operation names (e.g. "putRoute") that throw DATAPLANE_OP_FAILED while listed. */
  readonly failing = new Set<string>();
  /** While set, listing routes waits for it: a test holds a full pass in its reading of the kernel. */
  listGate: Promise<void> | undefined;
  private readonly listeners = new Set<(c: KernelChange) => void>();
  private nextIndex = 10;

  private op(name: string, detail: string): void {
    this.calls.push(`${name} ${detail}`);
    if (this.failing.has(name)) throw new WeftError("DATAPLANE_OP_FAILED", `${name} ${detail}: injected failure`);
  }

  async getLink(name: string) { return this.links.get(name); }
  async listLinks() { return [...this.links.values()]; }

  async createLink(spec: LinkSpec): Promise<void> {
    this.op("createLink", spec.name);
    if (this.links.has(spec.name)) throw new WeftError("ALREADY_EXISTS", `create ${spec.kind} ${spec.name}: exists`);
    this.links.set(spec.name, {
      index: this.nextIndex++, name: spec.name, mac: spec.mac ?? "0e:00:00:00:ff:ff", mtu: spec.mtu, up: false, kind: spec.kind,
      alias: spec.alias, ...(spec.vxlan ? { vxlan: spec.vxlan } : {}),
    });
  }

  async setLink(index: number, c: LinkChange): Promise<void> {
    this.op("setLink", `${index} ${Object.keys(c).join(",")}`);
    for (const [name, l] of this.links) {
      if (l.index === index) this.links.set(name, { ...l, ...c, up: c.up ?? l.up });
    }
  }

  async deleteLink(index: number): Promise<void> {
    this.op("deleteLink", String(index));
    for (const [name, l] of this.links) if (l.index === index) this.links.delete(name);
    // As the kernel does: a device takes its addresses, neighbours, FDB entries and routes with it.
    for (let i = this.addresses.length - 1; i >= 0; i--) if (this.addresses[i]!.index === index) this.addresses.splice(i, 1);
    for (const k of [...this.neighbourMap.keys()]) if (this.neighbourMap.get(k)!.index === index) this.neighbourMap.delete(k);
    for (const k of [...this.fdbMap.keys()]) if (this.fdbMap.get(k)!.index === index) this.fdbMap.delete(k);
    for (const k of [...this.routeMap.keys()]) if (this.routeMap.get(k)!.oif === index) this.routeMap.delete(k);
  }

  async listAddresses(index?: number) { return this.addresses.filter((a) => index === undefined || a.index === index); }
  async addAddress(a: Address) {
    this.op("addAddress", a.ip);
    if (!this.addresses.some((x) => x.index === a.index && x.ip === a.ip)) this.addresses.push(a);
  }
  async deleteAddress(a: Address) {
    this.op("deleteAddress", a.ip);
    const i = this.addresses.findIndex((x) => x.index === a.index && x.ip === a.ip);
    if (i >= 0) this.addresses.splice(i, 1);
  }
  async defaultRouteIndex() { return undefined; }

  readonly routes: KernelTable<Route> = {
    kind: "route",
    list: async () => {
      this.op("listRoutes", "");
      await this.listGate;
      return [...this.routeMap.values()];
    },
    id: routeId,
    key: routeKey,
    same: routeSame,
    put: async (r) => {
      this.op("putRoute", r.dst);
      if (this.foreignRoutes.has(r.dst)) throw new WeftError("DATAPLANE_OP_FAILED", `replace route ${r.dst}: a foreign route exists; leaving it alone`);
      this.routeMap.set(r.dst, r);
    },
    remove: async (r) => { this.op("removeRoute", r.dst); this.routeMap.delete(r.dst); this.foreignRoutes.delete(r.dst); },
  };

  neighbours(index: number): KernelTable<Neighbour> {
    return {
      kind: "neighbour",
      list: async () => [...this.neighbourMap.values()].filter((n) => n.index === index),
      id: neighbourId,
      key: neighbourKey,
      same: neighbourSame,
      put: async (n) => { this.op("putNeighbour", n.ip); this.neighbourMap.set(neighbourId(n), n); },
      remove: async (n) => { this.op("removeNeighbour", n.ip); this.neighbourMap.delete(neighbourId(n)); },
    };
  }

  fdb(index: number): KernelTable<FdbEntry> {
    return {
      kind: "fdb",
      list: async () => [...this.fdbMap.values()].filter((f) => f.index === index),
      id: fdbKey,
      key: fdbKey,
      same: fdbSame,
      put: async (e) => {
        this.op("putFdb", e.mac);
        // NLM_F_REPLACE on a VXLAN FDB entry replaces the MAC's remote.
        for (const [k, v] of this.fdbMap) if (v.index === e.index && v.mac === e.mac) this.fdbMap.delete(k);
        this.fdbMap.set(fdbKey(e), e);
      },
      remove: async (e) => { this.op("removeFdb", e.mac); this.fdbMap.delete(fdbKey(e)); },
    };
  }

  watch(listener: (c: KernelChange) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** How often a bulk pass muted the object notifications. */
  mutes = 0;

  muteObjectChanges(): () => void {
    this.mutes++;
    return () => this.emit({ kind: "lost", why: "muted" });
  }

  /** Plays a kernel notification to the watchers. */
  emit(c: KernelChange): void {
    for (const l of this.listeners) l(c);
  }

  close() {}
}
