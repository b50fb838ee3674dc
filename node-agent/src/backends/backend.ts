// The backend seam: how this node's overlay device is set up and which kernel
// objects each remote peer needs. Backends compute; the Reconciler applies.
// host-gw and WireGuard (later) implement the same interface.
import type { BackendAttrs, Lease } from "../../../lib/src/lease.js";
import type { BackendType, NetworkConfig } from "../../../lib/src/net-config.js";
import type { FdbEntry, Neighbour, Route } from "../dataplane/dataplane.js";

export interface ExternalInterface {
  readonly index: number;
  readonly name: string;
  readonly mtu: number;
  /** The interface's own IPv4 address (tunnel source). */
  readonly ip: string;
  /** The address advertised to peers (--public-ip, else ip). */
  readonly publicIP: string;
}

export interface LocalNode {
  readonly nodeName: string;
  readonly network: NetworkConfig;
  readonly iface: ExternalInterface;
}

/** Everything the reconciler may touch: routes with our protocol, and neighbours/FDB on `ownedLinks` only. */
export interface DesiredState {
  readonly ownedLinks: readonly number[];
  readonly routes: readonly DesiredEntry<Route>[];
  readonly neighbours: readonly DesiredEntry<Neighbour>[];
  readonly fdb: readonly DesiredEntry<FdbEntry>[];
  /** Peers (by subnet) the backend could not use, with the reason. */
  readonly rejected: ReadonlyMap<string, string>;
}

export interface DesiredEntry<T> {
  /** The peer's subnet: what a failure counts against. */
  readonly peer: string;
  readonly value: T;
}

export interface Backend {
  readonly type: BackendType;
  /** Create or adopt the device; returns the attributes to publish in our lease. */
  init(local: LocalNode): Promise<BackendAttrs>;
  /** Address the device for our lease (after AcquireLease). */
  configureSubnet(lease: Lease): Promise<void>;
  /** MTU for pods (FLANNEL_MTU). */
  mtu(): number;
  /** Pure: the kernel objects wanted for these remote peers. */
  desired(peers: readonly Lease[]): DesiredState;
}
