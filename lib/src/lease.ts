// The lease domain shared by the server and the agent: what a lease is and
// what makes its fields valid. The proto types stay at the gRPC edges.
import { invalid } from "./errors.js";
import { isIpv4 } from "./cidr.js";
import type { BackendType } from "./net-config.js";

export type BackendAttrs =
  | { readonly type: "vxlan"; readonly vni: number; readonly vtepMac: string }
  | { readonly type: "wireguard"; readonly publicKey: string; readonly listenPort: number }
  | { readonly type: "host-gw" };

export interface Lease {
  readonly subnet: string;
  readonly nodeName: string;
  readonly publicIP: string;
  readonly attrs: BackendAttrs;
  /** Unix ms; 0 for a lease that never expires. */
  readonly expiresAt: number;
  /** Revision of the last change to this lease. */
  readonly revision: number;
}

export type LeaseEventType = "added" | "changed" | "removed";

export interface LeaseEvent {
  readonly type: LeaseEventType;
  /** For "removed": the lease's last attributes. */
  readonly lease: Lease;
  readonly revision: number;
}

// DNS-1123 subdomain, as Kubernetes node names.
const NODE_NAME_RE = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const WG_KEY_RE = /^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw480]=$/;

export function validateNodeName(name: string, field = "node_name"): void {
  if (!name) throw invalid(field, "is empty", "set it to the node's hostname");
  if (!NODE_NAME_RE.test(name)) {
    throw invalid(field, `${JSON.stringify(name.slice(0, 80))} is not a valid node name`, "use 1-253 lower-case letters, digits, '-' or '.', starting and ending with a letter or digit");
  }
}

export function validatePublicIp(ip: string, field = "public_ip"): void {
  if (!ip) throw invalid(field, "is empty", "set it to the node's underlay IPv4 address");
  if (!isIpv4(ip)) throw invalid(field, `${JSON.stringify(ip.slice(0, 80))} is not an IPv4 address`, "write it like 198.18.0.1");
  if (ip === "0.0.0.0" || ip.startsWith("127.") || ip === "255.255.255.255" || Number(ip.split(".")[0]) >= 224) {
    throw invalid(field, `${ip} cannot be reached by other nodes`, "advertise the node's underlay unicast address");
  }
}

export function isValidMac(mac: string): boolean {
  return MAC_RE.test(mac) && mac !== "00:00:00:00:00:00" && (parseInt(mac.slice(0, 2), 16) & 1) === 0;
}

/** Checks attrs against the network's backend; `expectedVni` for VXLAN. */
export function validateBackendAttrs(attrs: BackendAttrs | undefined, backend: BackendType, expectedVni?: number, field = "backend_attributes"): void {
  if (!attrs) throw invalid(field, "missing", `set the ${backend} attributes (the network's backend is ${backend})`);
  if (attrs.type !== backend) throw invalid(field, `are for ${attrs.type} but the network's backend is ${backend}`, `send ${backend} attributes`);
  switch (attrs.type) {
    case "vxlan":
      if (expectedVni !== undefined && attrs.vni !== expectedVni) throw invalid(`${field}.vxlan.vni`, `${attrs.vni} differs from the network's VNI ${expectedVni}`, `use VNI ${expectedVni}`);
      if (!isValidMac(attrs.vtepMac)) throw invalid(`${field}.vxlan.vtep_mac`, `${JSON.stringify(attrs.vtepMac.slice(0, 40))} is not a unicast MAC`, "write it like 0e:12:34:56:78:9a, lower case");
      return;
    case "wireguard":
      if (!WG_KEY_RE.test(attrs.publicKey)) throw invalid(`${field}.wireguard.public_key`, "is not a base64 Curve25519 key", "send the 44-character key printed by wg pubkey");
      if (!Number.isInteger(attrs.listenPort) || attrs.listenPort < 1 || attrs.listenPort > 65535) throw invalid(`${field}.wireguard.listen_port`, `${attrs.listenPort} is not a port`, "use 1-65535");
      return;
    case "host-gw":
      return;
  }
}
