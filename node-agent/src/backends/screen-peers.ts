// The checks every backend makes before programming a peer: a parseable
// subnet that does not overlap our own, an IPv4 public address, and the same
// backend type as ours.
import { formatCidr, isIpv4, overlaps, parseCidr, type Ipv4Net } from "../../../lib/src/cidr.js";
import type { Lease } from "../../../lib/src/lease.js";
import type { BackendType } from "../../../lib/src/net-config.js";
import type { Rejection } from "./backend.js";

export interface UsablePeer {
  readonly lease: Lease;
  readonly net: Ipv4Net;
}

export function screenPeers(peers: readonly Lease[], type: BackendType, own: Ipv4Net | undefined): { usable: UsablePeer[]; rejected: Map<string, Rejection> } {
  const usable: UsablePeer[] = [];
  const rejected = new Map<string, Rejection>();
  for (const lease of peers) {
    const net = parseCidr(lease.subnet);
    if (!net) rejected.set(lease.subnet, { reason: "invalid", detail: "subnet is not a CIDR" });
    else if (!isIpv4(lease.publicIP)) rejected.set(lease.subnet, { reason: "invalid", detail: `public IP ${JSON.stringify(lease.publicIP)} is not an IPv4 address` });
    else if (own && overlaps(net, own)) rejected.set(lease.subnet, { reason: "overlaps_own_subnet", detail: `subnet overlaps our own lease ${formatCidr(own)}` });
    else if (lease.attrs.type !== type) rejected.set(lease.subnet, { reason: "backend_mismatch", detail: `backend ${lease.attrs.type}, not ${type} (the node has not restarted since the backend changed?)` });
    else usable.push({ lease, net });
  }
  return { usable, rejected };
}
