// Which lease holds each backend attribute that must be unique in the cluster,
// kept in memory and fed by the store's events (as SubnetIndex). Two leases
// with one VTEP MAC, WireGuard key or (VXLAN, host-gw) public IP make every
// agent's forwarding for both ambiguous, so the first holder keeps it.
import { uniqueAttrs, type Lease, type LeaseEvent, type UniqueAttr } from "../../lib/src/lease.js";
import { appendAll } from "../../lib/src/arrays.js";
import type { LeaseStore } from "./store/lease-store.js";

export class AttrIndex {
  /** Attribute key -> subnet -> the lease there (normally one; more only if leases older than this rule collide). */
  readonly #holders = new Map<string, Map<string, Lease>>();
  /** Subnet -> the keys its lease holds, to drop them on change or removal. */
  readonly #bySubnet = new Map<string, string[]>();

  static async load(store: LeaseStore): Promise<AttrIndex> {
    const index = new AttrIndex();
    let loading = true;
    const early: LeaseEvent[] = [];
    const unsubscribe = store.subscribe((evs) => (loading ? appendAll(early, evs) : index.apply(evs)));
    let listed;
    try {
      listed = await store.listLeases();
    } catch (err) {
      unsubscribe();
      throw err;
    }
    for (const l of listed.leases) index.#put(l);
    loading = false;
    index.apply(early.filter((e) => e.revision > listed.revision));
    return index;
  }

  apply(events: readonly LeaseEvent[]): void {
    for (const e of events) {
      if (e.type === "removed") this.#drop(e.lease.subnet);
      else this.#put(e.lease);
    }
  }

  /** Leases other than `nodeName`'s that hold one of `attrs`, with the attribute. */
  holders(nodeName: string, attrs: readonly UniqueAttr[]): { attr: UniqueAttr; lease: Lease }[] {
    const out: { attr: UniqueAttr; lease: Lease }[] = [];
    for (const attr of attrs) {
      for (const l of this.#holders.get(attr.key)?.values() ?? []) if (l.nodeName !== nodeName) out.push({ attr, lease: l });
    }
    return out;
  }

  #put(l: Lease): void {
    this.#drop(l.subnet);
    const keys = uniqueAttrs(l.publicIP, l.attrs).map((a) => a.key);
    for (const k of keys) {
      let m = this.#holders.get(k);
      if (!m) this.#holders.set(k, (m = new Map()));
      m.set(l.subnet, l);
    }
    this.#bySubnet.set(l.subnet, keys);
  }

  #drop(subnet: string): void {
    for (const k of this.#bySubnet.get(subnet) ?? []) {
      const m = this.#holders.get(k);
      m?.delete(subnet);
      if (m?.size === 0) this.#holders.delete(k);
    }
    this.#bySubnet.delete(subnet);
  }
}
