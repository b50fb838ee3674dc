// npm run bench:iperf — pod-to-pod TCP throughput through weft's data plane
// against the same data plane configured by hand with iproute2, in the same
// run and topology (2 nodes on a veth+bridge underlay, 1 pod each through the
// real CNI bridge + host-local plugins, wft-iperf-* namespaces):
//   underlay            node -> node over eth0
//   vxlan   hand / weft a VXLAN device (VNI 1, port 8472, learning off, MTU
//                       underlay-50) with ARP + FDB + onlink route per peer
//   host-gw hand / weft a route per peer subnet via the peer's address
//   wireguard hand / weft  a wireguard-go device (this kernel has no WireGuard;
//                       the agent runs wireguard-go too; both in a session of
//                       their own), MTU underlay-80, one peer with the other
//                       node's key, endpoint and subnet, set with wg(8), and a
//                       route for the peer subnet
// For WireGuard it also measures how soon after a new peer appears on a
// node's device the first handshake with it completes (read over wireguard-go's
// UAPI with millisecond timestamps): the agent starts handshakes at once
// instead of waiting for the first packet.
// Pods get the MTU the agent writes in subnet.env (FLANNEL_MTU) in both the
// weft and the hand-made runs of a mode, as a user would set by hand. For
// each mode the rounds alternate weft and hand (the agent is stopped, its
// device and routes are removed, the same objects are made with ip/bridge).
// The firewall rules the agent installs stay in place in both, so the only
// difference is how the data path was configured. Ends with one JSON line.
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { cpus, loadavg } from "node:os";
import { Cluster, type Pod } from "../test/e2e/cluster.js";
import { ip, ipJson, nsExec, sh, waitFor } from "../test/e2e/netns.js";
import { generateKeyPair } from "../node-agent/src/wireguard/keys.js";
import { UapiControl } from "../node-agent/src/wireguard/uapi.js";

const MODES = ["vxlan", "host-gw", "wireguard"] as const;
type Mode = (typeof MODES)[number];
/** wireguard-go's UAPI socket path is global: distinct device names per node. */
const wgDevice = (i: number) => `wgiperf${i}`;

const SECONDS = Number(process.env.WEFT_IPERF_SECONDS ?? 5);
/** Which data paths to measure, e.g. WEFT_IPERF_MODES=wireguard (default all). */
const ONLY = process.env.WEFT_IPERF_MODES?.split(",");
const ROUNDS = Number(process.env.WEFT_IPERF_ROUNDS ?? 3);

async function iperf(serverNs: string, clientNs: string, target: string): Promise<number> {
  const server = sh("ip", ["netns", "exec", serverNs, "iperf3", "-s", "-1", "-B", target], { allowFail: true, timeoutMs: (SECONDS + 20) * 1000 });
  await new Promise((r) => setTimeout(r, 400));
  const r = await sh("ip", ["netns", "exec", clientNs, "iperf3", "-c", target, "-t", String(SECONDS), "-J"], { timeoutMs: (SECONDS + 20) * 1000 });
  await server;
  const j = JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number } } };
  return Math.round(j.end.sum_received.bits_per_second / 1e6);
}

interface NodeFacts { subnet: string; gw: string }

async function facts(c: Cluster, i: number): Promise<NodeFacts> {
  const subnet = (await c.agentApi<{ subnet: string }>(i, "/v1/lease")).json.subnet;
  return { subnet, gw: subnet.split("/")[0]! };
}

/** Stops the agents and removes what they programmed (not the firewall rules): a clean slate for the hand-made data path. */
async function weftOff(c: Cluster): Promise<void> {
  for (const i of [0, 1]) {
    await c.stopAgent(i);
    // Nexthops first: iproute2's route flush cannot delete a route that names a nexthop (it sends the
    // nexthop's expanded gateway too, which the kernel refuses beside the id).
    await ip("-n", c.nodes[i]!.ns, "nexthop", "flush", "protocol", "87");
    await ip("-n", c.nodes[i]!.ns, "route", "flush", "proto", "87");
    // Deleting wireguard-go's device also ends wireguard-go.
    for (const dev of ["weft.1", wgDevice(i)]) await ip("-n", c.nodes[i]!.ns, "link", "del", dev).catch(() => undefined);
  }
}

const agentFlags = (i: number) => ["--wireguard-device", wgDevice(i)];

async function weftOn(c: Cluster): Promise<void> {
  for (const i of [0, 1]) c.startAgent(i, agentFlags(i));
  for (const i of [0, 1]) await c.waitPeers(i, 1, 60_000);
}

/**
 * Node 1 comes back with a new key (its device and key file removed), so node 0 gets a new peer: the
 * time from that peer appearing on node 0's device to the first completed handshake with it, both read
 * from the device (ms).
 */
async function handshakeAfterPeerAppears(c: Cluster): Promise<number> {
  const dev0 = new UapiControl(wgDevice(0));
  const known = new Set((await dev0.get()).peers.map((p) => p.publicKey));
  await c.stopAgent(1);
  await ip("-n", c.nodes[1]!.ns, "link", "del", wgDevice(1)).catch(() => undefined);
  rmSync(join(c.nodes[1]!.stateDir, `wireguard-${wgDevice(1)}.key`), { force: true });
  c.startAgent(1, agentFlags(1));
  let appeared = 0;
  const hs = await waitFor("a handshake with the new peer", async () => {
    const p = (await dev0.get()).peers.find((x) => !known.has(x.publicKey));
    if (p && !appeared) appeared = Date.now();
    return p?.lastHandshakeMs || undefined;
  }, 30_000, 2);
  await c.waitPeers(1, 1, 60_000);
  return hs - appeared;
}

/** VXLAN as an admin would type it: the same objects the agent makes. */
async function handVxlan(c: Cluster, f: NodeFacts[]): Promise<() => Promise<void>> {
  const macs = ["0e:aa:00:00:00:01", "0e:aa:00:00:00:02"];
  for (const i of [0, 1]) {
    const n = c.nodes[i]!.ns;
    const j = 1 - i;
    await ip("-n", n, "link", "add", "vxh", "address", macs[i]!, "mtu", "1450", "type", "vxlan", "id", "1", "local", c.nodes[i]!.underlayIP, "dev", "eth0", "dstport", "8472", "nolearning");
    await ip("-n", n, "addr", "add", `${f[i]!.gw}/32`, "dev", "vxh");
    await ip("-n", n, "link", "set", "vxh", "up");
    await ip("-n", n, "neigh", "add", f[j]!.gw, "lladdr", macs[j]!, "dev", "vxh", "nud", "permanent");
    await nsExec(n, "bridge", "fdb", "append", macs[j]!, "dev", "vxh", "dst", c.nodes[j]!.underlayIP, "self", "permanent");
    await ip("-n", n, "route", "add", f[j]!.subnet, "via", f[j]!.gw, "dev", "vxh", "onlink");
  }
  return async () => { for (const i of [0, 1]) await ip("-n", c.nodes[i]!.ns, "link", "del", "vxh"); };
}

async function handHostGw(c: Cluster, f: NodeFacts[]): Promise<() => Promise<void>> {
  for (const i of [0, 1]) await ip("-n", c.nodes[i]!.ns, "route", "add", f[1 - i]!.subnet, "via", c.nodes[1 - i]!.underlayIP, "dev", "eth0");
  return async () => { for (const i of [0, 1]) await ip("-n", c.nodes[i]!.ns, "route", "del", f[1 - i]!.subnet); };
}

/** A WireGuard tunnel as an admin would make it with wireguard-go and wg(8). */
async function handWireguard(c: Cluster, f: NodeFacts[]): Promise<() => Promise<void>> {
  const keys = [generateKeyPair(), generateKeyPair()];
  const dev = (i: number) => `wghand${i}`;
  for (const i of [0, 1]) {
    const n = c.nodes[i]!.ns;
    const j = 1 - i;
    // In a session of its own, as the agent starts it (and as a systemd unit would): with the kernel's
    // autogroup scheduling, a session is a CPU share of its own, which moves throughput by ~20% here.
    await nsExec(n, "setsid", "wireguard-go", dev(i));
    const keyFile = `${c.workDir}/hand-wg${i}.key`;
    await sh("sh", ["-c", `umask 077; echo ${keys[i]!.privateKey} > ${keyFile}`]);
    await nsExec(n, "wg", "set", dev(i), "private-key", keyFile, "listen-port", "51820", "peer", keys[j]!.publicKey,
      "endpoint", `${c.nodes[j]!.underlayIP}:51820`, "allowed-ips", f[j]!.subnet);
    await ip("-n", n, "addr", "add", `${f[i]!.gw}/32`, "dev", dev(i));
    await ip("-n", n, "link", "set", dev(i), "mtu", "1420", "up");
    await ip("-n", n, "route", "add", f[j]!.subnet, "dev", dev(i));
  }
  return async () => { for (const i of [0, 1]) await ip("-n", c.nodes[i]!.ns, "link", "del", dev(i)); };
}

const HAND: Record<Mode, (c: Cluster, f: NodeFacts[]) => Promise<() => Promise<void>>> = { vxlan: handVxlan, "host-gw": handHostGw, wireguard: handWireguard };

/** Pods for a mode, with the MTU the agent wrote (FLANNEL_MTU). */
async function pods(c: Cluster, mode: string): Promise<[Pod, Pod]> {
  for (const i of [0, 1]) {
    await sh("ip", ["netns", "del", `${c.nodes[i]!.ns}-p0`], { allowFail: true });
    await ip("-n", c.nodes[i]!.ns, "link", "del", "cni0").catch(() => undefined);
    await sh("rm", ["-rf", `${c.workDir}/${c.nodes[i]!.name}/cni`]);
  }
  const a = await c.addPod(0, 0);
  const b = await c.addPod(1, 0);
  const mtu = (await ipJson<Array<{ mtu: number }>>(a.ns, "link", "show", "eth0"))[0]!.mtu;
  process.stderr.write(`${mode}: pods ${a.ip} and ${b.ip}, pod MTU ${mtu}\n`);
  return [a, b];
}

/** utime + stime of both agent processes, in ms. */
function agentCpuMs(c: Cluster): number {
  let ms = 0;
  for (const n of c.nodes) {
    if (!n.agent?.pid) continue;
    // ip netns exec execs the agent, so the child's pid is the agent's.
    const f = readFileSync(`/proc/${n.agent.pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    ms += ((Number(f[11]) + Number(f[12])) * 1000) / 100;
  }
  return ms;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error("bench:iperf needs root (network namespaces)");
  for (const bin of ["/usr/bin/iperf3", "/usr/lib/cni/bridge", "/usr/bin/wireguard-go", "/usr/bin/wg"]) if (!existsSync(bin)) throw new Error(`bench:iperf needs ${bin} (scripts/setup.sh installs it)`);
  await new Cluster({ runId: "iperf", nodes: 0 }).cleanupPrevious();
  // The production resync interval: the agents' periodic checks are part of what is measured.
  const c = new Cluster({ runId: "iperf", nodes: 2, leaseTtl: "10m", resyncInterval: "10s" });
  const results: Record<string, number[]> = { underlay: [], ...Object.fromEntries(MODES.flatMap((m) => [[`${m} weft`, []], [`${m} hand`, []]])) };
  const handshakes: number[] = [];
  const mtus: Record<string, string> = {};
  /** CPU the two agents used while iperf ran through their data plane (ms, all rounds). */
  const agentCpu: Record<string, number> = {};
  try {
    await c.setup();
    for (const mode of MODES) {
      if (ONLY && !ONLY.includes(mode)) continue;
      await c.stopServer();
      await c.startServer({ Type: mode });
      for (const i of [0, 1]) await c.stopAgent(i);
      await weftOn(c);
      mtus[mode] = c.subnetEnv(0).FLANNEL_MTU!;
      if (mode === "wireguard") {
        for (let r = 0; r < ROUNDS; r++) handshakes.push(await handshakeAfterPeerAppears(c));
        process.stderr.write(`wireguard: first handshake ${handshakes.join(", ")} ms after the peer appeared\n`);
      }
      const f = [await facts(c, 0), await facts(c, 1)];
      const [a, b] = await pods(c, mode);
      const weft = async () => {
        const cpu0 = agentCpuMs(c);
        results[`${mode} weft`]!.push(await iperf(b.ns, a.ns, b.ip));
        agentCpu[mode] = (agentCpu[mode] ?? 0) + agentCpuMs(c) - cpu0;
        await weftOff(c);
      };
      const hand = async () => {
        const undo = await HAND[mode](c, f);
        results[`${mode} hand`]!.push(await iperf(b.ns, a.ns, b.ip));
        await undo();
      };
      // Alternate which goes first, so drift in machine load hits both alike.
      for (let r = 0; r < ROUNDS; r++) {
        if (r > 0) await weftOn(c);
        if (r % 2 === 0) { await weft(); await hand(); } else { await weftOff(c); await hand(); await weftOn(c); await weft(); }
        results.underlay!.push(await iperf(c.nodes[1]!.ns, c.nodes[0]!.ns, c.nodes[1]!.underlayIP));
        process.stderr.write(`${mode} round ${r + 1}: weft ${results[`${mode} weft`]!.at(-1)}, hand ${results[`${mode} hand`]!.at(-1)}, underlay ${results.underlay!.at(-1)} Mbit/s\n`);
      }
      await weftOn(c);
    }
  } finally {
    await c.destroy();
  }
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  const m = Object.fromEntries(Object.entries(results).map(([k, v]) => [k, median(v)]));
  const ratio = (mode: string) => Math.round((m[`${mode} weft`]! / m[`${mode} hand`]!) * 100) / 100;
  const measured = MODES.filter((mode) => results[`${mode} weft`]!.length);
  process.stdout.write(`\nTCP throughput pod -> pod, iperf3 -t ${SECONDS}, ${ROUNDS} rounds (median), veth underlay MTU 1500\n`);
  process.stdout.write(`  ${"path".padEnd(26)} ${"Mbit/s".padStart(8)}\n`);
  process.stdout.write(`  ${"node -> node (underlay)".padEnd(26)} ${String(m.underlay).padStart(8)}\n`);
  for (const mode of measured) {
    process.stdout.write(`  ${`${mode}, by hand (${mode === "wireguard" ? "wg" : "iproute2"})`.padEnd(26)} ${String(m[`${mode} hand`]).padStart(8)}   pod MTU ${mtus[mode]}\n`);
    process.stdout.write(`  ${`${mode}, weft`.padEnd(26)} ${String(m[`${mode} weft`]).padStart(8)}   ${ratio(mode)} of by hand, ${Math.round((m[`${mode} weft`]! / m.underlay!) * 100)}% of the underlay; agents used ${Math.round(agentCpu[mode]!)} ms CPU in ${ROUNDS * SECONDS} s of traffic\n`);
  }
  if (handshakes.length) process.stdout.write(`  wireguard: first handshake ${median(handshakes)} ms (median of ${handshakes.join(", ")}) after a new peer appeared on the device\n`);
  process.stdout.write(`  load average at the end: ${loadavg().map((x) => x.toFixed(2)).join(" ")} on ${cpus().length} CPUs\n`);
  process.stdout.write(JSON.stringify({ bench: "iperf", seconds: SECONDS, rounds: results, medians: m, ratios: Object.fromEntries(measured.map((mode) => [mode, ratio(mode)])), handshakeMs: handshakes, agentCpuMs: agentCpu, target: 0.97 }) + "\n");
}

main().catch((err) => {
  process.stderr.write(`bench:iperf failed: ${(err as Error).message}\n`);
  process.exit(1);
});
