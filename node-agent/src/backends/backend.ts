// The backend seam. A backend owns this node's overlay device (creates it,
// adopts it after a restart, repairs it after drift) and computes the kernel
// objects each remote peer needs; the Reconciler applies them, whatever the
// backend. Backends register by type in backends/index.ts.
import { contains, type Ipv4Net } from "../../../lib/src/cidr.js";
import type { BackendAttrs, Lease } from "../../../lib/src/lease.js";
import type { Logger } from "../../../lib/src/logger.js";
import type { BackendType, NetworkConfig } from "../../../lib/src/net-config.js";
import type { Dataplane, KernelChange, KernelTable } from "../dataplane/dataplane.js";
import type { AgentState } from "../state.js";
import type { WgControl } from "../wireguard/control.js";

export interface ExternalInterface {
  readonly index: number;
  readonly name: string;
  readonly mtu: number;
  /** The interface's own IPv4 address (tunnel source). */
  readonly ip: string;
  /** The connected underlay subnet of that address: peers inside it are one hop away. */
  readonly net: Ipv4Net;
  /** The address advertised to peers (--public-ip, else ip). */
  readonly publicIP: string;
}

export interface LocalNode {
  readonly nodeName: string;
  readonly network: NetworkConfig;
  readonly iface: ExternalInterface;
}

/** Why a peer is not programmed on purpose; `reason` is a stable label for metrics. */
export interface Rejection {
  readonly reason: "invalid" | "backend_mismatch" | "overlaps_own_subnet" | "outside_network" | "duplicate_vtep_mac" | "not_on_segment" | "invalid_key";
  readonly detail: string;
}

/** The `peer` of entries for this node itself (e.g. the route for the whole network), not for a remote peer. */
export const NODE_ENTRY = "";

/**
 * One wanted kernel object. The reconciler keeps its bookkeeping on the entry itself (with 15,000
 * wanted objects, one object each instead of two): make entries with desiredEntry(), so they have
 * those fields from the start, and never share one between tables.
 */
export interface DesiredEntry<T> {
  /** The peer's subnet: what a failure counts against (NODE_ENTRY: no peer). */
  readonly peer: string;
  readonly value: T;
  /** The reconciler's: the pass that first wanted it so, the last pass that wanted it, the last kernel reading that found it. */
  since?: number;
  seen?: number;
  inKernel?: number;
  /** The reconciler's, for tables without `same`: the value's key. */
  key?: string;
}

export function desiredEntry<T>(peer: string, value: T): DesiredEntry<T> {
  return { peer, value, since: 0, seen: 0, inKernel: 0 };
}

export interface TableState<T> {
  readonly table: KernelTable<T>;
  readonly entries: readonly DesiredEntry<T>[];
}

export interface DesiredState {
  /**
   * Applied in order: a peer's entries in one stage wait for its entries in
   * the earlier ones; removal runs in reverse. Each table appears once, and
   * the route table always appears (so stale routes are pruned).
   */
  readonly stages: readonly (readonly TableState<unknown>[])[];
  readonly rejected: ReadonlyMap<string, Rejection>;
  /**
   * Every pass must list the tables (WireGuard: listing the device also reads the handshakes that
   * /v1/peers and the metrics show), so a lease event gets no incremental pass.
   */
  readonly listEveryPass?: boolean;
}

export interface Backend {
  readonly type: BackendType;
  /** Device names this backend keeps; weft devices with other names are stale and removed at start-up. */
  readonly devices: readonly string[];
  /** Create or adopt the device; returns the attributes to publish in our lease. */
  init(local: LocalNode): Promise<BackendAttrs>;
  /** Address the device for our lease (after AcquireLease). */
  configureSubnet(lease: Lease): Promise<void>;
  /** Puts the device back to its spec if it drifted; returns what it fixed (empty when nothing). */
  repair(): Promise<string[]>;
  /** Whether a link or address change touches this backend's device. */
  concerns(change: KernelChange): boolean;
  /** MTU for pods (FLANNEL_MTU). */
  mtu(): number;
  /** The kernel objects wanted for these remote peers (no kernel access; VXLAN remembers who held each VTEP MAC). */
  desired(peers: readonly Lease[]): DesiredState;
  /** How traffic to the peer leaves this node ("vxlan", "direct", "host-gw", "wireguard"), for /v1/peers. */
  pathTo(peer: Lease): string;
  /**
   * The tunnel's live state per peer (WireGuard: handshakes), for /v1/peers and metrics. `fresh` asks
   * the device now; otherwise what the last pass read is enough.
   */
  peerHealth?(fresh: boolean): Promise<(peer: Lease) => PeerHealth | undefined>;
  /** Makes a new key pair and publishes its public key (WireGuard). */
  rotateKey?(): Promise<KeyRotation>;
  /** Releases sockets (not the device: it outlives the agent on purpose). */
  close?(): void;
}

export interface PeerHealth {
  /** Backend-specific live facts, shown under the backend's name in /v1/peers. */
  readonly details: Readonly<Record<string, unknown>>;
  /** Why traffic to a programmed peer does not flow (e.g. no handshake), if it does not. */
  readonly problem?: string;
}

export interface KeyRotation {
  readonly publicKey: string;
  readonly previousPublicKey: string;
}

export interface BackendDeps {
  readonly dataplane: Dataplane;
  readonly state: AgentState;
  readonly log: Logger;
  readonly network: NetworkConfig;
  /** --vxlan-device: the VXLAN device name; default weft.<VNI>. */
  readonly vxlanDevice?: string;
  readonly wireguard?: WireguardOptions;
  /** Publishes changed backend attributes in our lease (a WireGuard key rotation). */
  readonly announce?: (attrs: BackendAttrs) => Promise<void>;
}

export interface WireguardOptions {
  /** --wireguard-device. */
  readonly device: string;
  /** --wireguard-psk-file's key (base64), applied to every peer. */
  readonly presharedKey?: string;
  readonly stateDir: string;
  /** How the device is driven; tests pass a fake. Default: generic netlink (kernel) or UAPI (wireguard-go). */
  readonly openControl?: (mode: "kernel" | "userspace", device: string) => WgControl;
}

/** Whether `ip` is on the interface's connected subnet (reachable without a router). */
export function onSegment(iface: ExternalInterface, ip: number): boolean {
  return contains(iface.net, ip);
}
