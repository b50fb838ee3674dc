// VXLAN backend, as Flannel's. One device `weft.<VNI>` (learning off, source
// = the external interface's address, UDP port from the config) carries all
// overlay traffic. For every remote node we program three kernel objects:
//   - a permanent ARP entry: peer subnet .0 -> peer VTEP MAC,
//   - a permanent FDB entry: peer VTEP MAC -> peer public IP (NTF_SELF),
//   - an onlink route: peer subnet via peer .0 dev weft.<VNI>.
// The route goes in last (the reconciler orders it), so the kernel never has
// to ARP for a gateway it cannot resolve. The device's own address is our
// subnet's network address /32, which adds no connected route. The VTEP MAC
// is kept in the state dir so restarts do not invalidate peers' FDB entries.
import { formatIpv4, overlaps, parseCidr, type Ipv4Net } from "../../../lib/src/cidr.js";
import { WeftError } from "../../../lib/src/errors.js";
import { isValidMac, type BackendAttrs, type Lease } from "../../../lib/src/lease.js";
import type { VxlanBackendConfig } from "../../../lib/src/net-config.js";
import type { Logger } from "../../../lib/src/logger.js";
import type { Dataplane, FdbEntry, Link, Neighbour, Route } from "../dataplane/dataplane.js";
import { randomMac, type AgentState } from "../state.js";
import type { Backend, DesiredEntry, DesiredState, LocalNode } from "./backend.js";

/** Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14). */
export const VXLAN_OVERHEAD = 50;

export interface VxlanBackendDeps {
  readonly dataplane: Dataplane;
  readonly state: AgentState;
  readonly log: Logger;
  readonly config: VxlanBackendConfig;
  /** Device name; default weft.<VNI>. */
  readonly deviceName?: string;
}

export class VxlanBackend implements Backend {
  readonly type = "vxlan" as const;
  readonly deviceName: string;
  private link: Link | undefined;
  private local: LocalNode | undefined;
  /** Our own VTEP MAC and lease subnet: peers clashing with either are rejected. */
  private mac: string | undefined;
  private ownSubnet: Ipv4Net | undefined;
  /** Device operations (start-up, repair) run one at a time. */
  private deviceOps: Promise<unknown> = Promise.resolve();

  constructor(private readonly deps: VxlanBackendDeps) {
    this.deviceName = deps.deviceName ?? `weft.${deps.config.vni}`;
  }

  get deviceIndex(): number {
    if (!this.link) throw new WeftError("INTERNAL", "vxlan backend used before init()");
    return this.link.index;
  }

  mtu(): number {
    const base = this.deps.config.mtu || this.local?.iface.mtu || 1500;
    return base - VXLAN_OVERHEAD;
  }

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.deviceOps.then(fn);
    this.deviceOps = p.catch(() => undefined);
    return p;
  }

  init(local: LocalNode): Promise<BackendAttrs> {
    return this.serialized(() => this.initDevice(local));
  }

  private async initDevice(local: LocalNode): Promise<BackendAttrs> {
    const { dataplane, state, log, config } = this.deps;
    if (this.deviceName === local.iface.name) {
      throw new WeftError("CONFIG_INVALID", `--vxlan-device ${this.deviceName} is the underlay interface itself; pick another device name (default weft.<VNI>)`);
    }
    this.local = local;
    const existing = await dataplane.getLink(this.deviceName);
    // The stored MAC wins; with no state (wiped dir) we adopt the live device's MAC rather than break peers.
    const stored = await state.vtepMac(this.deviceName);
    let mac = stored;
    if (!mac && existing?.kind === "vxlan" && isValidMac(existing.mac)) mac = existing.mac;
    mac ??= randomMac();
    if (mac !== stored) await state.saveVtepMac(this.deviceName, mac);
    this.mac = mac;
    const { link, outcome } = await dataplane.ensureVxlan({
      name: this.deviceName, vni: config.vni, localIP: local.iface.ip, parentIndex: local.iface.index,
      port: config.port, learning: config.learning, gbp: config.gbp, mtu: this.mtu(), mac,
    });
    this.link = link;
    log.info({ device: this.deviceName, outcome, vtepMac: mac, mtu: link.mtu, vni: config.vni, local: local.iface.ip }, "vxlan device ready");
    return { type: "vxlan", vni: config.vni, vtepMac: mac };
  }

  configureSubnet(lease: Lease): Promise<void> {
    return this.serialized(() => this.addressDevice(lease));
  }

  private async addressDevice(lease: Lease): Promise<void> {
    const net = parseCidr(lease.subnet);
    if (!net) throw new WeftError("INTERNAL", `lease subnet ${lease.subnet} is not a CIDR`);
    this.ownSubnet = net;
    const want = { index: this.deviceIndex, ip: formatIpv4(net.ip), prefix: 32 };
    // Only one address belongs on the device: a stale one from an old lease would attract traffic.
    for (const a of await this.deps.dataplane.listAddresses(want.index)) {
      if (a.ip !== want.ip || a.prefix !== want.prefix) await this.deps.dataplane.deleteAddress(a);
    }
    await this.deps.dataplane.addAddress(want);
  }

  desired(peers: readonly Lease[]): DesiredState {
    const index = this.deviceIndex;
    const routes: DesiredEntry<Route>[] = [];
    const neighbours: DesiredEntry<Neighbour>[] = [];
    const fdb: DesiredEntry<FdbEntry>[] = [];
    const rejected = new Map<string, string>();
    const usable: Array<{ p: Lease; net: Ipv4Net; mac: string }> = [];
    const byMac = new Map<string, Lease[]>();
    for (const p of peers) {
      const a = p.attrs;
      const net = parseCidr(p.subnet);
      if (!net) { rejected.set(p.subnet, "subnet is not a CIDR"); continue; }
      if (this.ownSubnet && overlaps(net, this.ownSubnet)) { rejected.set(p.subnet, `subnet overlaps our own lease ${formatIpv4(this.ownSubnet.ip)}/${this.ownSubnet.prefix}`); continue; }
      if (a.type !== "vxlan") { rejected.set(p.subnet, `backend ${a.type}, not vxlan`); continue; }
      if (a.vni !== this.deps.config.vni) { rejected.set(p.subnet, `VNI ${a.vni}, want ${this.deps.config.vni}`); continue; }
      if (!isValidMac(a.vtepMac)) { rejected.set(p.subnet, `VTEP MAC ${a.vtepMac} is not unicast`); continue; }
      // A cloned state dir gives two nodes one VTEP MAC; their FDB entries would flap between the two.
      if (a.vtepMac === this.mac) { rejected.set(p.subnet, `VTEP MAC ${a.vtepMac} is our own (state dir cloned from this node?)`); continue; }
      usable.push({ p, net, mac: a.vtepMac });
      byMac.set(a.vtepMac, [...(byMac.get(a.vtepMac) ?? []), p]);
    }
    for (const { p, net, mac } of usable) {
      const sharing = byMac.get(mac)!;
      if (sharing.length > 1) {
        rejected.set(p.subnet, `VTEP MAC ${mac} is also advertised by ${sharing.filter((x) => x !== p).map((x) => x.nodeName).join(", ")} (state dir cloned?)`);
        continue;
      }
      const gw = formatIpv4(net.ip);
      neighbours.push({ peer: p.subnet, value: { index, ip: gw, mac: mac } });
      fdb.push({ peer: p.subnet, value: { index, mac: mac, dst: p.publicIP } });
      routes.push({ peer: p.subnet, value: { dst: p.subnet, gateway: gw, oif: index, onlink: true } });
    }
    return { ownedLinks: [index], routes, neighbours, fdb, rejected };
  }
}
