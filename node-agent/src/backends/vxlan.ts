// VXLAN backend, as Flannel's. One device `weft.<VNI>` (learning off, source
// = the external interface's address, UDP port from the config) carries the
// overlay traffic. For every remote node we program three kernel objects:
//   - a permanent ARP entry: peer subnet .0 -> peer VTEP MAC,
//   - a permanent FDB entry: peer VTEP MAC -> peer public IP (NTF_SELF),
//   - an onlink route: peer subnet via peer .0 dev weft.<VNI>.
// The route is a later stage than the ARP and FDB entries, so the kernel never
// has to resolve a gateway it cannot. The device's own address is our
// subnet's network address /32, which adds no connected route. The VTEP MAC is
// kept in the state dir so restarts do not invalidate peers' FDB entries.
//
// With DirectRouting, a peer whose public IP is on our underlay subnet (the
// interface address's prefix decides) gets a plain route via that IP on the
// underlay instead: no encapsulation, no ARP or FDB entry. The others still
// go through the device.
import { writeFile } from "node:fs/promises";
import { formatIpv4, parseCidr, parseIpv4, type Ipv4Net } from "../../../lib/src/cidr.js";
import { WeftError } from "../../../lib/src/errors.js";
import { isValidMac, type BackendAttrs, type Lease } from "../../../lib/src/lease.js";
import type { VxlanBackendConfig } from "../../../lib/src/net-config.js";
import type { FdbEntry, KernelChange, Link, LinkSpec, Neighbour, Route } from "../dataplane/dataplane.js";
import { randomMac } from "../state.js";
import { onSegment, type Backend, type BackendDeps, desiredEntry, type DesiredEntry, type DesiredState, type LocalNode, type Rejection } from "./backend.js";
import { ensureOwnedLink, ensureSoleAddress, ownerAlias, touchesDevice } from "./owned-devices.js";
import { screenPeer } from "./screen-peers.js";

/** Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14). */
export const VXLAN_OVERHEAD = 50;

export class VxlanBackend implements Backend {
  readonly type = "vxlan" as const;
  readonly deviceName: string;
  readonly devices: readonly string[];
  private readonly config: VxlanBackendConfig;
  private link: Link | undefined;
  private local: LocalNode | undefined;
  /** Our own VTEP MAC and lease subnet: peers clashing with either are rejected. */
  private mac: string | undefined;
  private ownSubnet: Ipv4Net | undefined;
  private memo = new WeakMap<Lease, PeerEntries>();
  private memoContext = "";
  /** Device operations (start-up, repair) run one at a time. */
  private deviceOps: Promise<unknown> = Promise.resolve();

  constructor(private readonly deps: BackendDeps) {
    this.config = deps.network.backend as VxlanBackendConfig;
    this.deviceName = deps.vxlanDevice ?? `weft.${this.config.vni}`;
    this.devices = [this.deviceName];
  }

  get deviceIndex(): number {
    if (!this.link) throw new WeftError("INTERNAL", "vxlan backend used before init()");
    return this.link.index;
  }

  mtu(): number {
    const base = this.config.mtu || this.local?.iface.mtu || 1500;
    return base - VXLAN_OVERHEAD;
  }

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.deviceOps.then(fn);
    this.deviceOps = p.catch(() => undefined);
    return p;
  }

  private spec(local: LocalNode, mac: string): LinkSpec {
    const c = this.config;
    return {
      name: this.deviceName, kind: "vxlan", mtu: this.mtu(), mac, alias: ownerAlias("vxlan"),
      vxlan: { vni: c.vni, localIP: local.iface.ip, parentIndex: local.iface.index, port: c.port, learning: c.learning, gbp: c.gbp },
    };
  }

  /** Flannel's vxlanLinksIncompat: what cannot be changed on a live device. */
  private static incompatibility(l: Link, spec: LinkSpec): string | undefined {
    const v = l.vxlan;
    const want = spec.vxlan!;
    if (!v) return "has no VXLAN settings";
    if (v.vni !== want.vni) return `has VNI ${v.vni}, want ${want.vni}`;
    if (v.localIP !== want.localIP) return `has local ${v.localIP || "none"}, want ${want.localIP}`;
    if (v.parentIndex && v.parentIndex !== want.parentIndex) return `is on ifindex ${v.parentIndex}, want ${want.parentIndex}`;
    if (v.port !== want.port) return `has port ${v.port}, want ${want.port}`;
    if (v.learning !== want.learning) return `has learning ${v.learning}, want ${want.learning}`;
    if (v.gbp !== want.gbp) return `has gbp ${v.gbp}, want ${want.gbp}`;
    return undefined;
  }

  init(local: LocalNode): Promise<BackendAttrs> {
    return this.serialized(() => this.initDevice(local));
  }

  private async initDevice(local: LocalNode): Promise<BackendAttrs> {
    const { dataplane, state, log } = this.deps;
    if (this.deviceName === local.iface.name) {
      throw new WeftError("CONFIG_INVALID", `--vxlan-device ${this.deviceName} is the underlay interface itself; pick another device name (default weft.<VNI>)`);
    }
    this.local = local;
    const existing = await dataplane.getLink(this.deviceName);
    // The stored MAC wins; with no state (wiped dir) we adopt our live device's MAC rather than break peers.
    const stored = await state.vtepMac(this.deviceName);
    let mac = stored;
    if (!mac && existing?.kind === "vxlan" && existing.alias === ownerAlias("vxlan") && isValidMac(existing.mac)) mac = existing.mac;
    mac ??= randomMac();
    const spec = this.spec(local, mac);
    // A device with the VTEP MAC we stored is the one we made, even if its mark got lost.
    const { link, outcome } = await ensureOwnedLink(dataplane, spec, {
      incompatible: (l) => VxlanBackend.incompatibility(l, spec), flag: "--vxlan-device", ours: (l) => !!stored && l.kind === "vxlan" && l.mac === stored,
    });
    if (mac !== stored) await state.saveVtepMac(this.deviceName, mac);
    this.mac = mac;
    this.link = link;
    // Flannel does the same: router advertisements must not give the overlay device addresses.
    await writeFile(`/proc/sys/net/ipv6/conf/${this.deviceName}/accept_ra`, "0").catch(() => undefined);
    log.info({ device: this.deviceName, outcome, vtepMac: mac, mtu: link.mtu, vni: this.config.vni, local: local.iface.ip, directRouting: this.config.directRouting }, "vxlan device ready");
    return { type: "vxlan", vni: this.config.vni, vtepMac: mac };
  }

  configureSubnet(lease: Lease): Promise<void> {
    const net = parseCidr(lease.subnet);
    if (!net) throw new WeftError("INTERNAL", `lease subnet ${lease.subnet} is not a CIDR`);
    this.ownSubnet = net;
    return this.serialized(async () => { await this.addressDevice(net); });
  }

  private addressDevice(net: Ipv4Net): Promise<string[]> {
    return ensureSoleAddress(this.deps.dataplane, this.deviceIndex, net);
  }

  repair(): Promise<string[]> {
    return this.serialized(async () => {
      if (!this.local || !this.mac) return [];
      const spec = this.spec(this.local, this.mac);
      const cur = await this.deps.dataplane.getLink(this.deviceName);
      const drift = !cur ? "device" : cur.index !== this.link?.index ? "device" : !cur.up ? "state"
        : cur.mtu !== spec.mtu ? "mtu" : cur.mac !== spec.mac ? "mac" : cur.alias !== spec.alias ? "alias" : undefined;
      const fixed: string[] = [];
      if (drift) {
        this.deps.log.warn({ device: this.deviceName, drift }, "vxlan device drifted; repairing");
        const { link } = await ensureOwnedLink(this.deps.dataplane, spec, {
          incompatible: (l) => VxlanBackend.incompatibility(l, spec), flag: "--vxlan-device", ours: (l) => l.index === this.link?.index || l.mac === this.mac,
        });
        this.link = link;
        fixed.push(drift);
      }
      if (this.ownSubnet) fixed.push(...await this.addressDevice(this.ownSubnet));
      return fixed;
    });
  }

  concerns(c: KernelChange): boolean {
    return touchesDevice(c, this.deviceName, this.link?.index, (l) => !l.up || l.mtu !== this.mtu() || l.mac !== this.mac || l.alias !== ownerAlias("vxlan"));
  }

  private direct(publicIP: string): boolean {
    if (!this.config.directRouting || !this.local) return false;
    const ip = parseIpv4(publicIP);
    return ip !== undefined && onSegment(this.local.iface, ip);
  }

  pathTo(peer: Lease): string {
    return this.direct(peer.publicIP) ? "direct" : "vxlan";
  }

  /** The entries of one peer, or why it is refused; kept per lease object while `memoContext` holds. */
  private peerEntries(p: Lease, index: number): PeerEntries {
    const v = screenPeer(p, "vxlan", this.ownSubnet, this.deps.network);
    if ("reason" in v) return { t: REJECT, reject: v };
    const a = p.attrs;
    if (this.direct(p.publicIP)) return { t: DIRECT, direct: desiredEntry(p.subnet, { dst: p.subnet, gateway: p.publicIP, oif: this.local!.iface.index, onlink: false }) };
    if (a.type !== "vxlan") return { t: SKIP };
    if (a.vni !== this.config.vni) return { t: REJECT, reject: { reason: "invalid", detail: `VNI ${a.vni}, want ${this.config.vni}` } };
    if (!isValidMac(a.vtepMac)) return { t: REJECT, reject: { reason: "invalid", detail: `VTEP MAC ${a.vtepMac} is not unicast` } };
    // A cloned state dir gives two nodes one VTEP MAC; their FDB entries would flap between the two.
    if (a.vtepMac === this.mac) return { t: REJECT, reject: { reason: "duplicate_vtep_mac", detail: `VTEP MAC ${a.vtepMac} is our own (state dir cloned from this node?)` } };
    const gw = formatIpv4(v.net.ip);
    return {
      t: TUNNEL,
      neighbour: desiredEntry(p.subnet, { index, ip: gw, mac: a.vtepMac }),
      fdb: desiredEntry(p.subnet, { index, mac: a.vtepMac, dst: p.publicIP }),
      route: desiredEntry(p.subnet, { dst: p.subnet, gateway: gw, oif: index, onlink: true }),
    };
  }

  desired(peers: readonly Lease[]): DesiredState {
    const index = this.deviceIndex;
    const dp = this.deps.dataplane;
    const routes: DesiredEntry<Route>[] = [];
    const neighbours: DesiredEntry<Neighbour>[] = [];
    const fdb: DesiredEntry<FdbEntry>[] = [];
    const rejected = new Map<string, Rejection>();
    // Unchanged leases keep their entry objects between passes: a lease event costs no per-peer work or
    // garbage for the thousands of others (the reconciler then looks at the changed peers alone).
    const own = this.ownSubnet;
    const context = `${index}|${this.mac}|${this.local?.iface.index}|${this.local?.iface.ip}|${own?.ip}/${own?.prefix}`;
    if (context !== this.memoContext) {
      this.memo = new WeakMap();
      this.memoContext = context;
    }
    // Two nodes with one VTEP MAC (a cloned state dir) never both get here: the peer table keeps each
    // unique attribute with its first holder and sets the other lease aside (peer-table.ts).
    for (const p of peers) {
      let e = this.memo.get(p);
      if (!e) this.memo.set(p, (e = this.peerEntries(p, index)));
      if (e.t !== TUNNEL) {
        if (e.t === DIRECT) routes.push(e.direct);
        else if (e.t === REJECT) rejected.set(p.subnet, e.reject);
        continue;
      }
      neighbours.push(e.neighbour);
      fdb.push(e.fdb);
      routes.push(e.route);
    }
    return {
      stages: [
        [{ table: dp.neighbours(index), entries: neighbours }, { table: dp.fdb(index), entries: fdb }],
        [{ table: dp.routes, entries: routes }],
      ],
      rejected,
    };
  }
}

const SKIP = 0, DIRECT = 1, REJECT = 2, TUNNEL = 3;

interface TunnelEntries {
  readonly t: typeof TUNNEL;
  readonly neighbour: DesiredEntry<Neighbour>;
  readonly fdb: DesiredEntry<FdbEntry>;
  readonly route: DesiredEntry<Route>;
}

type PeerEntries = TunnelEntries | { readonly t: typeof DIRECT; readonly direct: DesiredEntry<Route> } | { readonly t: typeof REJECT; readonly reject: Rejection } | { readonly t: typeof SKIP };
