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

export function screenPeers(peers: readonly Lease[], type: BackendType, own: Ipv4Net | undefined, network: NetworkConfig): { usable: UsablePeer[]; rejected: Map<string, Rejection> } {
  const usable: UsablePeer[] = [];
  const rejected = new Map<string, Rejection>();
  for (const lease of peers) {
    const checked = checkPeerLease(lease, network, own);
    if ("rejection" in checked) rejected.set(lease.subnet, checked.rejection);
    else if (lease.attrs.type !== type) rejected.set(lease.subnet, { reason: "backend_mismatch", detail: `backend ${lease.attrs.type}, not ${type} (the node has not restarted since the backend changed?)` });
    else usable.push({ lease, net: checked.net });
  }
  return { usable, rejected };
}
