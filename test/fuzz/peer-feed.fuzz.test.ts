// The agent's handling of the lease feed, fuzzed: arbitrary snapshots and
// events (subnets anywhere, including 0.0.0.0/0, the network itself, our own
// subnet and its supersets and subsets; public IPs of every kind; garbage
// MACs and keys) go through the PeerTable and each backend's desired state
// into a fake dataplane. Whatever the feed says, every route, neighbour, FDB
// entry and WireGuard peer programmed is for a node subnet strictly inside the
// cluster network, of its SubnetLen, not overlapping our own subnet, with a
// usable gateway; every lease is either programmed or rejected with a reason.
import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { contains, containsNet, formatCidr, formatIpv4, overlaps, parseCidr, parseIpv4, type Ipv4Net } from "../../lib/src/cidr.js";
import { isValidMac, type BackendAttrs, type Lease, type LeaseEvent } from "../../lib/src/lease.js";
import { parseNetworkConfig, type NetworkConfig } from "../../lib/src/net-config.js";
import { NODE_ENTRY, type Backend, type DesiredState } from "../../node-agent/src/backends/backend.js";
import { createBackend } from "../../node-agent/src/backends/index.js";
import type { FdbEntry, Neighbour, Route } from "../../node-agent/src/dataplane/dataplane.js";
import { PeerTable } from "../../node-agent/src/peer-table.js";
import { Reconciler } from "../../node-agent/src/reconciler.js";
import type { WgPeerConfig } from "../../node-agent/src/wireguard/control.js";
import { generateKeyPair, isKey } from "../../node-agent/src/wireguard/keys.js";
import { FakeDataplane } from "../../node-agent/test/helpers/fake-dataplane.js";
import { FakeWgControl } from "../../node-agent/test/helpers/fake-wg-control.js";
import { backendDeps, localNode, silentLog, tmpDir } from "../../node-agent/test/helpers/fixtures.js";
import { FUZZ_TIMEOUT_MS, fuzzParams, inputCounter, nastyString } from "./fuzz.js";

const SELF = "node-1";
const iface = localNode.iface;
const KEYS = Array.from({ length: 4 }, () => generateKeyPair().publicKey);

const NETWORKS: Record<string, NetworkConfig> = {
  vxlan: parseNetworkConfig('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}'),
  "vxlan-direct": parseNetworkConfig('{"Network": "10.0.0.0/8", "SubnetLen": 20, "Backend": {"Type": "vxlan", "DirectRouting": true}}'),
  "host-gw": parseNetworkConfig('{"Network": "192.168.0.0/22", "SubnetLen": 26, "Backend": {"Type": "host-gw"}}'),
  wireguard: parseNetworkConfig('{"Network": "172.16.0.0/12", "SubnetLen": 24, "Backend": {"Type": "wireguard"}}'),
};

interface Rig {
  readonly net: NetworkConfig;
  readonly dp: FakeDataplane;
  readonly wg: FakeWgControl;
  readonly backend: Backend;
  readonly ownAttrs: BackendAttrs;
}

async function rig(net: NetworkConfig): Promise<Rig> {
  const dp = new FakeDataplane();
  const wg = new FakeWgControl();
  const backend = await createBackend(backendDeps(dp, {
    net, wireguard: { device: "weft-wg", stateDir: tmpDir(), openControl: () => wg }, announce: async () => undefined,
  }));
  const ownAttrs = await backend.init({ ...localNode, network: net });
  return { net, dp, wg, backend, ownAttrs };
}

const u32 = fc.integer({ min: 0, max: 0xffffffff });

/** Subnets of every kind relative to the network and our own subnet. */
function subnetArb(net: NetworkConfig, own: Ipv4Net): fc.Arbitrary<string> {
  const step = 2 ** (32 - net.subnetLen);
  const count = 2 ** (net.subnetLen - net.network.prefix);
  const nodeSubnet = fc.integer({ min: 0, max: count - 1 }).map((i) => formatCidr({ ip: (net.network.ip + i * step) >>> 0, prefix: net.subnetLen }));
  const anyCidr = fc.tuple(u32, fc.integer({ min: 0, max: 32 })).map(([ip, p]) => formatCidr({ ip: p === 0 ? 0 : ((ip >>> (32 - p)) << (32 - p)) >>> 0, prefix: p }));
  const aroundOwn = fc.integer({ min: 0, max: 32 }).chain((p) => fc.integer({ min: 0, max: 2 ** Math.max(0, 32 - Math.max(p, own.prefix)) - 1 }).map((off) => {
    const ip = p <= own.prefix ? own.ip : (own.ip + off * 2 ** (32 - p)) >>> 0;
    return formatCidr({ ip: p === 0 ? 0 : ((ip >>> (32 - p)) << (32 - p)) >>> 0, prefix: p });
  }));
  const hostBits = fc.tuple(u32, fc.integer({ min: 0, max: 32 })).map(([ip, p]) => `${formatIpv4(ip)}/${p}`);
  return fc.oneof(
    { weight: 6, arbitrary: nodeSubnet },
    { weight: 2, arbitrary: anyCidr },
    { weight: 2, arbitrary: aroundOwn },
    { weight: 1, arbitrary: hostBits },
    { weight: 1, arbitrary: fc.constantFrom("0.0.0.0/0", formatCidr(net.network), formatCidr(own), "255.255.255.255/32", `${formatCidr(own).replace(/\/\d+$/, "")}/0${net.subnetLen}`) },
    { weight: 1, arbitrary: nastyString() },
  );
}

function publicIpArb(net: NetworkConfig): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 6, arbitrary: fc.integer({ min: 2, max: 254 }).map((i) => `198.18.0.${i}`) },
    { weight: 2, arbitrary: u32.map(formatIpv4) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 2 ** (32 - net.network.prefix) - 1 }).map((o) => formatIpv4((net.network.ip + o) >>> 0)) },
    { weight: 2, arbitrary: fc.constantFrom("0.0.0.0", "0.1.2.3", "127.0.0.1", "255.255.255.255", "224.0.0.1", "239.255.255.250", "240.0.0.1", "169.254.1.1", iface.ip, "198.18.0.0", "198.18.0.255") },
    { weight: 1, arbitrary: nastyString(["198.18.0.02", "198.18.0", "198.18.0.1.1", " 198.18.0.2", "::1", "::ffff:198.18.0.2"]) },
  );
}

function attrsArb(own: BackendAttrs): fc.Arbitrary<BackendAttrs> {
  const macs = fc.oneof(
    fc.integer({ min: 2, max: 40 }).map((i) => `0e:00:00:00:01:${i.toString(16).padStart(2, "0")}`),
    fc.constantFrom("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "0E:00:00:00:01:02", ...(own.type === "vxlan" ? [own.vtepMac] : [])),
    nastyString(),
  );
  const keys = fc.oneof(fc.constantFrom(...KEYS, ...(own.type === "wireguard" ? [own.publicKey] : [])), nastyString(["A".repeat(43) + "=", "A".repeat(44)]));
  const int = fc.oneof(fc.integer({ min: -2, max: 70_000 }), fc.constantFrom(0, 1, 51820, 2 ** 31, 2 ** 53, Number.NaN, Infinity, -0));
  return fc.oneof(
    { weight: 4, arbitrary: fc.record({ type: fc.constant("vxlan" as const), vni: fc.oneof(fc.constant(own.type === "vxlan" ? own.vni : 1), int), vtepMac: macs }) },
    { weight: 4, arbitrary: fc.record({ type: fc.constant("wireguard" as const), publicKey: keys, listenPort: fc.oneof(fc.constant(51820), int) }) },
    { weight: 3, arbitrary: fc.constant({ type: "host-gw" as const }) },
  ).map((a) => a as BackendAttrs);
}

function leaseArb(net: NetworkConfig, own: Ipv4Net, ownAttrs: BackendAttrs): fc.Arbitrary<Lease> {
  // Our own node name now and then: the table must ignore it, whatever it claims.
  const nodeName = fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 2, max: 12 }).map((i) => `node-${i}`) }, { weight: 1, arbitrary: fc.constant(SELF) }, { weight: 1, arbitrary: nastyString() });
  return fc.record({
    subnet: subnetArb(net, own), nodeName, publicIP: publicIpArb(net), attrs: attrsArb(ownAttrs),
    expiresAt: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 2 ** 42 })), revision: fc.integer({ min: 0, max: 1000 }),
  });
}

function feedArb(r: Rig) {
  const net = r.net;
  const count = 2 ** (net.subnetLen - net.network.prefix);
  const own = fc.integer({ min: 1, max: count - 1 }).map((i) => ({ ip: (net.network.ip + i * 2 ** (32 - net.subnetLen)) >>> 0, prefix: net.subnetLen }));
  return own.chain((ownNet) => {
    const lease = leaseArb(net, ownNet, r.ownAttrs);
    const event = fc.record({ type: fc.constantFrom("added", "changed", "removed") as fc.Arbitrary<LeaseEvent["type"]>, lease, revision: fc.nat(2000) });
    return fc.record({ own: fc.constant(ownNet), snapshot: fc.array(lease, { maxLength: 12 }), events: fc.array(event, { maxLength: 12 }) });
  });
}

function isUsableUnderlay(ip: string | undefined, net: NetworkConfig): boolean {
  const n = ip === undefined ? undefined : parseIpv4(ip);
  if (n === undefined) return false;
  const first = n >>> 24;
  return first !== 0 && first !== 127 && first < 224 && !contains(net.network, n);
}

function checkPeerSubnet(subnet: string, net: NetworkConfig, own: Ipv4Net): Ipv4Net {
  const n = parseCidr(subnet);
  expect(n, `programmed subnet ${subnet} is a CIDR`).toBeDefined();
  expect(formatCidr(n!)).toBe(subnet);
  expect(containsNet(net.network, n!) && n!.prefix === net.subnetLen, `${subnet} is a /${net.subnetLen} inside ${formatCidr(net.network)}`).toBe(true);
  expect(overlaps(n!, own), `${subnet} overlaps our own ${formatCidr(own)}`).toBe(false);
  return n!;
}

/** Every entry of the desired state obeys the invariants; returns the peers it programs. */
function checkDesired(d: DesiredState, r: Rig, own: Ipv4Net): Set<string> {
  const { net } = r;
  const programmed = new Set<string>();
  const routeDsts: Ipv4Net[] = [];
  for (const stage of d.stages) {
    for (const { entries } of stage) {
      for (const { peer, value } of entries) {
        if (peer === NODE_ENTRY) {
          // The one node-wide object: WireGuard's route for the whole network into its device.
          expect(net.backend.type).toBe("wireguard");
          expect((value as Route).dst).toBe(formatCidr(net.network));
          continue;
        }
        const pnet = checkPeerSubnet(peer, net, own);
        programmed.add(peer);
        if ("dst" in (value as object) && "oif" in (value as object)) {
          const route = value as Route;
          expect(route.dst).toBe(peer);
          routeDsts.push(pnet);
          const gw = parseIpv4(route.gateway ?? "");
          expect(gw, `route ${route.dst} has a gateway`).toBeDefined();
          if (route.onlink) {
            // VXLAN: via the peer's .0 on our device, resolved by our own permanent ARP entry.
            expect(contains(pnet, gw!)).toBe(true);
          } else {
            expect(isUsableUnderlay(route.gateway, net), `gateway ${route.gateway}`).toBe(true);
            expect(contains(iface.net, gw!), `gateway ${route.gateway} on the underlay segment`).toBe(true);
          }
        } else if ("mac" in (value as object) && "ip" in (value as object)) {
          const n = value as Neighbour;
          expect(contains(pnet, parseIpv4(n.ip)!)).toBe(true);
          expect(isValidMac(n.mac)).toBe(true);
        } else if ("mac" in (value as object) && "dst" in (value as object)) {
          const f = value as FdbEntry;
          expect(isValidMac(f.mac)).toBe(true);
          expect(r.ownAttrs.type === "vxlan" && f.mac === r.ownAttrs.vtepMac).toBe(false);
          expect(isUsableUnderlay(f.dst, net), `VTEP ${f.dst}`).toBe(true);
        } else {
          const w = value as WgPeerConfig;
          expect(isKey(w.publicKey)).toBe(true);
          expect(w.allowedIPs).toEqual([peer]);
          const [host, port] = w.endpoint.split(":");
          expect(isUsableUnderlay(host, net), `endpoint ${w.endpoint}`).toBe(true);
          expect(Number(port)).toBeGreaterThan(0);
          expect(Number(port)).toBeLessThan(65536);
        }
      }
    }
  }
  for (let i = 0; i < routeDsts.length; i++) {
    for (let j = i + 1; j < routeDsts.length; j++) expect(overlaps(routeDsts[i]!, routeDsts[j]!), "two peer routes overlap").toBe(false);
  }
  return programmed;
}

describe.each(Object.keys(NETWORKS))("lease feed -> %s backend (fuzz)", (name) => {
  const inputs = inputCounter(`peer feed (${name})`);

  it("programs only node subnets of the network, never over our own, with usable gateways; rejects the rest with a reason", async () => {
    const r = await rig(NETWORKS[name]!);
    const reconciler = new Reconciler(silentLog);
    await fc.assert(fc.asyncProperty(feedArb(r), async ({ own, snapshot, events }) => {
      inputs.add(snapshot.length + events.length);
      await r.backend.configureSubnet({ subnet: formatCidr(own), nodeName: SELF, publicIP: iface.ip, attrs: r.ownAttrs, expiresAt: 0, revision: 1 });
      const table = new PeerTable(SELF);
      table.addSnapshotLeases(snapshot);
      table.completeSnapshot();
      for (const e of events) table.applyEvent(e);
      const peers = table.list();
      expect(peers.some((p) => p.nodeName === SELF)).toBe(false);

      const d = r.backend.desired(peers);
      const programmed = checkDesired(d, r, own);
      for (const p of peers) {
        const rej = d.rejected.get(p.subnet);
        expect(programmed.has(p.subnet) || (rej !== undefined && rej.detail.length > 0), `lease ${p.subnet} of ${p.nodeName} is programmed or rejected with a reason`).toBe(true);
        expect(programmed.has(p.subnet) && rej !== undefined, `lease ${p.subnet} both programmed and rejected`).toBe(false);
      }

      // And what actually reaches the (fake) kernel after a reconcile pass.
      await reconciler.reconcile(d);
      for (const route of r.dp.routeMap.values()) {
        if (route.dst === formatCidr(r.net.network) && name === "wireguard") continue;
        checkPeerSubnet(route.dst, r.net, own);
      }
      for (const n of r.dp.neighbourMap.values()) expect(programmed.has(formatCidr({ ip: (parseIpv4(n.ip)! >>> (32 - r.net.subnetLen) << (32 - r.net.subnetLen)) >>> 0, prefix: r.net.subnetLen }))).toBe(true);
      for (const f of r.dp.fdbMap.values()) expect(isUsableUnderlay(f.dst, r.net)).toBe(true);
      for (const p of r.wg.peers.values()) for (const a of p.allowedIPs) checkPeerSubnet(a, r.net, own);
    }), fuzzParams(150));
  }, FUZZ_TIMEOUT_MS);

  it("still programs every well-formed peer (the checks are not simply refusing everything)", async () => {
    const r = await rig(NETWORKS[name]!);
    const net = r.net;
    const step = 2 ** (32 - net.subnetLen);
    const count = Math.min(2 ** (net.subnetLen - net.network.prefix), 200);
    await fc.assert(fc.asyncProperty(fc.uniqueArray(fc.integer({ min: 2, max: count - 1 }), { minLength: 1, maxLength: 12 }), async (idx) => {
      inputs.add(idx.length);
      const own = { ip: (net.network.ip + step) >>> 0, prefix: net.subnetLen };
      await r.backend.configureSubnet({ subnet: formatCidr(own), nodeName: SELF, publicIP: iface.ip, attrs: r.ownAttrs, expiresAt: 0, revision: 1 });
      const peers: Lease[] = idx.map((i, k) => ({
        subnet: formatCidr({ ip: (net.network.ip + i * step) >>> 0, prefix: net.subnetLen }), nodeName: `node-${i}`, publicIP: `198.18.0.${(i % 250) + 2}`,
        attrs: net.backend.type === "vxlan" ? { type: "vxlan", vni: 1, vtepMac: `0e:00:00:00:${(i >> 8).toString(16).padStart(2, "0")}:${(i & 255).toString(16).padStart(2, "0")}` }
          : net.backend.type === "wireguard" ? { type: "wireguard", publicKey: Buffer.alloc(32, i).toString("base64"), listenPort: 51820 } : { type: "host-gw" },
        expiresAt: 0, revision: k + 2,
      }));
      const d = r.backend.desired(peers);
      expect([...d.rejected.values()]).toEqual([]);
      expect(checkDesired(d, r, own)).toEqual(new Set(peers.map((p) => p.subnet)));
    }), fuzzParams(50));
  }, FUZZ_TIMEOUT_MS);
});
