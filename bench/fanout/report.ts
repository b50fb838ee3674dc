// Numbers out of one run: per-change latencies from the arrivals, the result
// object (the final JSON line) and the human-readable lines before it.
import { cpus, release } from "node:os";
import type { Opts } from "./options.js";
import type { Arrival } from "./protocol.js";
import { MiB } from "./proc.js";

export function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}
export const r1 = (n: number) => Math.round(n * 10) / 10;

export interface SentChange { i: number; tSend: number; tAck: number; rev?: number; type: string; key: string }

export interface Latencies {
  /** Per change: until the last watcher got it, until the first; the change RPC; every (watcher, change) delivery. Sorted. */
  lastMs: number[];
  firstMs: number[];
  ackMs: number[];
  delivery: number[];
  incomplete: number;
  missing: number;
  /** Deliveries of the measured changes, by the server the watcher was connected to. */
  deliveredByServer: number[];
}

/** Per change: time from sending the request until the last (and the first) watcher got it. */
export function latencies(sent: SentChange[], arrivals: Arrival[], opened: number, servers: number): Latencies {
  const byRev = new Map(arrivals.map((a) => [a.rev, a]));
  const lastMs: number[] = [];
  const firstMs: number[] = [];
  const ackMs: number[] = [];
  const delivery: number[] = [];
  const deliveredByServer = new Array<number>(servers).fill(0);
  let incomplete = 0;
  let missing = 0;
  for (const s of sent) {
    ackMs.push(s.tAck - s.tSend);
    const a = s.rev !== undefined ? byRev.get(s.rev) : undefined;
    if (a) a.byServer.forEach((n, i) => (deliveredByServer[i] = (deliveredByServer[i] ?? 0) + n));
    if (!a || a.times.length < opened) {
      incomplete++;
      missing += opened - (a?.times.length ?? 0);
      continue;
    }
    let first = Infinity;
    let last = 0;
    for (const t of a.times) {
      first = Math.min(first, t);
      last = Math.max(last, t);
      delivery.push(t - s.tSend);
    }
    lastMs.push(last - s.tSend);
    firstMs.push(first - s.tSend);
  }
  const sortN = (a: number[]) => a.sort((x, y) => x - y);
  sortN(lastMs); sortN(firstMs); sortN(ackMs); sortN(delivery);
  return { lastMs, firstMs, ackMs, delivery, incomplete, missing, deliveredByServer };
}

/** One server process's share of the run (--per-server). */
export interface ServerFigures {
  name: string;
  pid: number;
  watchers: number;
  /** Events it delivered in the change phase: to its watchers (lease server, etcd alone), or to the lease servers' watches (etcd behind weft). */
  deliveredEvents: number;
  cpuS: number;
  cpuPerEventUs: number | null;
  rssAfterConnectMiB: number;
  rssPeakMiB: number;
}

/** p50/p99 of a Prometheus histogram over a run: the bucket counts of `after` less `before`, interpolated inside a bucket as Prometheus does. */
export function histogramQuantiles(before: string | undefined, after: string | undefined, name: string): { count: number; p50Ms: number | null; p99Ms: number | null } | undefined {
  if (after === undefined) return undefined;
  const buckets = (text: string | undefined) => {
    const m = new Map<number, number>();
    const re = new RegExp(`^${name}_bucket\\{(?:[^}]*,)?le="([^"]+)"[^}]*\\}\\s+(\\S+)`, "gm");
    for (const x of (text ?? "").matchAll(re)) m.set(x[1] === "+Inf" ? Infinity : Number(x[1]), (m.get(x[1] === "+Inf" ? Infinity : Number(x[1])) ?? 0) + Number(x[2]));
    return m;
  };
  const a = buckets(after);
  const b = buckets(before);
  const rows = [...a].map(([le, n]) => [le, n - (b.get(le) ?? 0)] as const).sort((x, y) => x[0] - y[0]);
  const count = rows.at(-1)?.[1] ?? 0;
  const q = (p: number): number | null => {
    if (count === 0) return null;
    const rank = p * count;
    let prevLe = 0;
    let prevN = 0;
    for (const [le, n] of rows) {
      if (n >= rank) {
        if (le === Infinity) return r1(prevLe * 1000);
        return r1((prevLe + ((le - prevLe) * (rank - prevN)) / Math.max(1, n - prevN)) * 1000);
      }
      prevLe = le;
      prevN = n;
    }
    return null;
  };
  return { count, p50Ms: q(0.5), p99Ms: q(0.99) };
}

export interface RunFacts {
  opened: number;
  /** HTTP/2 connections the open watchers held. */
  connections: number;
  failed: number;
  setupMs: number;
  lat: Latencies;
  reconnects: number;
  streamErrors: number;
  /** Messages the watchers received after their snapshot that carried new events. */
  eventMessages: number;
  /** --report-status: status messages the watchers sent, and status streams that ended with an error. */
  statusReports?: number;
  statusErrors?: number;
  /** --report-status: the server's weft_lease_server_convergence_seconds over the change phase. */
  convergence?: { count: number; p50Ms: number | null; p99Ms: number | null };
  /** --isolated: changes that did not reach every watcher within --settle-timeout-s before the next was sent. */
  isolatedTimeouts: number;
  rssAfterConnect: number;
  serverPeak: number;
  serverRssEnd: number;
  metricsRss: number | undefined;
  serverCpuSetupS: number;
  wallS: number;
  serverCpuS: number;
  watcherCpuS: number;
  selfCpuS: number;
  busyBeforePct: number;
  machineBusyPct: number;
  watcherRssPeak: number;
  sendSpanS: number;
  perServer?: ServerFigures[];
}

export function buildResult(o: Opts, f: RunFacts) {
  const { lat } = f;
  const res = {
    bench: "fanout",
    target: o.target,
    watchers: o.watchers,
    opened: f.opened,
    // streams (opened) over connections: --streams-per-connection watchers share one HTTP/2 connection
    connections: f.connections,
    streamsPerConnection: o.streamsPerConnection,
    failedToOpen: f.failed,
    clientProcs: o.clientProcs,
    changes: o.changes,
    intervalMs: o.intervalMs,
    // --isolated: each change sent once the previous one reached every watcher (then --interval-ms)
    isolated: o.isolated,
    isolatedTimeouts: f.isolatedTimeouts,
    reportStatus: o.reportStatus,
    statusReports: f.statusReports ?? null,
    statusErrors: f.statusErrors ?? null,
    // the server's own convergence histogram (commit -> every agent reported it), bucket-interpolated
    convergenceCount: f.convergence?.count ?? null,
    convergenceP50Ms: f.convergence?.p50Ms ?? null,
    convergenceP99Ms: f.convergence?.p99Ms ?? null,
    snapshotLeases: o.leases,
    // time from sending the change until the LAST watcher received it
    p50Ms: r1(pct(lat.lastMs, 50)),
    p99Ms: r1(pct(lat.lastMs, 99)),
    maxMs: r1(lat.lastMs[lat.lastMs.length - 1] ?? NaN),
    // until the FIRST watcher received it
    firstP50Ms: r1(pct(lat.firstMs, 50)),
    // every (watcher, change) delivery
    deliveryP50Ms: r1(pct(lat.delivery, 50)),
    deliveryP99Ms: r1(pct(lat.delivery, 99)),
    ackP50Ms: r1(pct(lat.ackMs, 50)),
    incompleteChanges: lat.incomplete,
    missingDeliveries: lat.missing,
    reconnects: f.reconnects,
    streamErrors: f.streamErrors,
    setupS: r1(f.setupMs / 1000),
    serverRssAfterConnectMiB: r1(f.rssAfterConnect / MiB),
    serverRssPeakMiB: r1(f.serverPeak / MiB),
    serverRssEndMiB: r1(f.serverRssEnd / MiB),
    serverRssMetricsMiB: f.metricsRss === undefined ? null : r1(f.metricsRss / MiB),
    serverCpuSetupS: r1(f.serverCpuSetupS),
    // CPU seconds during the change phase (send + settle), and as % of one core
    changePhaseS: r1(f.wallS),
    serverCpuS: r1(f.serverCpuS),
    serverCpuPct: Math.round((f.serverCpuS / f.wallS) * 100),
    watcherCpuS: r1(f.watcherCpuS),
    watcherCpuPct: Math.round((f.watcherCpuS / f.wallS) * 100),
    coordinatorCpuS: r1(f.selfCpuS),
    // whole machine, all cores: 100% = every core busy
    machineBusyBeforePct: f.busyBeforePct,
    machineBusyPct: f.machineBusyPct,
    watcherRssPeakMiB: r1(f.watcherRssPeak / MiB),
    sendSpanS: r1(f.sendSpanS),
    node: process.version,
    cpus: cpus().length,
    kernel: release(),
  };
  if (!f.perServer) return res;
  // --per-server: which servers, and each one's CPU per delivered event (server* above: the first server).
  const lease = f.perServer.filter((s) => s.name !== "etcd");
  const watched = f.perServer.filter((s) => s.watchers > 0);
  const deliveries = watched.reduce((s, x) => s + x.deliveredEvents, 0);
  const perEvent = (cpuS: number) => (deliveries > 0 ? r1((cpuS * 1e6) / deliveries) : null);
  return {
    ...res,
    store: o.target === "weft" ? o.store : null,
    servers: o.target === "weft" ? o.servers : 0,
    deliveredEvents: deliveries,
    // events per message a watcher received: above 1 when the server put several changes in one message
    eventsPerMessage: f.eventMessages > 0 ? Math.round((deliveries / f.eventMessages) * 100) / 100 : null,
    // CPU of the servers the watchers talk to, per (watcher, change) delivery
    serverCpuPerEventUs: perEvent(watched.reduce((s, x) => s + x.cpuS, 0)),
    // the same with etcd's CPU added when etcd sits behind the lease servers
    allServersCpuPerEventUs: perEvent(f.perServer.reduce((s, x) => s + x.cpuS, 0)),
    leaseServerRssPeakMiB: lease.length ? Math.max(...lease.map((s) => s.rssPeakMiB)) : null,
    etcdRssPeakMiB: f.perServer.find((s) => s.name === "etcd")?.rssPeakMiB ?? null,
    perServer: f.perServer,
  };
}

export type Result = ReturnType<typeof buildResult>;

export function formatResult(o: Opts, res: Result): string {
  const pad = (s: string) => s.padEnd(34);
  const out = [
    `fan-out: ${o.target}, ${res.opened}/${o.watchers} watchers (${o.streamsPerConnection > 1 ? `streams on ${res.connections} connections, ${o.streamsPerConnection} per connection` : "own connection each"}) in ${o.clientProcs} process(es), ${o.changes} changes ${o.isolated ? `isolated (each after the previous reached every watcher, + ${o.intervalMs} ms)` : `every ${o.intervalMs} ms`}, snapshot ${o.leases} leases${o.reportStatus ? ", every watcher reporting its status" : ""}`,
    `${pad("until last watcher saw the change")}p50 ${res.p50Ms} ms   p99 ${res.p99Ms} ms   max ${res.maxMs} ms`,
    `${pad("until first watcher saw it")}p50 ${res.firstP50Ms} ms`,
    `${pad("all deliveries (watcher x change)")}p50 ${res.deliveryP50Ms} ms   p99 ${res.deliveryP99Ms} ms`,
    `${pad("change RPC round trip")}p50 ${res.ackP50Ms} ms`,
    `${pad("incomplete changes / reconnects")}${res.incompleteChanges} (${res.missingDeliveries} deliveries missing) / ${res.reconnects}`,
    `${pad("setup (connect + snapshot)")}${res.setupS} s, server CPU ${res.serverCpuSetupS} s`,
    `${pad("server RSS")}after connect ${res.serverRssAfterConnectMiB} MiB, peak ${res.serverRssPeakMiB} MiB, end ${res.serverRssEndMiB} MiB (metrics: ${res.serverRssMetricsMiB} MiB)`,
    `${pad("CPU in change phase")}${res.changePhaseS} s wall: server ${res.serverCpuS} s (${res.serverCpuPct}%), watchers ${res.watcherCpuS} s (${res.watcherCpuPct}%), coordinator ${res.coordinatorCpuS} s; machine ${res.machineBusyPct}% busy (of ${cpus().length} cores)`,
    `${pad("watcher process RSS (peak, sum)")}${res.watcherRssPeakMiB} MiB`,
  ];
  if (o.isolated && res.isolatedTimeouts > 0) out.push(`${pad("isolated: changes not complete")}${res.isolatedTimeouts} did not reach every watcher within ${o.settleTimeoutS} s before the next was sent`);
  if (o.reportStatus) {
    out.push(`${pad("status reports (sent / errors)")}${res.statusReports} / ${res.statusErrors}`);
    out.push(`${pad("server convergence histogram")}${res.convergenceCount} revisions: p50 ${res.convergenceP50Ms ?? "-"} ms   p99 ${res.convergenceP99Ms ?? "-"} ms (weft_lease_server_convergence_seconds, bucket-interpolated)`);
  }
  if ("perServer" in res) {
    if (o.target === "weft") out[0] += `; store ${o.store}, ${o.servers} lease server(s)${o.store === "etcd" ? " on one etcd" : ""}`;
    for (const s of res.perServer) {
      const what = s.watchers > 0 ? `${s.watchers} watchers, ${s.deliveredEvents} events delivered` : `${s.deliveredEvents} events to the lease servers' watches`;
      out.push(`${pad(`  ${s.name} (pid ${s.pid})`)}${what}; CPU ${r1(s.cpuS)} s = ${s.cpuPerEventUs ?? "-"} us/event; RSS after connect ${s.rssAfterConnectMiB} MiB, peak ${s.rssPeakMiB} MiB`);
    }
    out.push(`${pad("server CPU per delivered event")}${res.serverCpuPerEventUs ?? "-"} us${res.etcdRssPeakMiB !== null && o.target === "weft" ? ` (with etcd's CPU: ${res.allServersCpuPerEventUs ?? "-"} us)` : ""}; ${res.eventsPerMessage ?? "-"} events per message`);
  }
  return out.join("\n");
}
