// The other nodes' leases, keyed by subnet (Flannel's LeaseWatcher). A fresh
// snapshot is collected on the side and swapped in only when it is complete,
// so a watch that breaks mid-snapshot never makes peers look vanished and
// nothing is pruned from a partial view.
import type { Lease, LeaseEvent } from "../../lib/src/lease.js";

export class PeerTable {
  private peers = new Map<string, Lease>();
  private pending: Map<string, Lease> | undefined;
  /** True once a complete snapshot has been applied. */
  synced = false;

  constructor(private readonly selfNodeName: string) {}

  private isSelf(l: Lease): boolean {
    return l.nodeName === this.selfNodeName;
  }

  /** Adds one snapshot chunk, starting a new collection if none is open; returns whether it started one. */
  addSnapshotLeases(leases: readonly Lease[]): boolean {
    const began = this.pending === undefined;
    this.pending ??= new Map();
    for (const l of leases) if (!this.isSelf(l)) this.pending.set(l.subnet, l);
    return began;
  }

  /** Swaps the collected snapshot in (an empty one if no chunk came). */
  completeSnapshot(): void {
    this.peers = this.pending ?? new Map<string, Lease>();
    this.pending = undefined;
    this.synced = true;
  }

  /** Drops a half-received snapshot (the stream broke). */
  abandonSnapshot(): void {
    this.pending = undefined;
  }

  get collecting(): boolean {
    return this.pending !== undefined;
  }

  applyEvent(e: LeaseEvent): boolean {
    if (this.isSelf(e.lease)) return false;
    if (e.type === "removed") {
      const cur = this.peers.get(e.lease.subnet);
      // A late removal of a lease that has since been re-taken by another node must not drop the new one.
      if (!cur || cur.nodeName !== e.lease.nodeName) return false;
      this.peers.delete(e.lease.subnet);
      return true;
    }
    const changed = !sameLease(this.peers.get(e.lease.subnet), e.lease);
    this.peers.set(e.lease.subnet, e.lease);
    return changed;
  }

  list(): Lease[] {
    return [...this.peers.values()];
  }

  get size(): number {
    return this.peers.size;
  }
}

function sameLease(a: Lease | undefined, b: Lease): boolean {
  return !!a && a.nodeName === b.nodeName && a.publicIP === b.publicIP && JSON.stringify(a.attrs) === JSON.stringify(b.attrs);
}
