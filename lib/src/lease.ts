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
  /**
   * The agent instance that holds it (a random id from the agent's state dir); "" or absent: not bound.
   * Server-side only: never sent to watchers or REST clients, since knowing it lets one renew the lease.
   */
  readonly instanceId?: string;
}

export type LeaseEventType = "added" | "changed" | "removed";

export interface LeaseEvent {
  readonly type: LeaseEventType;
  /** For "removed": the lease's last attributes. */
  readonly lease: Lease;
  readonly revision: number;
  /** For "removed": why ("released", "expired", "replaced", "revoked" or "revoked: <operator's reason>"). */
  readonly reason?: string;
}

export interface UniqueAttr {
  /** How an operator would name it, e.g. "VTEP MAC 0e:..". */
  readonly label: string;
  /** `kind value`, one string for maps over all kinds. */
  readonly key: string;
  readonly kind: "mac" | "ip" | "wg";
  /** The attribute itself (the lease's own string). */
  readonly value: string;
}

/**
 * The attributes of a lease that no other live lease may share. WireGuard nodes behind one NAT share a
 * public IP (with different ports), so for WireGuard only the key is unique.
 */
export function uniqueAttrs(publicIP: string, attrs: BackendAttrs): UniqueAttr[] {
  switch (attrs.type) {
    case "vxlan": return [attr("mac", "VTEP MAC", attrs.vtepMac), attr("ip", "public IP", publicIP)];
    case "host-gw": return [attr("ip", "public IP", publicIP)];
    case "wireguard": return [attr("wg", "WireGuard public key", attrs.publicKey)];
  }
}

function attr(kind: UniqueAttr["kind"], name: string, value: string): UniqueAttr {
  return { label: `${name} ${value}`, key: `${kind} ${value}`, kind, value };
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

export interface PublicIpRules {
  /** 169.254.0.0/16 is refused unless allowed (lease server --allow-link-local-public-ip). */
  readonly allowLinkLocal?: boolean;
}

/**
 * Why `ip` can never be a node's underlay address, or undefined when it can. 198.18.0.0/15 (benchmarking,
 * our tests) and 192.0.0.0/24 stay valid on purpose: labs and benches use them as underlays.
 */
export function unusablePublicIp(ip: string, rules: PublicIpRules = {}): string | undefined {
  const [a, b] = ip.split(".").map(Number) as [number, number];
  if (a === 0) return "is in 0.0.0.0/8 (\"this network\"), which no other node can send to";
  if (a === 127) return "is a loopback address";
  if (ip === "255.255.255.255") return "is the broadcast address";
  if (a >= 224 && a < 240) return "is a multicast address";
  if (a >= 240) return "is in the reserved range 240.0.0.0/4";
  if (a === 169 && b === 254 && !rules.allowLinkLocal) return "is link-local (169.254.0.0/16), usually an address the node gave itself without DHCP; start the lease server with --allow-link-local-public-ip if the underlay really is link-local";
  return undefined;
}

export function validatePublicIp(ip: string, field = "public_ip", rules: PublicIpRules = {}): void {
  if (!ip) throw invalid(field, "is empty", "set it to the node's underlay IPv4 address");
  if (!isIpv4(ip)) throw invalid(field, `${JSON.stringify(ip.slice(0, 80))} is not an IPv4 address`, "write it like 198.18.0.1");
  const why = unusablePublicIp(ip, rules);
  if (why) throw invalid(field, `${ip} ${why}`, "advertise the node's underlay unicast address (agent --public-ip or --iface)");
}

/** An agent instance id (random, from its state dir); "" means none (an older agent). */
export function validateInstanceId(id: string | undefined, field = "instance_id"): void {
  if (id && !/^[A-Za-z0-9_-]{8,64}$/.test(id)) {
    throw invalid(field, `${JSON.stringify(id.slice(0, 80))} is not an instance id`, "send 8-64 letters, digits, '-' or '_' (the agent keeps one in <state-dir>/instance-id)");
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
