// The id of the nexthop object behind our route to a subnet, derived from
// the subnet itself, so no table of ids is kept and any reader of the kernel
// (a restarted agent, --cleanup, a notification of a deleted nexthop) knows
// which route a nexthop belongs to.
//
// Why nexthop objects at all: the kernel shares one fib_info between routes
// whose next hops are equal, and finds it through a hash of the protocol,
// scope, metric and device, but not the gateway. Every route weft adds on
// one device lands in the same hash chain, so each insert walks all the
// others: 5,000 peers cost a quadratic ~0.4 s of kernel time. A route that
// names a nexthop object is hashed by the object's id instead, and 5,000
// nexthops + 5,000 routes go in a quarter of that time.
//
// The encoding: the network address with the bit just below the prefix set.
// The lowest set bit then says the prefix length, so every (address, length)
// pair with a length up to 31 gets its own non-zero id. A /32, or a dst with
// host bits, gets none and stays a plain route.
import { formatIpv4, parseCidr } from "../../../lib/src/cidr.js";

export function nexthopIdFor(dst: string): number | undefined {
  const net = parseCidr(dst);
  if (!net || net.prefix > 31) return undefined;
  const marker = 2 ** (31 - net.prefix);
  // Host bits set: the id would not decode back to this dst.
  if (net.ip % (marker * 2) !== 0) return undefined;
  return net.ip + marker;
}

/** The dst whose route `id` belongs to (nexthopIdFor's inverse); undefined for an id no dst gives. */
export function dstOfNexthopId(id: number): string | undefined {
  if (!Number.isInteger(id) || id <= 0 || id > 0xffffffff) return undefined;
  let marker = 1, bit = 0;
  while (id % (marker * 2) === 0) { marker *= 2; bit++; }
  const ip = id - marker;
  return `${formatIpv4(ip)}/${31 - bit}`;
}
