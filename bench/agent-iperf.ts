// npm run bench:iperf — pod-to-pod TCP throughput over the VXLAN overlay next
// to node-to-node throughput on the underlay, measured in the same run with
// iperf3 (2 nodes, 1 pod each, wft-iperf-* namespaces). Ends with one JSON line.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { cpus, loadavg } from "node:os";
import { Cluster, ROOT } from "../test/e2e/cluster.js";
import { sh } from "../test/e2e/netns.js";

const SECONDS = Number(process.env.WEFT_IPERF_SECONDS ?? 5);
const ROUNDS = Number(process.env.WEFT_IPERF_ROUNDS ?? 3);

async function iperf(serverNs: string, clientNs: string, target: string): Promise<number> {
  const server = sh("ip", ["netns", "exec", serverNs, "iperf3", "-s", "-1", "-B", target], { allowFail: true, timeoutMs: (SECONDS + 20) * 1000 });
  await new Promise((r) => setTimeout(r, 500));
  const r = await sh("ip", ["netns", "exec", clientNs, "iperf3", "-c", target, "-t", String(SECONDS), "-J"], { timeoutMs: (SECONDS + 20) * 1000 });
  await server;
  const j = JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number } } };
  return Math.round(j.end.sum_received.bits_per_second / 1e6);
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error("bench:iperf needs root (network namespaces)");
  for (const bin of ["/usr/bin/iperf3", "/usr/lib/cni/bridge"]) if (!existsSync(bin)) throw new Error(`bench:iperf needs ${bin}`);
  const runner = existsSync(join(ROOT, "dist/node-agent/src/main.js")) && existsSync(join(ROOT, "dist/lease-server/src/main.js")) ? "dist" : "tsx";
  await new Cluster({ runId: "iperf", nodes: 0 }).cleanupPrevious();
  const c = new Cluster({ runId: "iperf", nodes: 2, runner });
  const rounds: Array<{ underlayMbps: number; overlayMbps: number }> = [];
  try {
    await c.setup();
    await c.startServer();
    c.startAgent(0);
    c.startAgent(1);
    for (const i of [0, 1]) await c.waitReady(i, 60_000);
    for (const i of [0, 1]) await c.waitPeers(i, 1, 60_000);
    const a = await c.addPod(0, 0);
    const b = await c.addPod(1, 0);
    // Alternate so drift in machine load hits both paths alike.
    for (let i = 0; i < ROUNDS; i++) {
      const underlayMbps = await iperf(c.nodes[1]!.ns, c.nodes[0]!.ns, c.nodes[1]!.underlayIP);
      const overlayMbps = await iperf(b.ns, a.ns, b.ip);
      rounds.push({ underlayMbps, overlayMbps });
      process.stderr.write(`round ${i + 1}: underlay ${underlayMbps} Mbit/s, overlay ${overlayMbps} Mbit/s\n`);
    }
  } finally {
    await c.destroy();
  }
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  const underlay = median(rounds.map((r) => r.underlayMbps));
  const overlay = median(rounds.map((r) => r.overlayMbps));
  process.stdout.write(`\nTCP throughput, iperf3 -t ${SECONDS}, ${ROUNDS} rounds (median), veth underlay MTU 1500, VXLAN MTU 1450\n`);
  process.stdout.write(`  node -> node (underlay)     ${String(underlay).padStart(7)} Mbit/s\n`);
  process.stdout.write(`  pod  -> pod  (VXLAN)        ${String(overlay).padStart(7)} Mbit/s  (${Math.round((overlay / underlay) * 100)}% of underlay)\n`);
  process.stdout.write(`  load average at the end: ${loadavg().map((x) => x.toFixed(2)).join(" ")} on ${cpus().length} CPUs\n`);
  process.stdout.write(JSON.stringify({ bench: "iperf", seconds: SECONDS, rounds, underlayMbps: underlay, overlayMbps: overlay, ratio: Math.round((overlay / underlay) * 100) / 100 }) + "\n");
}

main().catch((err) => {
  process.stderr.write(`bench:iperf failed: ${(err as Error).message}\n`);
  process.exit(1);
});
