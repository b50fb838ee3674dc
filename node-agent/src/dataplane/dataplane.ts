// The kernel seam. Everything the agent changes in the kernel goes through a
// Dataplane, so the reconciler and backends can be tested against a fake and
// the real implementation (rtnetlink) stays behind one interface. It knows
// nothing of VXLAN or host-gw: links are created from a spec, and the objects
// the reconciler keeps in line (routes, ARP entries, FDB entries) are tables
// with the same five operations. A WireGuard backend adds its peer table
// without changing the reconciler. Every mutating call is idempotent:
// creating what exists (compatibly) and deleting what is absent both succeed.

export interface VxlanInfo {
  readonly vni: number;
  /** Underlay source address of the tunnel (the interface's address). */
  readonly localIP: string;
  /** ifindex of the underlay interface. */
  readonly parentIndex: number;
  readonly port: number;
  readonly learning: boolean;
  readonly gbp: boolean;
}

export interface LinkSpec {
  readonly name: string;
  /** rtnetlink link kind, e.g. "vxlan". */
  readonly kind: string;
  readonly mtu: number;
  /** "aa:bb:cc:dd:ee:ff"; the kernel picks one when absent. */
  readonly mac?: string;
  /** IFLA_IFALIAS: marks the device as weft's (see owned-devices.ts). */
  readonly alias: string;
  readonly vxlan?: VxlanInfo;
}

export interface LinkChange {
  readonly mtu?: number;
  readonly mac?: string;
  readonly up?: boolean;
  readonly alias?: string;
}

export interface Link {
  readonly index: number;
  readonly name: string;
  readonly mac: string;
  readonly mtu: number;
  /** IFF_UP (administratively up). */
  readonly up: boolean;
  readonly kind: string | undefined;
  readonly alias?: string;
  readonly parentIndex?: number;
  readonly vxlan?: VxlanInfo;
}

export interface Address {
  readonly index: number;
  readonly ip: string;
  readonly prefix: number;
}

/**
 * An IPv4 route in the main table, tagged with our protocol number: via a
 * gateway (onlink for VXLAN, where the gateway is the peer's .0 behind our
 * device) or, without a gateway, straight onto the device.
 */
export interface Route {
  /** "10.244.2.0/24" */
  readonly dst: string;
  readonly gateway?: string;
  readonly oif: number;
  readonly onlink: boolean;
}

/** A permanent ARP entry on one of our devices. */
export interface Neighbour {
  readonly index: number;
  readonly ip: string;
  readonly mac: string;
}

/** A permanent FDB entry (NTF_SELF) on our VXLAN device: MAC -> remote VTEP. */
export interface FdbEntry {
  readonly index: number;
  readonly mac: string;
  readonly dst: string;
}

/**
 * One kind of kernel object the reconciler keeps in line with the desired
 * state. `list` returns only what is ours (our route protocol, our device);
 * `put` adds or replaces the object with the same id; `remove` tolerates
 * absence.
 */
export interface KernelTable<T> {
  /** "route", "neighbour", "fdb": names operations in logs and metrics. */
  readonly kind: ObjectKind;
  list(): Promise<T[]>;
  /**
   * Optional: what list() returns, handed to `visit` one object at a time as the kernel's replies
   * arrive, so a full table is never held at once. If the kernel's dump has to run again, `restart`
   * is called first and the objects come again from the start. (NetlinkDataplane's routes: after the
   * first scan, our nexthops left without a route are listed by list() alone; see scanOurRoutes.)
   */
  scan?(visit: (o: T) => void, restart: () => void): Promise<void>;
  /** Identity: a put replaces the kernel object with the same id. */
  id(o: T): string;
  /** The whole value: objects with equal keys need no change. */
  key(o: T): string;
  /**
   * Optional: key(a) === key(b), without building the strings. With it the reconciler keeps no key
   * per wanted object (thousands of strings fewer in memory) and builds none to compare.
   */
  same?(a: T, b: T): boolean;
  put(o: T): Promise<void>;
  remove(o: T): Promise<void>;
  /**
   * Optional, for many objects at once (a full pass): as put/remove for each, in few kernel round
   * trips. Resolves with each object's error, or undefined where it succeeded; never rejects.
   */
  putMany?(os: readonly T[]): Promise<Array<unknown>>;
  removeMany?(os: readonly T[]): Promise<Array<unknown>>;
}

export type ObjectKind = "route" | "neighbour" | "fdb" | "wg_peer";

/** A change the kernel announced (rtnetlink notifications), for drift repair. */
export type KernelChange =
  | { readonly kind: "link"; readonly deleted: boolean; readonly link: Link }
  | { readonly kind: "address"; readonly deleted: boolean; readonly address: Address }
  | { readonly kind: "route"; readonly deleted: boolean; readonly value: Route; readonly ours: boolean }
  | { readonly kind: "neighbour"; readonly deleted: boolean; readonly value: Neighbour; readonly ours: boolean }
  | { readonly kind: "fdb"; readonly deleted: boolean; readonly value: FdbEntry; readonly ours: boolean }
  /** Notifications were lost (the socket overflowed) or muted (a bulk pass): assume anything changed. */
  | { readonly kind: "lost"; readonly why: "overflow" | "muted" };

export interface Dataplane {
  getLink(name: string): Promise<Link | undefined>;
  listLinks(): Promise<Link[]>;
  /** Creates a link; fails with ALREADY_EXISTS when the name is taken (the caller decides whether to adopt it). */
  createLink(spec: LinkSpec): Promise<void>;
  setLink(index: number, change: LinkChange): Promise<void>;
  deleteLink(index: number): Promise<void>;
  listAddresses(index?: number): Promise<Address[]>;
  addAddress(a: Address): Promise<void>;
  deleteAddress(a: Address): Promise<void>;
  /** Default-route interface index, if any. */
  defaultRouteIndex(): Promise<number | undefined>;
  /** Our routes (protocol WEFT_RT_PROTO, main table, any device). A put never replaces a route with another protocol (fails instead). */
  readonly routes: KernelTable<Route>;
  /** Permanent IPv4 neighbours on the device. */
  neighbours(index: number): KernelTable<Neighbour>;
  /** Permanent FDB entries with a remote dst on the device. */
  fdb(index: number): KernelTable<FdbEntry>;
  /** Calls `listener` for every relevant kernel change until the returned function is called. */
  watch(listener: (c: KernelChange) => void): () => void;
  /**
   * Stops route, ARP and FDB notifications until the returned function is called, which then tells
   * watchers that changes may have been missed ("lost"). A bulk pass would otherwise read back
   * thousands of echoes of its own changes.
   */
  muteObjectChanges(): () => void;
  close(): void;
}

/** Our routes carry this rtnetlink protocol number (unassigned in rt_protos), so pruning never touches a route we did not create. */
export const WEFT_RT_PROTO = 0x57; // 87, 'W'

export const routeId = (r: Route): string => r.dst;
export const routeKey = (r: Route): string => `${r.dst}|${r.gateway ?? ""}|${r.oif}|${r.onlink}`;
export const neighbourId = (n: Neighbour): string => `${n.index}|${n.ip}`;
export const neighbourKey = (n: Neighbour): string => `${n.index}|${n.ip}|${n.mac}`;
export const fdbKey = (f: FdbEntry): string => `${f.index}|${f.mac}|${f.dst}`;
/** routeKey(a) === routeKey(b), neighbourKey(a) === neighbourKey(b), fdbKey(a) === fdbKey(b), with no strings built. */
export const routeSame = (a: Route, b: Route): boolean => a.dst === b.dst && (a.gateway ?? "") === (b.gateway ?? "") && a.oif === b.oif && a.onlink === b.onlink;
export const neighbourSame = (a: Neighbour, b: Neighbour): boolean => a.index === b.index && a.ip === b.ip && a.mac === b.mac;
export const fdbSame = (a: FdbEntry, b: FdbEntry): boolean => a.index === b.index && a.mac === b.mac && a.dst === b.dst;
