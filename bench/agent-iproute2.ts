// The reference for bench:agent: the same N peers (ARP + FDB entry + onlink
// route each) programmed by iproute2's batch mode, `ip -batch` for the ARP
// entries and routes and `bridge -batch` for the FDB entries, on the same kind
// of VXLAN device as the agent's (learning off, port 8472, MTU 1450) in a fresh
// namespace with a veth underlay. The operations match the agent's: replace
// for ARP and FDB entries, add for routes (protocol 87). Timed from the start
// of `ip` to the end of `bridge`, process start-up included (a few ms).
//
// Two forms of the routes: "routes", what a user scripting iproute2 writes
// (`route add ... via ... dev ... onlink`), the reference; and
// "nexthops", the kernel objects weft itself makes (a nexthop object per
// peer with the id weft gives it, and a route naming it), to show what the
// choice of objects is worth apart from the tool.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { nexthopIdFor } from "../node-agent/src/dataplane/nexthop-id.js";
import { addNetns, ip, sh } from "../test/e2e/netns.js";

const hex = (x: number) => x.toString(16).padStart(2, "0");

/** Peer i: subnet 10.a.b.0/24, VTEP MAC and public IP as bench/agent-load.ts gives bench-<i>. */
function peer(i: number): { net: string; gw: string; mac: string; publicIP: string } {
  const a = (i >> 8) & 255, b = i & 255;
  return { net: `10.${a}.${b}.0/24`, gw: `10.${a}.${b}.0`, mac: `0e:be:00:${hex((i >> 16) & 255)}:${hex(a)}:${hex(b)}`, publicIP: `198.19.${Math.floor(i / 254)}.${(i % 254) + 1}` };
}

export type RouteForm = "routes" | "nexthops";

export async function iproute2Batch(ns: string, n: number, dir: string, form: RouteForm = "routes"): Promise<{ ms: number; ipMs: number; bridgeMs: number }> {
  await ip("netns", "del", ns).catch(() => undefined);
  await addNetns(ns);
  try {
    await ip("-n", ns, "link", "add", "ul0", "type", "veth", "peer", "name", "ul1");
    await ip("-n", ns, "addr", "add", "198.18.1.1/24", "dev", "ul0");
    await ip("-n", ns, "link", "set", "ul0", "up");
    await ip("-n", ns, "link", "set", "ul1", "up");
    await ip("-n", ns, "link", "add", "weft.1", "mtu", "1450", "type", "vxlan", "id", "1", "local", "198.18.1.1", "dev", "ul0", "dstport", "8472", "nolearning");
    await ip("-n", ns, "addr", "add", "10.255.255.0/32", "dev", "weft.1");
    await ip("-n", ns, "link", "set", "weft.1", "up");
    const ipLines: string[] = [];
    const fdbLines: string[] = [];
    for (let i = 0; i < n; i++) {
      const p = peer(i);
      ipLines.push(`neigh replace ${p.gw} lladdr ${p.mac} dev weft.1 nud permanent`);
      fdbLines.push(`fdb replace ${p.mac} dev weft.1 dst ${p.publicIP} self permanent`);
    }
    for (let i = 0; i < n; i++) {
      const p = peer(i);
      if (form === "routes") {
        ipLines.push(`route add ${p.net} via ${p.gw} dev weft.1 onlink proto 87`);
      } else {
        const id = nexthopIdFor(p.net)!;
        ipLines.push(`nexthop add id ${id} via ${p.gw} dev weft.1 onlink proto 87`, `route add ${p.net} nhid ${id} proto 87`);
      }
    }
    const ipFile = join(dir, `iproute2-ip-${form}-${n}.batch`);
    const fdbFile = join(dir, `iproute2-bridge-${n}.batch`);
    writeFileSync(ipFile, ipLines.join("\n") + "\n");
    writeFileSync(fdbFile, fdbLines.join("\n") + "\n");
    const t0 = performance.now();
    await sh("ip", ["-n", ns, "-batch", ipFile], { timeoutMs: 120_000 });
    const t1 = performance.now();
    await sh("bridge", ["-n", ns, "-batch", fdbFile], { timeoutMs: 120_000 });
    const t2 = performance.now();
    const routes = (await sh("ip", ["-n", ns, "route", "show", "proto", "87"])).stdout.trim().split("\n").filter(Boolean).length;
    const fdb = (await sh("bridge", ["-n", ns, "fdb", "show", "dev", "weft.1"])).stdout.split("\n").filter((l) => l.includes(" dst ")).length;
    if (routes !== n || fdb < n) throw new Error(`iproute2 batch: expected ${n} routes and FDB entries, kernel has ${routes} and ${fdb}`);
    return { ms: Math.round(t2 - t0), ipMs: Math.round(t1 - t0), bridgeMs: Math.round(t2 - t1) };
  } finally {
    await ip("netns", "del", ns).catch(() => undefined);
  }
}
