// npm run bench:agent — how fast one agent programs 1,000 and 5,000 peers
// from a snapshot, against iproute2's batch mode doing the same in the same
// run, how long one peer change takes with the full table, and the agent's
// RSS. Real lease server (SQLite) and the real bin/weft-agent (its Node flags
// read from its #! line; compiled dist/ if built, else sources) in wft-bench-*
// namespaces; fake peers are leases acquired by bench/agent-load.ts. Weft and
// iproute2 alternate, round by round. Prints a table and ends with one JSON line.
import { mkdirSync, readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { cpus, loadavg } from "node:os";
import { Cluster, GRPC_PORT, ROOT, SERVER_IP, shebangCommand, shebangEnv, shebangNodeFlags } from "../test/e2e/cluster.js";
import { addNetns, ip, ipJson, sh } from "../test/e2e/netns.js";
import { iproute2Batch, type RouteForm } from "./agent-iproute2.js";

const SIZES = (process.env.WEFT_BENCH_SIZES ?? "1000,5000").split(",").map(Number);
const ROUNDS = Number(process.env.WEFT_BENCH_ROUNDS ?? 3);
/** Peers added and removed one at a time at the largest size (each is one add and one remove). */
const CHANGES = Number(process.env.WEFT_BENCH_CHANGES ?? 10);
const AGENT_BIN = join(ROOT, "bin/weft-agent");

interface LogLine { time: string; msg: string; ms?: number; peers?: number; peer?: string; type?: string; added?: number; deleted?: number }

function readLog(path: string): LogLine[] {
  return readFileSync(path, "utf8").split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as LogLine);
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Math.round((Number(m[1]) / 1024) * 10) / 10 : NaN;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[(s.length - 1) >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2) : NaN;
};
const range = (xs: number[], unit: string): string => (xs.length ? `${Math.min(...xs)}–${Math.max(...xs)} ${unit}` : "-");

/**
 * One peer change as the agent saw it: from its "lease event" log line (the event decoded) to the end
 * of the pass that programmed it (its "reconciled" line, written after the kernel acknowledged every
 * object), and that pass's own duration.
 */
function peerChanges(lines: LogLine[]): Array<{ type: string; eventToKernelMs: number; passMs: number; added: number; deleted: number }> {
  const out = [];
  for (let i = 0; i < lines.length; i++) {
    const e = lines[i]!;
    if (e.msg !== "lease event" || !e.peer?.startsWith("bench-extra-")) continue;
    const done = lines.slice(i + 1).find((l) => l.msg === "reconciled");
    if (!done) continue;
    out.push({ type: e.type!, eventToKernelMs: Date.parse(done.time) - Date.parse(e.time), passMs: done.ms ?? NaN, added: done.added ?? 0, deleted: done.deleted ?? 0 });
  }
  return out;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error("bench:agent needs root (network namespaces)");
  const runner = existsSync(join(ROOT, "dist/node-agent/src/main.js")) && existsSync(join(ROOT, "dist/lease-server/src/main.js")) ? "dist" : "tsx";
  // For experiments only (reported in the output): WEFT_BENCH_AGENT_FLAGS replaces the #! flags, e.g.
  // to compare with and without --no-opt, or to add --cpu-prof --cpu-prof-dir=/tmp/prof.
  const agentFlags = process.env.WEFT_BENCH_AGENT_FLAGS?.split(" ").filter(Boolean) ?? shebangNodeFlags(AGENT_BIN);
  const agentCmd = [...shebangEnv(AGENT_BIN), "node", ...agentFlags].join(" ");
  await new Cluster({ runId: "bench", nodes: 0 }).cleanupPrevious();
  const c = new Cluster({ runId: "bench", nodes: 1, leaseTtl: "30m", runner, network: "10.0.0.0/8", resyncInterval: "5s" });
  if (process.env.WEFT_BENCH_AGENT_FLAGS && runner === "dist") {
    // Cluster runs bin/ with its #! flags; swap in the asked-for ones for the agent alone.
    const cmd = c as unknown as { nodeCmd(entry: string): string[] };
    const orig = cmd.nodeCmd.bind(c);
    cmd.nodeCmd = (entry) => (entry === "agent" ? [...shebangCommand(AGENT_BIN, agentFlags), AGENT_BIN] : orig(entry));
  }
  const results: Array<Record<string, number | string>> = [];
  const refs: Array<{ peers: number; round: number; form: RouteForm; ms: number; ipMs: number; bridgeMs: number }> = [];
  const micros: Array<Record<string, unknown>> = [];
  let changes: ReturnType<typeof peerChanges> = [];
  try {
    await c.setup();
    mkdirSync(join(c.workDir, "batch"), { recursive: true });
    // 1. The kernel-programming core alone: one reconcile pass in a fresh namespace, no server, no gRPC.
    const micro = `${c.prefix}micro`;
    await addNetns(micro);
    await ip("-n", micro, "link", "add", "ul0", "type", "veth", "peer", "name", "ul1");
    await ip("-n", micro, "addr", "add", "198.18.1.1/24", "dev", "ul0");
    await ip("-n", micro, "link", "set", "ul0", "up");
    for (const n of SIZES) {
      const script = runner === "dist" ? [join(ROOT, "dist/bench/agent-reconcile.js")] : ["--import", "tsx", join(ROOT, "bench/agent-reconcile.ts")];
      const r = await sh("ip", ["netns", "exec", micro, ...shebangCommand(AGENT_BIN, agentFlags), ...script, String(n)], { timeoutMs: 120_000 });
      micros.push(JSON.parse(r.stdout.trim().split("\n").at(-1)!) as Record<string, unknown>);
      await ip("-n", micro, "link", "del", "weft.1");
    }
    // 2. The whole agent process against a real lease server, and iproute2 batch, alternating.
    await c.startServer();
    const ns = c.nodes[0]!.ns;
    let loaded = 0;
    const largest = Math.max(...SIZES);
    for (const n of SIZES) {
      const load = await sh("ip", ["netns", "exec", c.srv, process.execPath, "--import", "tsx", join(ROOT, "bench/agent-load.ts"), `${SERVER_IP}:${GRPC_PORT}`, String(loaded), String(n)], { timeoutMs: 300_000 });
      loaded = n;
      process.stderr.write(`loaded ${n} leases (${load.stdout.trim()})\n`);
      for (let round = 0; round < ROUNDS; round++) {
        const reference = async () => {
          for (const form of ["routes", "nexthops"] as const) refs.push({ peers: n, round, form, ...await iproute2Batch(`${c.prefix}ipr`, n, join(c.workDir, "batch"), form) });
        };
        // Which goes first alternates, so a slow spell of the machine does not always hit the same one.
        if (round % 2 === 0) await reference();
        // Program from scratch: no device, so no routes, ARP or FDB entries from the previous round.
        await ip("-n", ns, "link", "del", "weft.1").catch(() => undefined);
        const started = Date.now();
        const agent = c.startAgent(0, ["--log-level", "info"]);
        await c.waitReady(0, 120_000);
        const readyAt = Date.now();
        // Let two timer passes run over the full table before sampling memory.
        await new Promise((r) => setTimeout(r, 11_000));
        let rss = rssMiB(agent.pid!);
        const churn = n === largest && round === ROUNDS - 1 && CHANGES > 0;
        if (churn) {
          await sh("ip", ["netns", "exec", c.srv, process.execPath, "--import", "tsx", join(ROOT, "bench/agent-churn.ts"), `${SERVER_IP}:${GRPC_PORT}`, String(CHANGES), "700"], { timeoutMs: 120_000 });
          rss = Math.max(rss, rssMiB(agent.pid!));
        }
        const routes = (await ipJson<unknown[]>(ns, "route", "show", "proto", "87")).length;
        await c.stopAgent(0, "SIGTERM");
        const lines = readLog(c.logPath("node-0"));
        const snap = lines.filter((l) => l.msg === "lease snapshot complete").at(-1)!;
        const ready = lines.filter((l) => l.msg === "ready").at(-1)!;
        if (churn) changes = peerChanges(lines);
        results.push({
          peers: n, round, routes, reconcileMs: ready.ms ?? NaN, snapshotToReadyMs: Date.parse(ready.time) - Date.parse(snap.time),
          startToReadyMs: readyAt - started, rssMiB: rss,
        });
        await sh("mv", [c.logPath("node-0"), c.logPath(`node-0-${n}-${round}`)]);
        if (routes !== n) throw new Error(`expected ${n} routes, kernel has ${routes}`);
        if (round % 2 === 1) await reference();
      }
    }
  } finally {
    await c.destroy();
  }
  const out = (s: string) => process.stdout.write(s + "\n");
  out(`\none reconcile pass from empty (route + ARP + FDB per peer), NetlinkDataplane alone, ${agentCmd}`);
  for (const m of micros) out(`  ${String(m.peers).padStart(6)} peers: first pass ${m.firstMs} ms (${m.added} kernel objects), no-op pass ${m.noopMs} ms (after peer changes ${m.noopAfterChangesMs} ms), one peer added or removed ${median(m.singlePeerMs as number[])} ms p50, RSS ${m.rssAfterNoop} MiB`);
  out(`\nprogramming N peers from nothing (VXLAN: route + ARP + FDB per peer), ${ROUNDS} rounds each; agent runner ${runner}, ${agentCmd}`);
  out(`  ${"peers".padStart(6)} ${"iproute2 batch".padStart(16)} ${"weft snapshot->ready".padStart(22)} ${"ratio".padStart(6)} ${"iproute2 nexthops".padStart(18)} ${"ratio".padStart(6)} ${"reconcile pass".padStart(16)} ${"start->ready".padStart(16)} ${"RSS".padStart(16)}`);
  const ratio = (a: number, b: number) => Math.round((a / b) * 100) / 100;
  const summary = SIZES.map((n) => {
    const w = results.filter((r) => r.peers === n);
    const ref = refs.filter((r) => r.peers === n && r.form === "routes").map((r) => r.ms);
    const refNh = refs.filter((r) => r.peers === n && r.form === "nexthops").map((r) => r.ms);
    const weft = w.map((r) => r.snapshotToReadyMs as number);
    const s = {
      peers: n, iproute2Ms: median(ref), weftMs: median(weft), ratio: ratio(median(weft), median(ref)),
      iproute2NexthopsMs: median(refNh), ratioToNexthops: ratio(median(weft), median(refNh)), rssMiBMax: Math.max(...w.map((r) => r.rssMiB as number)),
    };
    out(`  ${String(n).padStart(6)} ${range(ref, "ms").padStart(16)} ${range(weft, "ms").padStart(22)} ${s.ratio.toFixed(2).padStart(6)} ${range(refNh, "ms").padStart(18)} ${s.ratioToNexthops.toFixed(2).padStart(6)} ${range(w.map((r) => r.reconcileMs as number), "ms").padStart(16)} ${range(w.map((r) => r.startToReadyMs as number), "ms").padStart(16)} ${range(w.map((r) => r.rssMiB as number), "MiB").padStart(16)}`);
    return s;
  });
  out(`  ratio = median weft snapshot->ready / median iproute2 batch (ip -batch + bridge -batch, process start included)`);
  out(`  iproute2 batch: route add ... via ... onlink (the issue's reference); iproute2 nexthops: the objects weft makes (a nexthop per peer + a route naming it)`);
  const adds = changes.filter((x) => x.type === "added"), removes = changes.filter((x) => x.type === "removed");
  const churn = {
    peers: Math.max(...SIZES), adds: adds.length, removes: removes.length,
    addEventToKernelMs: { p50: median(adds.map((x) => x.eventToKernelMs)), max: Math.max(...adds.map((x) => x.eventToKernelMs)) },
    removeEventToKernelMs: { p50: median(removes.map((x) => x.eventToKernelMs)), max: Math.max(...removes.map((x) => x.eventToKernelMs)) },
    passMs: { p50: Math.round(median(changes.map((x) => x.passMs)) * 100) / 100, max: Math.max(...changes.map((x) => x.passMs)) },
    objectsPerChange: [...new Set(changes.map((x) => x.added + x.deleted))],
  };
  if (changes.length) {
    out(`\none peer added / removed at ${churn.peers} peers (${adds.length} + ${removes.length}): lease event logged -> pass done (kernel has it)`);
    out(`  add    p50 ${churn.addEventToKernelMs.p50} ms, max ${churn.addEventToKernelMs.max} ms`);
    out(`  remove p50 ${churn.removeEventToKernelMs.p50} ms, max ${churn.removeEventToKernelMs.max} ms`);
    out(`  the pass itself: p50 ${churn.passMs.p50} ms, max ${churn.passMs.max} ms; kernel objects per change: ${churn.objectsPerChange.join(", ")}`);
  }
  out(`  load average at the end: ${loadavg().map((x) => x.toFixed(2)).join(" ")} on ${cpus().length} CPUs`);
  const five = summary.find((s) => s.peers === 5000);
  const meets = five ? five.ratio <= 1 && five.rssMiBMax <= 64 && (!changes.length || Math.max(churn.addEventToKernelMs.max, churn.removeEventToKernelMs.max) < 5) : null;
  out(JSON.stringify({ bench: "agent", runner, agentEnv: shebangEnv(AGENT_BIN), agentFlags, rounds: ROUNDS, summary, reference: refs, results, churn, changes, reconcile: micros, targetRatio: 1, targetRssMiB: 64, targetChangeMs: 5, meetsTargets: meets }));
}

main().catch((err) => {
  process.stderr.write(`bench:agent failed: ${(err as Error).message}\n`);
  process.exit(1);
});
