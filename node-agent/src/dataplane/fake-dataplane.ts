// In-memory Dataplane for unit tests of the reconciler and backends. It keeps
// kernel-like tables and can be told to fail chosen operations.
import { WeftError } from "../../../lib/src/errors.js";
import type { Address, Dataplane, EnsureLinkResult, FdbEntry, Link, Neighbour, Route, VxlanLinkSpec } from "./dataplane.js";

export class FakeDataplane implements Dataplane {
  readonly links = new Map<string, Link>();
  readonly addresses: Address[] = [];
  readonly routes = new Map<string, Route>();
  /**
   * Routes someone else owns (other protocol): never listed (listRoutes returns ours only, as the
   * real dataplane filters by protocol), never replaced (replaceRoute fails, as the real one does),
   * but deleteRoute removes them by dst like a careless kernel call would, so a test notices if the
   * reconciler ever deletes one.
   */
  readonly foreignRoutes = new Map<string, Route>();
  readonly neighbours = new Map<string, Neighbour>();
  readonly fdb = new Map<string, FdbEntry>();
  readonly calls: string[] = [];
  /** Operation names (e.g. "replaceRoute") that throw DATAPLANE_OP_FAILED while listed. */
  readonly failing = new Set<string>();
  private nextIndex = 10;

  private op(name: string, detail: string): void {
    this.calls.push(`${name} ${detail}`);
    if (this.failing.has(name)) throw new WeftError("DATAPLANE_OP_FAILED", `${name} ${detail}: injected failure`);
  }

  async getLink(name: string) { return this.links.get(name); }
  async listLinks() { return [...this.links.values()]; }

  async ensureVxlan(spec: VxlanLinkSpec): Promise<EnsureLinkResult> {
    this.op("ensureVxlan", spec.name);
    const cur = this.links.get(spec.name);
    if (cur && cur.kind !== "vxlan") throw new WeftError("CONFIG_INVALID", `interface ${spec.name} exists and is a ${cur.kind ?? "plain"} link, not vxlan`);
    const compatible = cur?.vxlan && cur.vxlan.vni === spec.vni && cur.vxlan.localIP === spec.localIP && cur.vxlan.port === spec.port;
    const link: Link = {
      index: compatible ? cur!.index : this.nextIndex++, name: spec.name, mac: spec.mac, mtu: spec.mtu, up: true, kind: "vxlan",
      vxlan: { vni: spec.vni, localIP: spec.localIP, parentIndex: spec.parentIndex, port: spec.port, learning: spec.learning, gbp: spec.gbp },
    };
    this.links.set(spec.name, link);
    return { link, outcome: !cur ? "created" : compatible ? "reused" : "recreated" };
  }

  async deleteLink(name: string) { this.op("deleteLink", name); this.links.delete(name); }
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
  async listRoutes() { this.op("listRoutes", ""); return [...this.routes.values()]; }
  async replaceRoute(r: Route) {
    this.op("replaceRoute", r.dst);
    if (this.foreignRoutes.has(r.dst)) throw new WeftError("DATAPLANE_OP_FAILED", `replace route ${r.dst}: a foreign route exists; leaving it alone`);
    this.routes.set(r.dst, r);
  }
  async deleteRoute(r: Route) { this.op("deleteRoute", r.dst); this.routes.delete(r.dst); this.foreignRoutes.delete(r.dst); }
  async defaultRouteIndex() { return undefined; }
  async listNeighbours(index: number) { return [...this.neighbours.values()].filter((n) => n.index === index); }
  async replaceNeighbour(n: Neighbour) { this.op("replaceNeighbour", n.ip); this.neighbours.set(`${n.index}|${n.ip}`, n); }
  async deleteNeighbour(n: Neighbour) { this.op("deleteNeighbour", n.ip); this.neighbours.delete(`${n.index}|${n.ip}`); }
  async listFdb(index: number) { return [...this.fdb.values()].filter((f) => f.index === index); }
  async replaceFdb(e: FdbEntry) {
    this.op("replaceFdb", e.mac);
    // NLM_F_REPLACE on a VXLAN FDB entry replaces the MAC's remote.
    for (const [k, v] of this.fdb) if (v.index === e.index && v.mac === e.mac) this.fdb.delete(k);
    this.fdb.set(`${e.index}|${e.mac}|${e.dst}`, e);
  }
  async deleteFdb(e: FdbEntry) { this.op("deleteFdb", e.mac); this.fdb.delete(`${e.index}|${e.mac}|${e.dst}`); }
  close() {}
}
