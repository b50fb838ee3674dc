// The storage seam. A store keeps leases, reservations and the history of
// freed subnets, numbers every change with a revision, and keeps a bounded log
// of recent events for watchers that resume. It holds no allocation policy:
// that lives in lease-manager.ts and allocator.ts.
import type { BackendAttrs, Lease, LeaseEvent } from "../../../lib/src/lease.js";

export interface NewLease {
  readonly subnet: string;
  readonly nodeName: string;
  readonly publicIP: string;
  readonly attrs: BackendAttrs;
  readonly expiresAt: number;
  /** The agent instance that holds it; "" or absent: not bound to one. */
  readonly instanceId?: string;
}

export interface Reservation {
  readonly subnet: string;
  readonly nodeName: string;
}

/** A subnet whose lease ended; `revision` orders frees (higher = more recent). */
export interface FreedSubnet {
  readonly subnet: string;
  readonly nodeName: string;
  readonly revision: number;
}

/** Kept with the removal event; "revoked: <text>" carries an operator's reason. */
export type RemoveReason = "released" | "revoked" | "expired" | "replaced" | `revoked: ${string}`;

export type LeaseChange = Partial<Pick<NewLease, "publicIP" | "attrs" | "expiresAt" | "instanceId">>;

export interface LeaseStore {
  /** A stable random identity of this store's data: revisions only compare within one store. */
  storeId(): Promise<string>;
  /** Live leases and the revision they reflect. */
  listLeases(): Promise<{ leases: Lease[]; revision: number }>;
  getLeaseByNode(nodeName: string): Promise<Lease | undefined>;
  listReservations(): Promise<Reservation[]>;
  /** Every subnet ever freed, with who held it last. */
  listFreed(): Promise<FreedSubnet[]>;
  /** Inserts iff neither the subnet nor the node holds a lease; undefined on conflict. */
  create(lease: NewLease): Promise<Lease | undefined>;
  /** Changes a lease iff `nodeName` still holds `subnet`; undefined otherwise. */
  update(subnet: string, nodeName: string, change: LeaseChange): Promise<Lease | undefined>;
  /** Deletes iff held by `nodeName` (any holder when undefined); returns what was removed. */
  remove(subnet: string, nodeName: string | undefined, reason: RemoveReason): Promise<Lease | undefined>;
  /** Deletes every lease with 0 < expiresAt <= now and returns them. */
  expire(now: number): Promise<Lease[]>;
  /** When a lease server last said it was serving this store (markAlive); undefined for a new store. */
  lastAlive(): Promise<number | undefined>;
  markAlive(now: number): Promise<void>;
  /** Throws ALREADY_EXISTS when the subnet or the node is reserved differently. */
  putReservation(r: Reservation): Promise<void>;
  deleteReservation(subnet: string): Promise<boolean>;
  /** Events with revision > from, oldest first. Throws REVISION_COMPACTED when they are no longer kept. */
  eventsSince(from: number): Promise<LeaseEvent[]>;
  /** Called with each committed batch of events, in revision order. */
  subscribe(listener: (events: readonly LeaseEvent[]) => void): () => void;
  /**
   * For a store fed by a watch (etcd): resolves once every change committed from now on reaches the
   * subscribers, so a list taken after it leaves no gap. Absent: subscribe() is in effect at once.
   */
  subscribed?(): Promise<void>;
  close(): Promise<void>;
}
