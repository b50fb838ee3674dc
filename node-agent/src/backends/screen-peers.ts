// The checks every backend makes before programming a peer: a node subnet of
// the cluster network that does not overlap our own, a usable public address
// (peer-validation.ts), and the same backend type as ours.
import type { Ipv4Net } from "../../../lib/src/cidr.js";
import type { Lease } from "../../../lib/src/lease.js";
import type { BackendType, NetworkConfig } from "../../../lib/src/net-config.js";
import { checkPeerLease } from "../peer-validation.js";
import type { Rejection } from "./backend.js";

export interface UsablePeer {
  readonly lease: Lease;
  readonly net: Ipv4Net;
}

/** One lease's verdict: usable (with its subnet), or why not. */
export function screenPeer(lease: Lease, type: BackendType, own: Ipv4Net | undefined, network: NetworkConfig): UsablePeer | Rejection {
  const checked = checkPeerLease(lease, network, own);
  if ("rejection" in checked) return checked.rejection;
  if (lease.attrs.type !== type) return { reason: "backend_mismatch", detail: `backend ${lease.attrs.type}, not ${type} (the node has not restarted since the backend changed?)` };
  return { lease, net: checked.net };
}

export function screenPeers(peers: readonly Lease[], type: BackendType, own: Ipv4Net | undefined, network: NetworkConfig): { usable: UsablePeer[]; rejected: Map<string, Rejection> } {
  const usable: UsablePeer[] = [];
  const rejected = new Map<string, Rejection>();
  for (const lease of peers) {
    const v = screenPeer(lease, type, own, network);
    if ("reason" in v) rejected.set(lease.subnet, v);
    else usable.push(v);
  }
  return { usable, rejected };
}
