// Picks a free subnet. Pure: the caller passes what is taken and the free
// history. Never-used subnets come first, in address order; then freed ones,
// least recently freed first, so a node that comes back soon after its lease
// ended still finds its old subnet free.
import { formatCidr, parseCidr, sizeOf } from "../../lib/src/cidr.js";
import type { NetworkConfig } from "../../lib/src/net-config.js";

export interface AllocationInput {
  /** Whether a subnet (network address) may not be handed out: leased, or reserved for another node. */
  readonly isTaken: (ip: number) => boolean;
  /** When a subnet was freed (higher = more recently); undefined if never used. */
  readonly freedOrder: (ip: number) => number | undefined;
}

/**
 * `random`: any free subnet, never-used ones first. A server that just lost a race to another server
 * (sharing an etcd store) picks this way, so the two stop choosing the same "next" subnet in lockstep.
 */
export function pickSubnet(cfg: NetworkConfig, input: AllocationInput, random = false): string | undefined {
  const step = sizeOf(cfg.subnetLen);
  if (random) {
    const fresh: number[] = [];
    const freed: number[] = [];
    for (let ip = cfg.subnetMin; ip <= cfg.subnetMax; ip += step) {
      if (!input.isTaken(ip)) (input.freedOrder(ip) === undefined ? fresh : freed).push(ip);
    }
    const from = fresh.length ? fresh : freed;
    return from.length ? formatCidr({ ip: from[Math.floor(Math.random() * from.length)]!, prefix: cfg.subnetLen }) : undefined;
  }
  let best: number | undefined;
  let bestOrder = Infinity;
  for (let ip = cfg.subnetMin; ip <= cfg.subnetMax; ip += step) {
    if (input.isTaken(ip)) continue;
    const order = input.freedOrder(ip);
    if (order === undefined) return formatCidr({ ip, prefix: cfg.subnetLen });
    if (order < bestOrder) {
      best = ip;
      bestOrder = order;
    }
  }
  return best === undefined ? undefined : formatCidr({ ip: best, prefix: cfg.subnetLen });
}

/** Whether `subnet` is a node subnet this network can hand out. */
export function isAllocatable(cfg: NetworkConfig, subnet: string): boolean {
  const n = parseCidr(subnet);
  return !!n && n.prefix === cfg.subnetLen && n.ip >= cfg.subnetMin && n.ip <= cfg.subnetMax;
}

export function subnetIp(subnet: string): number {
  return parseCidr(subnet, false)!.ip;
}
