// Picks a free subnet. Pure: the caller passes what is taken and the free
// history. Never-used subnets come first, in address order; then freed ones,
// least recently freed first, so a node that comes back soon after its lease
// ended still finds its old subnet free.
import { formatCidr, parseCidr, sizeOf } from "../../lib/src/cidr.js";
import type { NetworkConfig } from "../../lib/src/net-config.js";

export interface AllocationInput {
  /** Subnet network addresses that may not be handed out (leased or reserved for others). */
  readonly taken: ReadonlySet<number>;
  /** Network address -> free order (higher = freed more recently). */
  readonly freed: ReadonlyMap<number, number>;
}

export function pickSubnet(cfg: NetworkConfig, input: AllocationInput): string | undefined {
  const step = sizeOf(cfg.subnetLen);
  let best: number | undefined;
  let bestOrder = Infinity;
  for (let ip = cfg.subnetMin; ip <= cfg.subnetMax; ip += step) {
    if (input.taken.has(ip)) continue;
    const order = input.freed.get(ip);
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
