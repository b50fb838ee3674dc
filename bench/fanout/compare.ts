// --compare: the whole comparison in one invocation. For each size, one after
// the other: weft on SQLite (1 lease server), weft on etcd with 1 and with 2
// lease servers, and etcd alone with the watchers on etcd (Flannel's way).
// Each run is this bench again as a child process in a process group of its
// own, bounded by --timeout-s (its own hard limit) and a watchdog 30 s later
// that kills the whole group; a run that cannot finish is a row that says so.
import { spawn, type ChildProcess } from "node:child_process";
import { cpus, loadavg, release } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Opts } from "./options.js";
import { raiseFileLimit, sleep } from "./proc.js";
import { r1, type Result } from "./report.js";
import { filesNeeded } from "./run.js";

const ENTRY = join(dirname(fileURLToPath(import.meta.url)), "..", "fanout.js");

interface Config { id: string; label: string; args: string[] }
const CONFIGS: Config[] = [
  { id: "weft-sqlite-1", label: "weft, SQLite, 1 server", args: ["--target", "weft", "--store", "sqlite", "--per-server"] },
  { id: "weft-etcd-1", label: "weft, etcd, 1 server", args: ["--target", "weft", "--store", "etcd", "--servers", "1"] },
  { id: "weft-etcd-2", label: "weft, etcd, 2 servers", args: ["--target", "weft", "--store", "etcd", "--servers", "2"] },
  { id: "etcd-direct", label: "etcd direct (Flannel's way)", args: ["--target", "etcd", "--per-server"] },
];

interface Row { config: string; label: string; watchers: number; clientProcs: number; status: "ok" | "incomplete" | "timeout" | "failed" | "skipped"; note: string; wallS: number; result?: Result }

/** Watcher processes for a size: 1 per 2,500 watchers unless --client-procs says otherwise. */
const procsFor = (o: Opts, n: number) => (o.clientProcsSet ? o.clientProcs : Math.max(1, Math.min(16, Math.ceil(n / 2500))));

let current: ChildProcess | undefined;
/** On our exit: the running run stops its processes and removes its temp dirs (SIGTERM); whatever is left of its group is killed 2 s later. */
function killGroup(): void {
  const pid = current?.pid;
  if (!pid || current!.exitCode !== null || current!.signalCode !== null) return;
  try { process.kill(-pid, "SIGTERM"); } catch { return; }
  const alive = () => { try { process.kill(pid, 0); return true; } catch { return false; } };
  const wait = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < 20 && alive(); i++) Atomics.wait(wait, 0, 0, 100); // exit handlers cannot await
  try { process.kill(-pid, "SIGKILL"); } catch { /* all gone */ }
}

function runOne(o: Opts, c: Config, watchers: number, clientProcs: number, log: (s: string) => void): Promise<Row> {
  const args = [ENTRY, ...c.args, "--watchers", String(watchers), "--client-procs", String(clientProcs),
    "--changes", String(o.changes), "--interval-ms", String(o.intervalMs), "--leases", String(o.leases), ...(o.isolated ? ["--isolated"] : []),
    "--connect-concurrency", String(o.connectConcurrency), "--setup-timeout-s", String(o.setupTimeoutS),
    "--settle-timeout-s", String(o.settleTimeoutS), "--timeout-s", String(o.timeoutS),
    ...(o.verbose ? ["--verbose"] : []), ...o.serverNodeArgs.flatMap((a) => ["--server-node-arg", a])];
  const base = { config: c.id, label: c.label, watchers, clientProcs };
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"], detached: true });
    current = child;
    let out = "";
    const errTail: string[] = [];
    child.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
    let ebuf = "";
    child.stderr!.setEncoding("utf8").on("data", (d: string) => {
      ebuf += d;
      let nl;
      while ((nl = ebuf.indexOf("\n")) >= 0) {
        const line = ebuf.slice(0, nl);
        ebuf = ebuf.slice(nl + 1);
        process.stderr.write(`  [${c.id} ${watchers}] ${line}\n`);
        errTail.push(line);
        if (errTail.length > 40) errTail.shift(); // enough to hold a refusal and the help after it
      }
    });
    // The run stops itself at --timeout-s; this is for a run that cannot even do that.
    let watchdogFired = false;
    const watchdog = setTimeout(() => {
      watchdogFired = true;
      log(`${c.id} ${watchers}: no end ${o.timeoutS + 30} s after start; killing its process group`);
      try { process.kill(-child.pid!, "SIGTERM"); } catch { /* gone */ }
      setTimeout(() => { try { process.kill(-child.pid!, "SIGKILL"); } catch { /* gone */ } }, 5000).unref();
    }, (o.timeoutS + 30) * 1000);
    child.on("close", (code, sig) => {
      clearTimeout(watchdog);
      // Anything of the run still alive (a server it could not stop) goes with its group.
      try { process.kill(-child.pid!, "SIGKILL"); } catch { /* all gone, as expected */ }
      current = undefined;
      const wallS = r1((Date.now() - started) / 1000);
      const last = out.trim().split("\n").pop() ?? "";
      let result: Result | undefined;
      try { result = JSON.parse(last) as Result; } catch { /* below */ }
      const clip = (l: string) => l.replace(/\s+/g, " ").slice(0, 300);
      const why = clip(errTail.filter((l) => !l.startsWith("[fanout]") || /exited|failed/.test(l)).slice(-3).join(" | "));
      const lastStep = errTail.filter((l) => l.startsWith("[fanout]") && !/WARNING/.test(l)).pop();
      if (code === 0 && result) {
        const notes: string[] = [];
        if (result.opened < watchers) notes.push(`only ${result.opened}/${watchers} watchers connected within ${o.setupTimeoutS} s`);
        if (result.incompleteChanges > 0) notes.push(`${result.incompleteChanges}/${result.changes} changes did not reach every watcher within ${o.settleTimeoutS} s (${result.missingDeliveries} deliveries missing)`);
        if (result.reconnects > 0 || result.streamErrors > 0) notes.push(`${result.reconnects} reconnects, ${result.streamErrors} stream errors`);
        resolve({ ...base, status: notes.length ? "incomplete" : "ok", note: notes.join("; "), wallS, result });
      } else if (code === 3 || watchdogFired) {
        resolve({ ...base, status: "timeout", note: `not finished within ${o.timeoutS} s (--timeout-s)${lastStep ? `; last step: ${clip(lastStep.replace(/^\[fanout\] /, ""))}` : ""}`, wallS });
      } else if (code === 2) {
        const refusal = errTail.find((l) => l.startsWith("bench:fanout:"));
        resolve({ ...base, status: "skipped", note: refusal ? clip(refusal.replace(/^bench:fanout: /, "")) : "refused to start", wallS });
      } else {
        resolve({ ...base, status: "failed", note: `exit ${code ?? sig}${why ? `: ${why}` : ""}`, wallS });
      }
    });
  });
}

const ms = (n: number | undefined) => (n === undefined || Number.isNaN(n) ? "–" : `${Math.round(n).toLocaleString("en-US")} ms`);
const us = (n: number | null | undefined) => (n === null || n === undefined ? "–" : `${n < 10 ? n.toFixed(1) : Math.round(n)} µs`);
const mib = (n: number | null | undefined) => (n === null || n === undefined ? "–" : `${Math.round(n)} MiB`);

/** One markdown table: latency to the last watcher, CPU per delivered (watcher, change) event, RSS. */
export function table(rows: Row[]): string {
  const head = ["watchers", "target", "p50", "p99", "lease server CPU / event", "etcd CPU / event", "all server CPU / event",
    "events / message", "change RPC p50", "lease server RSS peak", "etcd RSS peak", "setup", "machine busy before", "note"];
  const lines = [`| ${head.join(" | ")} |`, `|${head.map((_, i) => (i === 1 || i === head.length - 1 ? "---" : "---:")).join("|")}|`];
  for (const r of rows) {
    const res = r.result;
    const per = res && "perServer" in res ? res.perServer : [];
    const deliveries = res && "deliveredEvents" in res ? res.deliveredEvents : 0;
    const lease = per.filter((s) => s.name !== "etcd");
    const etcd = per.find((s) => s.name === "etcd");
    const ok = res && r.status !== "timeout";
    const cells = [
      r.watchers.toLocaleString("en-US"),
      r.label,
      ok ? ms(res.p50Ms) : "–",
      ok ? ms(res.p99Ms) : "–",
      lease.length ? lease.map((s) => us(s.cpuPerEventUs)).join(" / ") : "–",
      etcd && deliveries ? us(r1((etcd.cpuS * 1e6) / deliveries)) : "–",
      res && "allServersCpuPerEventUs" in res ? us(res.allServersCpuPerEventUs) : "–",
      res && "eventsPerMessage" in res && res.eventsPerMessage !== null ? res.eventsPerMessage.toFixed(2) : "–",
      ok ? ms(res.ackP50Ms) : "–",
      lease.length ? lease.map((s) => mib(s.rssPeakMiB)).join(" / ") : "–",
      etcd ? mib(etcd.rssPeakMiB) : "–",
      res ? `${res.setupS} s` : "–",
      res ? `${res.machineBusyBeforePct} %` : "–",
      r.status === "ok" ? "" : `**${r.status}**: ${r.note.replaceAll("|", "/")}`,
    ];
    lines.push(`| ${cells.join(" | ")} |`);
  }
  return lines.join("\n");
}

/** Per size: weft on SQLite against etcd direct, p99 and server CPU per event (the issue's "twice as well" is p99 ratio <= 0.5). */
function ratios(rows: Row[]): string[] {
  const out: string[] = [];
  for (const size of [...new Set(rows.map((r) => r.watchers))]) {
    const w = rows.find((r) => r.watchers === size && r.config === "weft-sqlite-1" && r.status === "ok")?.result;
    const e = rows.find((r) => r.watchers === size && r.config === "etcd-direct" && r.status === "ok")?.result;
    if (!w || !e) continue;
    const cpu = (x: Result) => ("serverCpuPerEventUs" in x ? x.serverCpuPerEventUs : null);
    const wc = cpu(w);
    const ec = cpu(e);
    out.push(`${size.toLocaleString("en-US")} watchers: weft p99 / etcd p99 = ${(w.p99Ms / e.p99Ms).toFixed(2)} (${Math.round(w.p99Ms)} / ${Math.round(e.p99Ms)} ms); `
      + `p50 ${(w.p50Ms / e.p50Ms).toFixed(2)}; server CPU per event ${wc ?? "-"} / ${ec ?? "-"} µs`);
  }
  return out.length ? ["", ...out] : [];
}

export async function runCompare(o: Opts): Promise<void> {
  const log = (s: string) => process.stderr.write(`[fanout:compare] ${s}\n`);
  process.on("exit", killGroup);
  raiseFileLimit(Math.max(...o.sizes.map((n) => filesNeeded({ watchers: n, clientProcs: procsFor(o, n) }))), log);
  const unknown = o.configs.filter((id) => !CONFIGS.some((c) => c.id === id));
  if (unknown.length > 0) throw new Error(`--configs: ${unknown.join(", ")} unknown; choose from ${CONFIGS.map((c) => c.id).join(", ")}`);
  const configs = o.configs.length > 0 ? CONFIGS.filter((c) => o.configs.includes(c.id)) : CONFIGS;
  const rows: Row[] = [];
  const started = new Date();
  log(`sizes ${o.sizes.join(", ")}; ${configs.map((c) => c.id).join(", ")}; ${o.changes} changes ${o.isolated ? "isolated, + " : "every "}${o.intervalMs} ms; each run at most ${o.timeoutS} s; load average ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  for (const size of o.sizes) {
    const procs = procsFor(o, size);
    for (const c of configs) {
      log(`${c.label}, ${size} watchers in ${procs} process(es)`);
      const row = await runOne(o, c, size, procs, log);
      rows.push(row);
      const r = row.result;
      log(`${c.id} ${size}: ${row.status}${r ? `, p50 ${r.p50Ms} ms, p99 ${r.p99Ms} ms` : ""}${row.note ? ` (${row.note})` : ""}; ${row.wallS} s`);
      await sleep(3000); // let sockets and CPU settle before the next run
    }
  }
  const out = [
    `fan-out comparison: ${o.changes} changes ${o.isolated ? `isolated (each after the previous reached every watcher, + ${o.intervalMs} ms)` : `every ${o.intervalMs} ms`}, snapshot ${o.leases} leases; latency from sending the change until the last watcher got it;`,
    `CPU per event = a server's CPU time in the change phase / (watcher, change) deliveries (etcd behind weft: its CPU over all watchers' deliveries);`,
    `${cpus().length} cores, ${release()}, Node.js ${process.version}, started ${started.toISOString()}, load average at the end ${loadavg().map((x) => x.toFixed(2)).join(" ")}`,
    "",
    table(rows),
    ...ratios(rows),
  ];
  process.stdout.write(out.join("\n") + "\n" + JSON.stringify({
    bench: "fanout-compare", sizes: o.sizes, changes: o.changes, intervalMs: o.intervalMs, isolated: o.isolated, configs: configs.map((c) => c.id), snapshotLeases: o.leases, timeoutS: o.timeoutS,
    cpus: cpus().length, kernel: release(), node: process.version, started: started.toISOString(),
    runs: rows.map(({ result, ...r }) => ({ ...r, result: result ?? null })),
  }) + "\n");
}
