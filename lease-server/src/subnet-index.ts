// What the allocator needs to know, kept in memory and fed by the store's
// events: which subnets are leased, and who freed each subnet and when. It
// saves every acquisition a read of the whole lease table, which made
// acquisitions slow down linearly with the number of leases.
import type { LeaseEvent } from "../../lib/src/lease.js";
import { appendAll } from "../../lib/src/arrays.js";
import type { LeaseStore } from "./store/lease-store.js";
import { subnetIp } from "./allocator.js";

export interface FreedInfo {
  readonly nodeName: string;
  readonly revision: number;
}

export class SubnetIndex {
  readonly leased = new Set<number>();
  /** Subnet network address -> who held it last and the revision it was freed at. */
  readonly freed = new Map<number, FreedInfo>();
  /** Node name -> the subnet it freed most recently. */
  readonly #lastFreedBy = new Map<string, number>();

  /** Subscribes to the store first, then loads, so nothing committed in between is missed. */
  static async load(store: LeaseStore): Promise<SubnetIndex> {
    const index = new SubnetIndex();
    let loading = true;
    const early: LeaseEvent[] = [];
    const unsubscribe = store.subscribe((evs) => (loading ? appendAll(early, evs) : index.apply(evs)));
    let loaded;
    try {
      loaded = await Promise.all([store.listLeases(), store.listFreed()]);
    } catch (err) {
      unsubscribe();
      throw err;
    }
    const [{ leases, revision }, freed] = loaded;
    for (const f of freed) index.#free(subnetIp(f.subnet), f.nodeName, f.revision);
    for (const l of leases) index.leased.add(subnetIp(l.subnet));
    loading = false;
    index.apply(early.filter((e) => e.revision > revision));
    return index;
  }

  apply(events: readonly LeaseEvent[]): void {
    for (const e of events) {
      const ip = subnetIp(e.lease.subnet);
      if (e.type === "removed") {
        this.leased.delete(ip);
        this.#free(ip, e.lease.nodeName, e.revision);
      } else this.leased.add(ip);
    }
  }

  #free(ip: number, nodeName: string, revision: number): void {
    const prev = this.freed.get(ip);
    if (prev && prev.revision > revision) return;
    this.freed.set(ip, { nodeName, revision });
    const mine = this.#lastFreedBy.get(nodeName);
    if (mine === undefined || (this.freed.get(mine)?.revision ?? 0) <= revision) this.#lastFreedBy.set(nodeName, ip);
  }

  /** The subnet `nodeName` freed most recently, if nobody else held it since. */
  lastFreedBy(nodeName: string): number | undefined {
    const ip = this.#lastFreedBy.get(nodeName);
    return ip !== undefined && this.freed.get(ip)?.nodeName === nodeName ? ip : undefined;
  }
}
