// host-gw backend, as Flannel's: no tunnel and no device of our own. Every
// remote subnet gets one route via the peer's public IP on the underlay
// interface (`ip route replace 10.244.2.0/24 via 198.18.0.2 dev eth0`), so
// the nodes must share one L2 segment and pods see the full interface MTU.
//
// Better than Flannel: a peer whose public IP is not on our underlay subnet
// (the route could never work) is rejected up front with the reason, shown in
// /v1/peers and counted in weft_agent_peers_rejected{reason="not_on_segment"},
// instead of a kernel error logged once. Stale routes of ours are pruned by
// the reconciler like any other object, at start-up too.
import { formatCidr, parseCidr, parseIpv4, type Ipv4Net } from "../../../lib/src/cidr.js";
import { WeftError } from "../../../lib/src/errors.js";
import type { BackendAttrs, Lease } from "../../../lib/src/lease.js";
import type { HostGwBackendConfig } from "../../../lib/src/net-config.js";
import type { Route } from "../dataplane/dataplane.js";
import { onSegment, type Backend, type BackendDeps, desiredEntry, type DesiredEntry, type DesiredState, type LocalNode } from "./backend.js";
import { screenPeers } from "./screen-peers.js";

export class HostGwBackend implements Backend {
  readonly type = "host-gw" as const;
  readonly devices: readonly string[] = [];
  private readonly config: HostGwBackendConfig;
  private local: LocalNode | undefined;
  private ownSubnet: Ipv4Net | undefined;

  constructor(private readonly deps: BackendDeps) {
    this.config = deps.network.backend as HostGwBackendConfig;
  }

  mtu(): number {
    return this.config.mtu || this.local?.iface.mtu || 1500;
  }

  async init(local: LocalNode): Promise<BackendAttrs> {
    const { iface } = local;
    if (iface.publicIP !== iface.ip) {
      // Peers would route to an address that is not on this node's interface (NAT): host-gw cannot work.
      throw new WeftError("CONFIG_INVALID", `host-gw routes peers' traffic to this node's public IP, but --public-ip ${iface.publicIP} is not the address of ${iface.name} (${iface.ip}); drop --public-ip, or use the vxlan backend behind NAT`);
    }
    this.local = local;
    this.deps.log.info({ iface: iface.name, segment: formatCidr(iface.net), mtu: this.mtu() }, "host-gw routes go via the underlay interface");
    return { type: "host-gw" };
  }

  async configureSubnet(lease: Lease): Promise<void> {
    this.ownSubnet = parseCidr(lease.subnet);
  }

  async repair(): Promise<string[]> {
    return [];
  }

  concerns(): boolean {
    return false;
  }

  pathTo(): string {
    return "host-gw";
  }

  desired(peers: readonly Lease[]): DesiredState {
    const iface = this.local!.iface;
    const routes: DesiredEntry<Route>[] = [];
    const { usable, rejected } = screenPeers(peers, "host-gw", this.ownSubnet, this.deps.network);
    for (const { lease: p } of usable) {
      const ip = parseIpv4(p.publicIP);
      if (ip === undefined || !onSegment(iface, ip)) {
        rejected.set(p.subnet, {
          reason: "not_on_segment",
          detail: `public IP ${p.publicIP} is not on ${iface.name}'s subnet ${formatCidr(iface.net)}: host-gw needs every node on one L2 segment; use the vxlan backend (with "DirectRouting": true for the nodes that do share a segment)`,
        });
        continue;
      }
      routes.push(desiredEntry(p.subnet, { dst: p.subnet, gateway: p.publicIP, oif: iface.index, onlink: false }));
    }
    return { stages: [[{ table: this.deps.dataplane.routes, entries: routes }]], rejected };
  }
}
