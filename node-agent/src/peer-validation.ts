// What a peer's lease must be before any backend programs a kernel object for
// it. The feed is trusted only as far as its content checks out: a corrupt or
// malicious lease (0.0.0.0/0, the cluster network itself, a subnet outside
// it, a loopback or multicast "public IP") would otherwise become a route that
// steals traffic this node sends elsewhere, or over its own pods.
import { contains, containsNet, formatCidr, overlaps, parseCidr, parseIpv4, type Ipv4Net } from "../../lib/src/cidr.js";
import type { Lease } from "../../lib/src/lease.js";
import type { NetworkConfig } from "../../lib/src/net-config.js";
import type { Rejection } from "./backends/backend.js";

/** The lease's subnet when the lease may be programmed, else why not. */
export function checkPeerLease(lease: Lease, network: NetworkConfig, own: Ipv4Net | undefined): { net: Ipv4Net } | { rejection: Rejection } {
  const reject = (reason: Rejection["reason"], detail: string) => ({ rejection: { reason, detail } });
  const net = parseCidr(lease.subnet);
  // Only the canonical spelling: two spellings of one subnet ("/08" and "/8") would be two peers.
  if (!net || formatCidr(net) !== lease.subnet) return reject("invalid", "subnet is not a CIDR");
  if (own && overlaps(net, own)) return reject("overlaps_own_subnet", `subnet overlaps our own lease ${formatCidr(own)}`);
  const cluster = formatCidr(network.network);
  if (!containsNet(network.network, net) || net.prefix !== network.subnetLen) {
    return reject("outside_network", `subnet is not a /${network.subnetLen} node subnet of the cluster network ${cluster}`);
  }
  const ip = parseIpv4(lease.publicIP);
  if (ip === undefined) return reject("invalid", `public IP ${JSON.stringify(lease.publicIP.slice(0, 40))} is not an IPv4 address`);
  const unusable = unusableAddress(ip);
  if (unusable) return reject("invalid", `public IP ${lease.publicIP} is ${unusable}: no packet could reach the node there`);
  // Tunnel packets to an overlay address would be routed back into the overlay.
  if (contains(network.network, ip)) return reject("invalid", `public IP ${lease.publicIP} is inside the cluster network ${cluster}`);
  // proto uint32: up to 2^32-1 arrives; one bad endpoint would fail the device's whole peer update.
  if (lease.attrs.type === "wireguard" && !isPort(lease.attrs.listenPort)) return reject("invalid", `WireGuard listen port ${lease.attrs.listenPort} is not a UDP port`);
  return { net };
}

/** 0 means the network's default port. */
function isPort(p: number): boolean {
  return Number.isInteger(p) && p >= 0 && p <= 65535;
}

/** Addresses no remote node can have as its underlay address. */
function unusableAddress(ip: number): string | undefined {
  const first = ip >>> 24;
  if (first === 0) return "in 0.0.0.0/8 (this host)";
  if (first === 127) return "a loopback address";
  if (first >= 224 && first < 240) return "a multicast address";
  if (first >= 240) return ip === 0xffffffff ? "the broadcast address" : "in the reserved 240.0.0.0/4";
  return undefined;
}
