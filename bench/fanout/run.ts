// One run: start the target, connect the watchers in their processes, make
// the changes on a fixed schedule, wait until every watcher has them (or the
// settle limit), and print the lines and the JSON result.
import { fork, type ChildProcess } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { usage, type Opts } from "./options.js";
import { MiB, children, cpuSeconds, killAll, now, raiseFileLimit, rssBytes, sleep, stopChild, systemCpu } from "./proc.js";
import type { Arrival, FromWorker, ToWorker } from "./protocol.js";
import { buildResult, formatResult, histogramQuantiles, latencies, r1, type SentChange, type ServerFigures } from "./report.js";
import { startEtcd } from "./etcd-target.js";
import { startWeft } from "./weft-target.js";

const WORKER = join(dirname(fileURLToPath(import.meta.url)), "worker.js");

type Sizing = Pick<Opts, "watchers" | "clientProcs"> & Partial<Pick<Opts, "servers" | "target" | "streamsPerConnection">>;

/** Watchers per watcher process: a multiple of --streams-per-connection, so no connection's group is split over two processes. */
export function watchersPerProc(o: Sizing): number {
  const n = o.streamsPerConnection ?? 1;
  return Math.ceil(Math.ceil(o.watchers / o.clientProcs) / n) * n;
}

/**
 * Connections (one socket at each end) of the busiest server and of the busiest watcher process. A process
 * groups its watchers per server, so with several servers a group may be split: up to one more per server.
 */
export function connections(o: Sizing): { perServer: number; perProc: number } {
  const n = o.streamsPerConnection ?? 1;
  const servers = o.target === "weft" ? o.servers ?? 1 : 1;
  return {
    perServer: Math.ceil(Math.ceil(o.watchers / servers) / n),
    perProc: Math.ceil(Math.min(o.watchers, watchersPerProc(o)) / n) + (n > 1 && servers > 1 ? servers : 0),
  };
}

/** Open files the busiest process of a run needs (a server: a socket per connection, or a watcher process). */
export function filesNeeded(o: Sizing): number {
  const c = connections(o);
  return Math.max(c.perProc, c.perServer) + 200;
}

/** Connections one loopback source address takes to one server port (the ephemeral range is ~28,000). */
const PER_SOURCE_ADDRESS = 20_000;

/** Source addresses for the watchers: none (127.0.0.1, the default) up to 20,000 connections per server, else 127.0.0.2, .3, ... */
export function sourceAddresses(o: Pick<Opts, "watchers"> & Partial<Pick<Opts, "streamsPerConnection">>, servers: number): string[] {
  const perServer = Math.ceil(Math.ceil(o.watchers / servers) / (o.streamsPerConnection ?? 1));
  if (perServer <= PER_SOURCE_ADDRESS) return [];
  return Array.from({ length: Math.ceil(perServer / PER_SOURCE_ADDRESS) }, (_, k) => `127.0.0.${k + 2}`);
}

export async function runOnce(o: Opts): Promise<void> {
  const hardDeadline = setTimeout(() => {
    process.stderr.write(`bench:fanout: --timeout-s ${o.timeoutS} reached; stopping\n`);
    killAll();
    process.exit(3);
  }, o.timeoutS * 1000);
  hardDeadline.unref();

  // Each connection is one socket in a watcher process and one in the server.
  const perProc = watchersPerProc(o);
  const conns = connections(o);
  const log = (s: string) => process.stderr.write(`[fanout] ${s}\n`);
  const limit = raiseFileLimit(filesNeeded(o), log);
  if (filesNeeded(o) > limit) {
    const fit = Math.max(1, limit - 200);
    const n = o.streamsPerConnection;
    const procsNeeded = Math.ceil(Math.ceil(o.watchers / n) / fit);
    const ways = [`use fewer watchers`];
    if (o.target === "weft") {
      const spc = Math.ceil(Math.ceil(o.watchers / o.servers) / fit);
      if (conns.perServer + 200 > limit && spc <= 100) {
        ways.push(`let ${spc} watchers share a connection: --streams-per-connection ${spc} (the server still holds ${o.watchers} streams, over ${Math.ceil(o.watchers / spc)} connections instead of ${o.watchers})`);
      }
      if (n === 1) ways.push(`spread them over lease servers: --store etcd --servers ${Math.ceil(o.watchers / fit)} (${fit} streams per server under this limit)`);
    }
    const procs = conns.perProc + 200 > limit ? `; a watcher process also holds a socket per connection of its share: give --client-procs ${procsNeeded} or more` : "";
    usage(`--watchers ${o.watchers}${n > 1 ? ` --streams-per-connection ${n}` : ""} needs about ${filesNeeded(o)} open files per process (a server holds one socket per connection: ${conns.perServer}; `
      + `a watcher process one per connection of its share: ${conns.perProc}), but ulimit -n is ${limit} and the bench could not raise it `
      + `(only the hard limit's owner, or a process with CAP_SYS_RESOURCE, can raise it: a container may not). Raise it (ulimit -n 65536, or prlimit --nofile=65536 -p $$; as root) and run again, `
      + `or ${ways.join(", or ")}${procs}`);
  }

  // Other work on the machine skews every number here: measure it first.
  const idleA = systemCpu();
  await sleep(1000);
  const idleB = systemCpu();
  const busyBeforePct = Math.round(((idleB.busy - idleA.busy) / Math.max(1, idleB.total - idleA.total)) * 100);
  if (busyBeforePct > 10) log(`WARNING: the machine is already ${busyBeforePct}% busy before the bench starts; the results will be worse than on an idle machine`);
  log(`target=${o.target} watchers=${o.watchers} connections=${Math.ceil(o.watchers / o.streamsPerConnection)}${o.streamsPerConnection > 1 ? ` (${o.streamsPerConnection} streams per connection)` : ""} clientProcs=${o.clientProcs} changes=${o.changes} intervalMs=${o.intervalMs}${o.isolated ? " isolated" : ""}${o.reportStatus ? " report-status" : ""} leases=${o.leases} (ulimit -n ${limit})`);
  const target = o.target === "weft" ? await startWeft(o) : await startEtcd(o);
  log(`server pid ${target.pid} at ${target.addr}`);
  if (target.procs.length > 1) log(`servers: ${target.procs.map((p) => `${p.name} pid ${p.pid}${p.watchIndex !== undefined ? ` at ${target.addrs[p.watchIndex]}` : ""}`).join(", ")}`);
  await target.seed(o.leases);

  // RSS sampler for the servers and the watcher processes.
  let serverPeak = 0;
  const procPeak = new Map<number, number>();
  const workers: ChildProcess[] = [];
  const workerPeak = new Map<number, number>();
  const sample = () => {
    serverPeak = Math.max(serverPeak, rssBytes(target.pid));
    if (o.perServer) for (const p of target.procs) procPeak.set(p.pid, Math.max(procPeak.get(p.pid) ?? 0, rssBytes(p.pid)));
    for (const w of workers) workerPeak.set(w.pid!, Math.max(workerPeak.get(w.pid!) ?? 0, rssBytes(w.pid!)));
  };
  const sampler = setInterval(sample, 250);

  const inbox = new Map<ChildProcess, FromWorker[]>();
  // --isolated: which changes each watcher process has seen reach all of its watchers.
  const completes = new Map<ChildProcess, Extract<FromWorker, { ev: "complete" }>[]>();
  let onComplete: (() => void) | undefined;
  const waiters = new Map<ChildProcess, (m: FromWorker) => void>();
  const next = (w: ChildProcess, ev: FromWorker["ev"], timeoutMs: number) => new Promise<FromWorker>((res, rej) => {
    const q = inbox.get(w)!;
    const i = q.findIndex((m) => m.ev === ev || m.ev === "fatal");
    if (i >= 0) {
      const m = q.splice(i, 1)[0]!;
      return m.ev === "fatal" ? rej(new Error(`watcher process: ${m.message}`)) : res(m);
    }
    const t = setTimeout(() => rej(new Error(`watcher process ${w.pid} sent no ${ev} within ${timeoutMs} ms`)), timeoutMs);
    waiters.set(w, (m) => {
      if (m.ev !== ev && m.ev !== "fatal") return void q.push(m);
      clearTimeout(t);
      waiters.delete(w);
      if (m.ev === "fatal") rej(new Error(`watcher process: ${m.message}`));
      else res(m);
    });
  });

  /** --isolated: waits (at most --settle-timeout-s) until every watcher process says all its watchers have change s; notes its revision. */
  const everyWatcherHas = async (s: SentChange, prevRev: number): Promise<boolean> => {
    const seen = (c: Extract<FromWorker, { ev: "complete" }>) => (s.rev !== undefined ? c.rev === s.rev : c.type === s.type && c.key === s.key && c.rev > prevRev);
    const all = () => reporting.every((w) => completes.get(w)!.some(seen));
    const ok = await new Promise<boolean>((resolve) => {
      if (all()) return resolve(true);
      const t = setTimeout(() => { onComplete = undefined; resolve(false); }, o.settleTimeoutS * 1000);
      onComplete = () => {
        if (!all()) return;
        clearTimeout(t);
        onComplete = undefined;
        resolve(true);
      };
    });
    s.rev ??= completes.get(reporting[0]!)!.find(seen)?.rev;
    return ok;
  };
  let reporting: ChildProcess[] = [];

  const cpuMark = () => ({
    server: cpuSeconds(target.pid), procs: target.procs.map((p) => cpuSeconds(p.pid)), workers: workers.reduce((s, w) => s + cpuSeconds(w.pid!), 0),
    self: process.cpuUsage(), sys: systemCpu(), t: now(),
  });
  try {
    let offset = 0;
    const srcAddrs = sourceAddresses(o, target.addrs.length);
    if (srcAddrs.length > 0) log(`watchers connect from ${srcAddrs.join(", ")} (${PER_SOURCE_ADDRESS.toLocaleString("en-US")} per source address at most: ephemeral ports)`);
    for (let p = 0; p < o.clientProcs; p++) {
      const count = Math.min(perProc, o.watchers - offset);
      if (count <= 0) break;
      const w = fork(WORKER, [], { stdio: ["ignore", "inherit", "inherit", "ipc"], execArgv: ["--max-old-space-size=8192"], serialization: "advanced" });
      children.add(w);
      workers.push(w);
      inbox.set(w, []);
      completes.set(w, []);
      w.on("message", (m: FromWorker) => {
        if (m.ev === "complete") {
          completes.get(w)!.push(m);
          return onComplete?.();
        }
        (waiters.get(w) ?? ((x: FromWorker) => inbox.get(w)!.push(x)))(m);
      });
      w.on("exit", (code) => code && log(`watcher process ${w.pid} exited with ${code}`));
      w.send({
        cmd: "start", target: o.target, addrs: target.addrs, count, concurrency: o.connectConcurrency, setupTimeoutS: o.setupTimeoutS, offset,
        notifyComplete: o.isolated, srcAddrs, reportStatus: o.reportStatus, streamsPerConnection: o.streamsPerConnection,
      } satisfies ToWorker);
      offset += count;
    }
    const setupStart = cpuMark();
    const readies = await Promise.all(workers.map((w) => next(w, "ready", (o.setupTimeoutS + 30) * 1000))) as Extract<FromWorker, { ev: "ready" }>[];
    const opened = readies.reduce((s, r) => s + r.opened, 0);
    const openConnections = readies.reduce((s, r) => s + r.connections, 0);
    const failed = readies.reduce((s, r) => s + r.failed, 0);
    const openedByServer = target.addrs.map((_, i) => readies.reduce((s, r) => s + (r.openedByServer[i] ?? 0), 0));
    const setupMs = Math.max(...readies.map((r) => r.setupMs));
    sample();
    const rssAfterConnect = rssBytes(target.pid);
    const procRssAfterConnect = target.procs.map((p) => rssBytes(p.pid));
    const setupEnd = cpuMark();
    log(`${opened} watchers have their snapshot (${failed} failed)${o.streamsPerConnection > 1 ? ` on ${openConnections} connections` : ""} in ${r1(setupMs / 1000)} s; server RSS ${r1(rssAfterConnect / MiB)} MiB`);
    if (failed > 0) {
      const reasons = new Map<string, number>();
      for (const r of readies) for (const [k, n] of Object.entries(r.failReasons)) reasons.set(k, (reasons.get(k) ?? 0) + n);
      const unopened = failed - [...reasons.values()].reduce((s, n) => s + n, 0);
      log(`watchers that did not open: ${[...reasons].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${n} x ${k}`).concat(unopened > 0 ? [`${unopened} not tried before the setup deadline`] : []).join("; ")}`);
    }
    if (opened === 0) throw new Error("no watcher connected");
    await sleep(1000); // let connection setup settle before measuring

    // Changes, spaced --interval-ms apart: on a fixed schedule (not waiting for delivery), or with
    // --isolated each one after the previous one reached every watcher.
    const sent: SentChange[] = [];
    const metricsBefore = o.reportStatus ? await target.metricsText?.() : undefined;
    const phaseStart = cpuMark();
    const t0 = now();
    reporting = workers.filter((_, k) => readies[k]!.opened > 0);
    let isolatedTimeouts = 0;
    for (let i = 0; i < o.changes; i++) {
      const due = o.isolated ? now() + (i === 0 ? 0 : o.intervalMs) : t0 + i * o.intervalMs;
      if (due > now()) await sleep(due - now());
      const tSend = now();
      const r = await target.change(i);
      const s: SentChange = { i, tSend, tAck: now(), ...r };
      sent.push(s);
      if (o.isolated && !(await everyWatcherHas(s, sent[i - 1]?.rev ?? 0))) isolatedTimeouts++;
    }
    const changesEnd = now();

    // Wait until the last change reached every open watcher (or --settle-timeout-s).
    const settleUntil = now() + o.settleTimeoutS * 1000;
    let arrivals: Arrival[] = [];
    let reports: Extract<FromWorker, { ev: "report" }>[] = [];
    const findRev = (s: SentChange) => s.rev ?? arrivals.find((a) => a.type === s.type && a.key === s.key && a.rev > (sent[s.i - 1]?.rev ?? 0))?.rev;
    for (;;) {
      await sleep(Math.max(250, Math.min(2000, o.watchers / 5)));
      reports = await Promise.all(workers.map((w) => { w.send({ cmd: "report" } satisfies ToWorker); return next(w, "report", 120_000); })) as typeof reports;
      const merged = new Map<number, Arrival>();
      for (const rep of reports) {
        for (const a of rep.arrivals) {
          const m = merged.get(a.rev);
          if (m) {
            m.times.push(...a.times);
            a.byServer.forEach((n, i) => (m.byServer[i] = (m.byServer[i] ?? 0) + n));
          } else merged.set(a.rev, { ...a, times: [...a.times], byServer: [...a.byServer] });
        }
      }
      arrivals = [...merged.values()];
      for (const s of sent) s.rev ??= findRev(s);
      const done = sent.every((s) => s.rev !== undefined && (merged.get(s.rev)?.times.length ?? 0) >= opened);
      if (done || now() > settleUntil) break;
    }
    const phaseEnd = cpuMark();
    const metricsAfter = o.reportStatus ? await target.metricsText?.() : undefined;
    sample();
    clearInterval(sampler);
    const metricsRss = await target.metricsRss();
    const serverRssEnd = rssBytes(target.pid);

    const lat = latencies(sent, arrivals, opened, target.addrs.length);
    const wallS = (phaseEnd.t - phaseStart.t) / 1000;
    let perServer: ServerFigures[] | undefined;
    if (o.perServer) {
      perServer = target.procs.map((p, k) => {
        const cpuS = phaseEnd.procs[k]! - phaseStart.procs[k]!;
        const watched = p.watchIndex !== undefined;
        // etcd behind the lease servers sends each change once to each lease server's watch.
        const deliveredEvents = watched ? lat.deliveredByServer[p.watchIndex!] ?? 0 : sent.filter((s) => s.rev !== undefined).length * target.addrs.length;
        return {
          name: p.name,
          pid: p.pid,
          watchers: watched ? openedByServer[p.watchIndex!] ?? 0 : 0,
          deliveredEvents,
          cpuS: Math.round(cpuS * 100) / 100,
          cpuPerEventUs: deliveredEvents > 0 ? r1((cpuS * 1e6) / deliveredEvents) : null,
          rssAfterConnectMiB: r1(procRssAfterConnect[k]! / MiB),
          rssPeakMiB: r1((procPeak.get(p.pid) ?? 0) / MiB),
        };
      });
    }
    const res = buildResult(o, {
      opened, connections: openConnections, failed, setupMs, lat,
      reconnects: reports.reduce((s, r) => s + r.reconnects, 0),
      streamErrors: reports.reduce((s, r) => s + r.streamErrors, 0),
      eventMessages: reports.reduce((s, r) => s + r.eventMessages, 0),
      statusReports: o.reportStatus ? reports.reduce((s, r) => s + r.statusReports, 0) : undefined,
      statusErrors: o.reportStatus ? reports.reduce((s, r) => s + r.statusErrors, 0) : undefined,
      convergence: o.reportStatus ? histogramQuantiles(metricsBefore, metricsAfter, "weft_lease_server_convergence_seconds") : undefined,
      isolatedTimeouts,
      rssAfterConnect, serverPeak, serverRssEnd, metricsRss,
      serverCpuSetupS: setupEnd.server - setupStart.server,
      wallS,
      serverCpuS: phaseEnd.server - phaseStart.server,
      watcherCpuS: phaseEnd.workers - phaseStart.workers,
      selfCpuS: (phaseEnd.self.user + phaseEnd.self.system - phaseStart.self.user - phaseStart.self.system) / 1e6,
      busyBeforePct,
      machineBusyPct: Math.round(((phaseEnd.sys.busy - phaseStart.sys.busy) / Math.max(1, phaseEnd.sys.total - phaseStart.sys.total)) * 100),
      watcherRssPeak: [...workerPeak.values()].reduce((s, v) => s + v, 0),
      sendSpanS: (changesEnd - t0) / 1000,
      perServer,
    });
    process.stdout.write(formatResult(o, res) + "\n" + JSON.stringify(res) + "\n");
    for (const w of workers) w.send({ cmd: "exit" } satisfies ToWorker);
    await Promise.all(workers.map((w) => stopChild(w, 5000)));
  } finally {
    clearInterval(sampler);
    for (const w of workers) if (w.connected) w.disconnect();
    await target.stop().catch(() => undefined);
    killAll();
  }
}
