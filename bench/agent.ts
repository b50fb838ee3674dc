// npm run bench:agent — how fast one agent programs 1,000 and 5,000 peers
// from a snapshot, and its RSS with them. Real lease server (SQLite) and real
// agent process (compiled dist/ if built, else sources) in wft-bench-*
// namespaces; fake peers are leases acquired by bench/agent-load.ts.
// Prints a table and ends with one JSON line.
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { cpus, loadavg } from "node:os";
import { Cluster, GRPC_PORT, ROOT, SERVER_IP } from "../test/e2e/cluster.js";
import { addNetns, ip, ipJson, sh } from "../test/e2e/netns.js";

const SIZES = (process.env.WEFT_BENCH_SIZES ?? "1000,5000").split(",").map(Number);
const SMALL_HEAP = "--max-semi-space-size=2 --max-old-space-size=128";

interface LogLine { time: string; msg: string; ms?: number; peers?: number }

function readLog(path: string): LogLine[] {
  return readFileSync(path, "utf8").split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as LogLine);
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Math.round((Number(m[1]) / 1024) * 10) / 10 : NaN;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error("bench:agent needs root (network namespaces)");
  const runner = existsSync(join(ROOT, "dist/node-agent/src/main.js")) && existsSync(join(ROOT, "dist/lease-server/src/main.js")) ? "dist" : "tsx";
  await new Cluster({ runId: "bench", nodes: 0 }).cleanupPrevious();
  const c = new Cluster({ runId: "bench", nodes: 1, leaseTtl: "30m", runner, network: "10.0.0.0/8", resyncInterval: "5s" });
  const results: Array<Record<string, number | string>> = [];
  const micros: Array<Record<string, unknown>> = [];
  try {
    await c.setup();
    // 1. The kernel-programming core alone: one reconcile pass in a fresh namespace, no server, no gRPC.
    const micro = `${c.prefix}micro`;
    await addNetns(micro);
    await ip("-n", micro, "link", "add", "ul0", "type", "veth", "peer", "name", "ul1");
    await ip("-n", micro, "addr", "add", "198.18.1.1/24", "dev", "ul0");
    await ip("-n", micro, "link", "set", "ul0", "up");
    for (const n of SIZES) {
      const script = runner === "dist" ? [join(ROOT, "dist/bench/agent-reconcile.js")] : ["--import", "tsx", join(ROOT, "bench/agent-reconcile.ts")];
      for (const v of [{ name: "default", opts: [] as string[] }, { name: "small-heap", opts: SMALL_HEAP.split(" ") }]) {
        const r = await sh("ip", ["netns", "exec", micro, process.execPath, ...v.opts, ...script, String(n)], { timeoutMs: 120_000 });
        micros.push({ variant: v.name, ...(JSON.parse(r.stdout.trim().split("\n").at(-1)!) as Record<string, unknown>) });
        await ip("-n", micro, "link", "del", "weft.1");
      }
    }
    // 2. The whole agent process against a real lease server.
    await c.startServer();
    const ns = c.nodes[0]!.ns;
    let loaded = 0;
    const variants = [
      { name: "default", env: {} },
      // V8 sizes its young generation for throughput; these caps trade a little GC time for much less RSS.
      { name: "small-heap", env: { NODE_OPTIONS: SMALL_HEAP } },
    ];
    for (const n of SIZES) {
      const load = await sh("ip", ["netns", "exec", c.srv, process.execPath, "--import", "tsx", join(ROOT, "bench/agent-load.ts"), `${SERVER_IP}:${GRPC_PORT}`, String(loaded), String(n)], { timeoutMs: 300_000 });
      loaded = n;
      process.stderr.write(`loaded ${n} leases (${load.stdout.trim()})\n`);
      for (const v of variants) {
      // Program from scratch: no device, so no routes, ARP or FDB entries from the previous round.
      await ip("-n", ns, "link", "del", "weft.1").catch(() => undefined);
      const logPath = c.logPath(`node-0-${n}-${v.name}`);
      const started = Date.now();
      const agent = c.startAgent(0, ["--log-level", "info"], v.env);
      await c.waitReady(0, 120_000);
      const readyAt = Date.now();
      // Let two timer passes run over the full table before sampling memory.
      await new Promise((r) => setTimeout(r, 11_000));
      const rss = rssMiB(agent.pid!);
      const routes = (await ipJson<unknown[]>(ns, "route", "show", "proto", "87")).length;
      await c.stopAgent(0, "SIGTERM");
      const lines = readLog(c.logPath("node-0"));
      const snap = lines.filter((l) => l.msg === "lease snapshot complete").at(-1)!;
      const ready = lines.filter((l) => l.msg === "ready").at(-1)!;
      const passes = lines.filter((l) => l.msg === "reconciled" && Date.parse(l.time) > Date.parse(ready.time));
      results.push({
        variant: v.name, peers: n, routes, reconcileMs: ready.ms ?? NaN, snapshotToReadyMs: Date.parse(ready.time) - Date.parse(snap.time),
        startToReadyMs: readyAt - started, rssMiB: rss, noopPassesWithChanges: passes.length,
      });
      await sh("mv", [c.logPath("node-0"), logPath]);
      if (routes !== n) throw new Error(`expected ${n} routes, kernel has ${routes}`);
      }
    }
  } finally {
    await c.destroy();
  }
  process.stdout.write(`\none reconcile pass from empty (route + ARP + FDB per peer), NetlinkDataplane alone\n`);
  for (const m of micros) {
    process.stdout.write(`  ${String(m.variant).padEnd(11)} ${String(m.peers).padStart(6)} peers: first pass ${m.firstMs} ms (${m.added} kernel objects), no-op pass ${m.noopMs} ms, RSS ${m.rssAfterNoop} MiB\n`);
  }
  process.stdout.write(`\nagent programming a snapshot (VXLAN: route + ARP + FDB per peer), runner ${runner}\n`);
  process.stdout.write(`  ${"node flags".padEnd(11)} ${"peers".padStart(6)} ${"kernel routes".padStart(13)} ${"reconcile pass".padStart(15)} ${"snapshot->ready".padStart(16)} ${"start->ready".padStart(13)} ${"RSS".padStart(9)}\n`);
  for (const r of results) {
    process.stdout.write(`  ${String(r.variant).padEnd(11)} ${String(r.peers).padStart(6)} ${String(r.routes).padStart(13)} ${`${r.reconcileMs} ms`.padStart(15)} ${`${r.snapshotToReadyMs} ms`.padStart(16)} ${`${r.startToReadyMs} ms`.padStart(13)} ${`${r.rssMiB} MiB`.padStart(9)}\n`);
  }
  process.stdout.write(`  small-heap = NODE_OPTIONS="${SMALL_HEAP}"; load average at the end: ${loadavg().map((x) => x.toFixed(2)).join(" ")} on ${cpus().length} CPUs\n`);
  const five = results.filter((r) => r.peers === 5000);
  const meets = five.length ? five.some((r) => (r.snapshotToReadyMs as number) <= 1000 && (r.rssMiB as number) <= 80) : null;
  process.stdout.write(JSON.stringify({ bench: "agent", runner, smallHeapNodeOptions: SMALL_HEAP, reconcile: micros, results, target5000Ms: 1000, target5000RssMiB: 80, meetsTargets: meets }) + "\n");
}

main().catch((err) => {
  process.stderr.write(`bench:agent failed: ${(err as Error).message}\n`);
  process.exit(1);
});

