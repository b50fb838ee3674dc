// npm run bench:drift — how fast the agent undoes kernel drift. Two nodes in
// wft-drift-* namespaces (VXLAN, then host-gw), the real bin/weft-agent with
// a 30 s resync timer (so only kernel notifications can explain a fast
// repair). In node 0 each kind of object is deleted or changed ROUNDS times;
// `ip -ts monitor all`, running in the same namespace, timestamps both the
// damage and the repair, and the difference is the repair time. Ends with one
// JSON line.
//
// The reference a user would otherwise have is Flannel: its host-gw route
// check runs every 10 s (a deleted route is back after 0-10 s, 5 s on
// average), and nothing puts back a VXLAN route, ARP or FDB entry (only new
// lease events do). The bench measures the same repair with weft's timer
// alone too (--watch-kernel=false --resync-interval 10s: Flannel's host-gw
// route check), so the ratio comes from one run.
import { spawn, type ChildProcess } from "node:child_process";
import { cpus, loadavg } from "node:os";
import { Cluster } from "../test/e2e/cluster.js";
import { ip, ipJson, sh } from "../test/e2e/netns.js";

const ROUNDS = Number(process.env.WEFT_DRIFT_ROUNDS ?? 20);
const TIMER_ROUNDS = Number(process.env.WEFT_DRIFT_TIMER_ROUNDS ?? 5);

interface Event { readonly t: number; readonly line: string }

/** `ip -ts -o monitor all` in a namespace, its lines kept with their timestamps (ms). */
class Monitor {
  readonly events: Event[] = [];
  private readonly p: ChildProcess;
  private buf = "";
  constructor(ns: string) {
    this.p = spawn("ip", ["-n", ns, "-ts", "-o", "monitor", "all"], { stdio: ["ignore", "pipe", "ignore"] });
    this.p.stdout!.on("data", (d: Buffer) => {
      this.buf += d.toString();
      let nl;
      while ((nl = this.buf.indexOf("\n")) >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        // Only differences matter: the time of day in ms, to the microsecond.
        const m = /^\[\d{4}-\d\d-\d\dT(\d\d):(\d\d):(\d\d\.\d+)\]\s?(.*)$/.exec(line);
        if (m) this.events.push({ t: ((Number(m[1]) * 60 + Number(m[2])) * 60 + Number(m[3])) * 1000, line: m[4]! });
      }
    });
  }
  /** Waits for a line matching `re` after index `from`; returns it. */
  async next(re: RegExp, from: number, timeoutMs: number): Promise<{ event: Event; index: number }> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const i = this.events.findIndex((e, k) => k >= from && re.test(e.line));
      if (i >= 0) return { event: this.events[i]!, index: i };
      if (Date.now() > end) throw new Error(`no event matching ${re} within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }
  stop(): void {
    this.p.kill();
  }
}

interface Kind {
  readonly name: string;
  /** Damages the kernel state. */
  readonly damage: () => Promise<unknown>;
  /** The monitor line that shows the damage, and the one that shows the repair. */
  readonly damaged: RegExp;
  readonly repaired: RegExp;
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** `jitterMs`: a random wait before each damage, so damage does not line up with a periodic timer. */
async function measure(mon: Monitor, k: Kind, rounds: number, timeoutMs: number, jitterMs = 0): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < rounds; i++) {
    if (jitterMs) await new Promise((res) => setTimeout(res, Math.random() * jitterMs));
    const from = mon.events.length;
    await k.damage();
    const d = await mon.next(k.damaged, from, 5000);
    const r = await mon.next(k.repaired, d.index + 1, timeoutMs);
    out.push(Math.round((r.event.t - d.event.t) * 10) / 10);
    await new Promise((res) => setTimeout(res, 150));
  }
  return out;
}

const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;

async function vxlanKinds(c: Cluster): Promise<Kind[]> {
  const ns = c.nodes[0]!.ns;
  const peer = (await c.agentApi<{ subnet: string }>(1, "/v1/lease")).json.subnet;
  const own = (await c.agentApi<{ subnet: string }>(0, "/v1/lease")).json.subnet.split("/")[0]!;
  const gw = peer.split("/")[0]!;
  const mac = (await ipJson<Array<{ address: string }>>(c.nodes[1]!.ns, "link", "show", "weft.1"))[0]!.address;
  return [
    { name: "route", damage: () => ip("-n", ns, "route", "del", peer), damaged: new RegExp(`^\\[ROUTE\\]Deleted ${esc(peer)} via`), repaired: new RegExp(`^\\[ROUTE\\]${esc(peer)} via ${esc(gw)} dev weft.1 proto 87`) },
    { name: "neighbour", damage: () => ip("-n", ns, "neigh", "del", gw, "dev", "weft.1"), damaged: new RegExp(`^\\[NEIGH\\]Deleted ${esc(gw)} dev weft.1`), repaired: new RegExp(`^\\[NEIGH\\]${esc(gw)} dev weft.1 lladdr ${mac} PERMANENT`) },
    { name: "fdb", damage: () => sh("ip", ["netns", "exec", ns, "bridge", "fdb", "del", mac, "dev", "weft.1", "dst", "198.18.0.2", "self"]), damaged: new RegExp(`^\\[NEIGH\\]Deleted 198.18.0.2 dev weft.1 lladdr ${mac}`), repaired: new RegExp(`^\\[NEIGH\\]198.18.0.2 dev weft.1 lladdr ${mac}.*PERMANENT`) },
    { name: "address", damage: () => ip("-n", ns, "addr", "del", `${own}/32`, "dev", "weft.1"), damaged: new RegExp(`^\\[ADDR\\]Deleted \\d+: weft.1 +inet ${esc(own)}/32`), repaired: new RegExp(`^\\[ADDR\\]\\d+: weft.1 +inet ${esc(own)}/32`) },
    { name: "mtu", damage: () => ip("-n", ns, "link", "set", "weft.1", "mtu", "1300"), damaged: /^\[LINK\]\d+: weft.1: .* mtu 1300 /, repaired: /^\[LINK\]\d+: weft.1: .* mtu 1450 / },
    // The whole device: back with its address and the peer's ARP, FDB and route (the route comes last).
    // A device's teardown announces its addresses, routes and entries going before the device itself
    // (whose deletion waits for its last references): the damage starts at the first of them.
    { name: "device", damage: () => ip("-n", ns, "link", "del", "weft.1"), damaged: /^\[(LINK|ADDR|ROUTE|NEIGH)\].*\bweft\.1\b/, repaired: new RegExp(`^\\[ROUTE\\]${esc(peer)} via ${esc(gw)} dev weft.1 proto 87`) },
  ];
}

async function hostGwKinds(c: Cluster): Promise<Kind[]> {
  const ns = c.nodes[0]!.ns;
  const peer = (await c.agentApi<{ subnet: string }>(1, "/v1/lease")).json.subnet;
  return [{ name: "host-gw route", damage: () => ip("-n", ns, "route", "del", peer), damaged: new RegExp(`^\\[ROUTE\\]Deleted ${esc(peer)} via 198.18.0.2`), repaired: new RegExp(`^\\[ROUTE\\]${esc(peer)} via 198.18.0.2 dev eth0 proto 87`) }];
}

async function run(backend: "vxlan" | "host-gw", rows: Array<Record<string, unknown>>): Promise<void> {
  const runId = `drift${backend === "vxlan" ? "v" : "h"}`;
  await new Cluster({ runId, nodes: 0 }).cleanupPrevious();
  const c = new Cluster({ runId, nodes: 2, leaseTtl: "10m", resyncInterval: "30s", backend: { Type: backend } });
  let mon: Monitor | undefined;
  try {
    await c.setup();
    await c.startServer();
    for (const i of [0, 1]) c.startAgent(i);
    for (const i of [0, 1]) await c.waitPeers(i, 1, 60_000);
    mon = new Monitor(c.nodes[0]!.ns);
    await new Promise((r) => setTimeout(r, 300));
    const kinds = backend === "vxlan" ? await vxlanKinds(c) : await hostGwKinds(c);
    for (const k of kinds) {
      const ms = await measure(mon, k, ROUNDS, 5000);
      rows.push({ backend, kind: k.name, mode: "notifications", rounds: ms.length, p50: pct(ms, 50), max: Math.max(...ms), samples: ms });
      process.stderr.write(`${backend} ${k.name}: p50 ${pct(ms, 50)} ms, max ${Math.max(...ms)} ms\n`);
    }
    // The timer alone (Flannel's host-gw way): the same agent, notifications unused, resync 10 s.
    await c.stopAgent(0);
    c.startAgent(0, ["--resync-interval", "10s", "--watch-kernel=false"]);
    await c.waitReady(0, 60_000);
    const first = kinds[0]!;
    const ms = await measure(mon, first, TIMER_ROUNDS, 15_000, 10_000);
    rows.push({ backend, kind: first.name, mode: "timer 10s", rounds: ms.length, p50: pct(ms, 50), max: Math.max(...ms), samples: ms });
    process.stderr.write(`${backend} ${first.name}, timer only: p50 ${pct(ms, 50)} ms, max ${Math.max(...ms)} ms\n`);
  } finally {
    mon?.stop();
    await c.destroy();
  }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error("bench:drift needs root (network namespaces)");
  const rows: Array<Record<string, unknown>> = [];
  await run("vxlan", rows);
  await run("host-gw", rows);
  process.stdout.write(`\ndrift repair time, ${ROUNDS} rounds per kind (${TIMER_ROUNDS} for the timer-only reference), from the damage to the repair as \`ip -ts monitor\` saw them\n`);
  process.stdout.write(`  ${"backend".padEnd(8)} ${"object".padEnd(14)} ${"repaired by".padEnd(14)} ${"p50".padStart(9)} ${"max".padStart(9)}\n`);
  for (const r of rows) process.stdout.write(`  ${String(r.backend).padEnd(8)} ${String(r.kind).padEnd(14)} ${String(r.mode).padEnd(14)} ${`${r.p50} ms`.padStart(9)} ${`${r.max} ms`.padStart(9)}\n`);
  for (const b of ["vxlan", "host-gw"]) {
    const fast = rows.find((r) => r.backend === b && r.mode === "notifications");
    const slow = rows.find((r) => r.backend === b && r.mode !== "notifications");
    if (fast && slow) process.stdout.write(`  ${b} route: notifications repair ${Math.round((slow.p50 as number) / (fast.p50 as number))}x faster (p50) than the 10 s timer\n`);
  }
  process.stdout.write(`  load average at the end: ${loadavg().map((x) => x.toFixed(2)).join(" ")} on ${cpus().length} CPUs\n`);
  process.stdout.write(JSON.stringify({ bench: "drift", rounds: ROUNDS, results: rows.map(({ samples: _s, ...r }) => r) }) + "\n");
}

main().catch((err) => {
  process.stderr.write(`bench:drift failed: ${(err as Error).message}\n`);
  process.exit(1);
});
