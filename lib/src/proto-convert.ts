// Domain <-> weft.v1 messages. Used only by the gRPC adapters (server service, agent client).
import type { Lease as PbLease, AcquireLeaseRequest, LeaseEvent as PbLeaseEvent } from "../../gen/weft/v1/lease.js";
import { LeaseEvent_Type } from "../../gen/weft/v1/lease.js";
import type { BackendAttrs, Lease, LeaseEvent } from "./lease.js";

type PbAttrs = Pick<AcquireLeaseRequest, "vxlan" | "wireguard" | "hostGw">;

export function attrsToPb(a: BackendAttrs): PbAttrs {
  switch (a.type) {
    case "vxlan": return { vxlan: { vni: a.vni, vtepMac: a.vtepMac }, wireguard: undefined, hostGw: undefined };
    case "wireguard": return { vxlan: undefined, wireguard: { publicKey: a.publicKey, listenPort: a.listenPort }, hostGw: undefined };
    case "host-gw": return { vxlan: undefined, wireguard: undefined, hostGw: {} };
  }
}

export function attrsFromPb(m: PbAttrs): BackendAttrs | undefined {
  if (m.vxlan) return { type: "vxlan", vni: m.vxlan.vni, vtepMac: m.vxlan.vtepMac.toLowerCase() };
  if (m.wireguard) return { type: "wireguard", publicKey: m.wireguard.publicKey, listenPort: m.wireguard.listenPort };
  if (m.hostGw) return { type: "host-gw" };
  return undefined;
}

/** What acquire and renew replies add to a lease: the lifetime granted and the store it is in. */
export interface Grant {
  readonly ttlMs: number;
  readonly storeId: string;
}

/** The instance id is never put on the wire: it is what lets a client renew the lease. */
export function leaseToPb(l: Lease, grant?: Grant): PbLease {
  const ttl = grant && { seconds: Math.floor(grant.ttlMs / 1000), nanos: (grant.ttlMs % 1000) * 1_000_000 };
  return {
    subnet: l.subnet, nodeName: l.nodeName, publicIp: l.publicIP, backendType: l.attrs.type,
    ...attrsToPb(l.attrs), expiresAt: l.expiresAt ? new Date(l.expiresAt) : undefined, revision: l.revision, ttl, storeId: grant?.storeId ?? "",
  };
}

export function leaseFromPb(m: PbLease): Lease {
  return {
    subnet: m.subnet, nodeName: m.nodeName, publicIP: m.publicIp,
    attrs: attrsFromPb(m) ?? { type: "host-gw" }, expiresAt: m.expiresAt ? m.expiresAt.getTime() : 0, revision: m.revision,
  };
}

/** The grant of an acquire or renew reply; undefined from a server that states no TTL (older weft). */
export function grantFromPb(m: PbLease): Grant | undefined {
  if (!m.ttl) return undefined;
  const ttlMs = Number(m.ttl.seconds) * 1000 + Math.floor(m.ttl.nanos / 1_000_000);
  return Number.isFinite(ttlMs) && ttlMs > 0 ? { ttlMs, storeId: m.storeId } : undefined;
}

const TYPE_TO_PB = { added: LeaseEvent_Type.TYPE_ADDED, changed: LeaseEvent_Type.TYPE_CHANGED, removed: LeaseEvent_Type.TYPE_REMOVED } as const;

export function eventToPb(e: LeaseEvent): PbLeaseEvent {
  return { type: TYPE_TO_PB[e.type], lease: leaseToPb(e.lease), revision: e.revision, reason: e.reason ?? "" };
}

export function eventFromPb(m: PbLeaseEvent): LeaseEvent | undefined {
  const type = m.type === LeaseEvent_Type.TYPE_ADDED ? "added" : m.type === LeaseEvent_Type.TYPE_CHANGED ? "changed" : m.type === LeaseEvent_Type.TYPE_REMOVED ? "removed" : undefined;
  if (!type || !m.lease) return undefined;
  return { type, lease: leaseFromPb(m.lease), revision: m.revision, ...(m.reason ? { reason: m.reason.slice(0, 300) } : {}) };
}
