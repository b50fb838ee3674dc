// The other nodes' leases, keyed by subnet (Flannel's LeaseWatcher). A fresh
// snapshot is collected on the side and swapped in only when it is complete,
// so a watch that breaks mid-snapshot never makes peers look vanished and
// nothing is pruned from a partial view.
//
// First holder wins: a lease claiming a VTEP MAC, WireGuard key or (VXLAN,
// host-gw) public IP that a peer in the table already holds is kept aside
// with the reason, and the holder stays programmed; a newcomer (a clone, or a
// node lying in its lease) can never tear down a working peer. It is admitted
// once the holder's lease is gone. The lease server refuses such leases too;
// this covers older servers and leases written to etcd directly.
import { uniqueAttrs, type Lease, type LeaseEvent, type UniqueAttr } from "../../lib/src/lease.js";

export interface PeerConflict {
  readonly lease: Lease;
  /** The peer that keeps the attribute. */
  readonly holder: Lease;
  readonly detail: string;
}

/** One subnet's lease before and after a change (undefined: none). */
export interface PeerChange {
  readonly before: Lease | undefined;
  readonly after: Lease | undefined;
}

export class PeerTable {
  private peers = new Map<string, Lease>();
  private pending: Map<string, Lease> | undefined;
  /** Unique attribute -> subnet of the peer holding it, per kind (keyed by the leases' own strings: no key string per peer). */
  private holders = new Map<UniqueAttr["kind"], Map<string, string>>();
  /** Leases kept aside (by subnet) because a peer in the table holds one of their attributes. */
  private aside = new Map<string, PeerConflict>();
  /**
   * The subnets changed since takeChanges() last ran, each with the lease it had before (undefined:
   * none); undefined when a snapshot replaced the whole table since (or before the first call).
   */
  private changes: Map<string, Lease | undefined> | undefined;
  /** True once a complete snapshot has been applied. */
  synced = false;

  constructor(private readonly selfNodeName: string, private readonly onConflict?: (c: PeerConflict) => void) {}

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
    const fresh = [...(this.pending ?? new Map<string, Lease>()).values()];
    this.pending = undefined;
    // Peers already programmed come first, so they keep what they hold; then the older lease changes.
    const had = (l: Lease) => this.peers.get(l.subnet)?.nodeName === l.nodeName;
    fresh.sort((a, b) => Number(had(b)) - Number(had(a)) || a.revision - b.revision);
    this.peers = new Map();
    this.holders = new Map();
    this.aside = new Map();
    this.changes = undefined;
    for (const l of fresh) this.admit(l);
    this.synced = true;
  }

  /**
   * What changed since the last call, as (before, after) pairs per subnet (a renewal that changes
   * nothing programmed is not a change); undefined if a snapshot replaced the table since, or on
   * the first call: then only the whole table says what is wanted.
   */
  takeChanges(): PeerChange[] | undefined {
    const c = this.changes;
    this.changes = new Map();
    if (c === undefined) return undefined;
    const out: PeerChange[] = [];
    for (const [subnet, before] of c) {
      const after = this.peers.get(subnet);
      if (before !== after) out.push({ before, after });
    }
    return out;
  }

  private noteChange(subnet: string): void {
    if (this.changes !== undefined && !this.changes.has(subnet)) this.changes.set(subnet, this.peers.get(subnet));
  }

  /** Adds `l` to the table, or sets it aside when a peer holds one of its attributes; returns whether it was added. */
  private admit(l: Lease): boolean {
    for (const a of uniqueAttrs(l.publicIP, l.attrs)) {
      const holder = this.peers.get(this.holders.get(a.kind)?.get(a.value) ?? "");
      if (holder && holder.subnet !== l.subnet) {
        const c = { lease: l, holder, detail: `${a.label} is already held by ${holder.nodeName} (${holder.subnet}); ${l.nodeName} is not programmed until that lease is gone` };
        const before = this.aside.get(l.subnet);
        this.aside.set(l.subnet, c);
        if (before?.detail !== c.detail) this.onConflict?.(c);
        return false;
      }
    }
    this.aside.delete(l.subnet);
    this.noteChange(l.subnet);
    this.peers.set(l.subnet, l);
    for (const a of uniqueAttrs(l.publicIP, l.attrs)) {
      let m = this.holders.get(a.kind);
      if (!m) this.holders.set(a.kind, (m = new Map()));
      m.set(a.value, l.subnet);
    }
    return true;
  }

  /** Takes the lease on `subnet` out of the table (its attributes are free again). */
  private drop(subnet: string): void {
    const l = this.peers.get(subnet);
    if (!l) return;
    this.noteChange(subnet);
    this.peers.delete(subnet);
    for (const a of uniqueAttrs(l.publicIP, l.attrs)) {
      const m = this.holders.get(a.kind);
      if (m?.get(a.value) === subnet) m.delete(a.value);
    }
  }

  /** Leases set aside waiting for another to release what they claim; admits those that now can. */
  private readmit(): boolean {
    let changed = false;
    for (const c of [...this.aside.values()]) changed = this.admit(c.lease) || changed;
    return changed;
  }

  /** The leases set aside, with why (for /v1/peers and logs). */
  conflicts(): PeerConflict[] {
    return [...this.aside.values()];
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
    const subnet = e.lease.subnet;
    if (e.type === "removed") {
      const asideNow = this.aside.get(subnet);
      if (asideNow?.lease.nodeName === e.lease.nodeName) this.aside.delete(subnet);
      const cur = this.peers.get(subnet);
      // A late removal of a lease that has since been re-taken by another node must not drop the new one.
      if (!cur || cur.nodeName !== e.lease.nodeName) return false;
      this.drop(subnet);
      this.readmit();
      return true;
    }
    const cur = this.peers.get(subnet);
    if (sameLease(cur, e.lease)) {
      this.peers.set(subnet, e.lease);
      return false;
    }
    this.drop(subnet);
    const added = this.admit(e.lease);
    // It may have let go of an attribute another lease was waiting for.
    const others = cur ? this.readmit() : false;
    return added || !!cur || others;
  }

  list(): Lease[] {
    return [...this.peers.values()];
  }

  get(subnet: string): Lease | undefined {
    return this.peers.get(subnet);
  }

  get size(): number {
    return this.peers.size;
  }
}

function sameLease(a: Lease | undefined, b: Lease): boolean {
  return !!a && a.nodeName === b.nodeName && a.publicIP === b.publicIP && JSON.stringify(a.attrs) === JSON.stringify(b.attrs);
}
