// The kernel seam. Everything the agent changes in the kernel goes through a
// Dataplane, so the reconciler and backends can be tested against a fake and
// the real implementation (rtnetlink) stays one file. Every mutating call is
// idempotent: creating what exists (compatibly) and deleting what is absent
// both succeed.

export interface VxlanLinkSpec {
  readonly name: string;
  readonly vni: number;
  /** Underlay source address of the tunnel (the interface's address). */
  readonly localIP: string;
  /** ifindex of the underlay interface. */
  readonly parentIndex: number;
  readonly port: number;
  readonly learning: boolean;
  readonly gbp: boolean;
  readonly mtu: number;
  /** Wanted MAC, "aa:bb:cc:dd:ee:ff". */
  readonly mac: string;
}

export interface VxlanInfo {
  readonly vni: number;
  readonly localIP: string | undefined;
  readonly parentIndex: number | undefined;
  readonly port: number;
  readonly learning: boolean;
  readonly gbp: boolean;
}

export interface Link {
  readonly index: number;
  readonly name: string;
  readonly mac: string;
  readonly mtu: number;
  readonly up: boolean;
  readonly kind: string | undefined;
  readonly vxlan?: VxlanInfo;
}

export interface EnsureLinkResult {
  readonly link: Link;
  /** "created", "reused" (compatible, untouched or only MTU/MAC fixed) or "recreated" (was incompatible). */
  readonly outcome: "created" | "reused" | "recreated";
}

export interface Address {
  readonly index: number;
  readonly ip: string;
  readonly prefix: number;
}

/** An onlink IPv4 route in the main table, tagged with our protocol number. */
export interface Route {
  /** "10.244.2.0/24" */
  readonly dst: string;
  readonly gateway: string;
  readonly oif: number;
  readonly onlink: boolean;
}

/** A permanent ARP entry on our device. */
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

export interface Dataplane {
  getLink(name: string): Promise<Link | undefined>;
  listLinks(): Promise<Link[]>;
  /** Create, reuse when compatible, recreate an incompatible vxlan link; refuses (CONFIG_INVALID) a non-vxlan link of that name. Fixes MTU and MAC; sets it up. */
  ensureVxlan(spec: VxlanLinkSpec): Promise<EnsureLinkResult>;
  deleteLink(name: string): Promise<void>;
  listAddresses(index?: number): Promise<Address[]>;
  addAddress(a: Address): Promise<void>;
  deleteAddress(a: Address): Promise<void>;
  /** Routes carrying our protocol number (all devices), main table, IPv4. */
  listRoutes(): Promise<Route[]>;
  /** Adds the route, or replaces one of ours with the same dst; never replaces a route with another protocol (fails instead). */
  replaceRoute(r: Route): Promise<void>;
  deleteRoute(r: Route): Promise<void>;
  /** Default-route interface index, if any. */
  defaultRouteIndex(): Promise<number | undefined>;
  /** Permanent IPv4 neighbours on the device. */
  listNeighbours(index: number): Promise<Neighbour[]>;
  replaceNeighbour(n: Neighbour): Promise<void>;
  deleteNeighbour(n: Neighbour): Promise<void>;
  /** Permanent FDB entries with a remote dst on the device. */
  listFdb(index: number): Promise<FdbEntry[]>;
  replaceFdb(e: FdbEntry): Promise<void>;
  deleteFdb(e: FdbEntry): Promise<void>;
  close(): void;
}

/** Our routes carry this rtnetlink protocol number (unassigned in rt_protos), so pruning never touches a route we did not create. */
export const WEFT_RT_PROTO = 0x57; // 87, 'W'
