// npm run bench:fanout -- [--watchers N] [--changes K] [--interval-ms MS] [--client-procs P] [--target weft|etcd]
//
// Fan-out benchmark of the lease server's WatchLeases streams. It starts the
// real server (bin/weft-lease-server) as its own process on 127.0.0.1 with a
// temporary SQLite file, opens N watchers each on its own gRPC connection
// (its own HTTP/2 socket: grpc.use_local_subchannel_pool) in P watcher
// processes (default 1), waits until every watcher has its snapshot, then
// makes K lease changes (acquire, renew, release in turn) spaced
// --interval-ms apart. For each change it measures the time from sending the
// request until the LAST watcher received the event, and prints
// p50/p99/max, the server's RSS and CPU, the watcher processes' CPU, and a
// final JSON line.
//
// --target etcd runs the same harness against etcd (/usr/bin/etcd, temp data
// dir, 127.0.0.1): each watcher is its own etcd3 client (own connection) that
// reads the prefix and then watches it; changes are puts and deletes.
//
// Everything is bounded: watcher count, change count, setup, settle and total
// time. Every process this bench starts is killed on exit, also on failure.
import { fork, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir, cpus, release } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import {
  LeaseServiceClient, WatchLeasesResponse_Kind, LeaseEvent_Type, type WatchLeasesResponse, type Lease as PbLease,
} from "../gen/weft/v1/lease.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "..", "..");
const now = (): number => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const MiB = 1024 * 1024;

// ---------------------------------------------------------------- options

interface Opts {
  target: "weft" | "etcd";
  watchers: number;
  changes: number;
  intervalMs: number;
  leases: number;
  clientProcs: number;
  connectConcurrency: number;
  setupTimeoutS: number;
  settleTimeoutS: number;
  timeoutS: number;
  verbose: boolean;
  serverNodeArgs: string[];
}

const HELP = `usage: npm run bench:fanout -- [flags]
  --watchers N             watch streams, each on its own connection (default 1000, max 50000)
  --changes K              lease changes to make (default 50, max 10000)
  --interval-ms MS         pause between changes (default 150)
  --leases M               leases created before the watchers connect, i.e. snapshot size (default 100)
  --client-procs P         watcher processes (default 1: all watchers in one Node.js process)
  --connect-concurrency C  watchers connecting at once per process (default 200)
  --setup-timeout-s S      limit for connecting every watcher (default 300)
  --settle-timeout-s S     limit for the last change to reach every watcher (default 60)
  --timeout-s S            hard limit for the whole run (default 900)
  --target weft|etcd       server to measure (default weft; etcd needs /usr/bin/etcd)
  --verbose                pass server logs through to stderr
  --server-node-arg ARG    extra node option for the weft server process (repeatable), e.g. --cpu-prof
`;

function parseOpts(argv: string[]): Opts {
  const o: Opts = {
    target: "weft", watchers: 1000, changes: 50, intervalMs: 150, leases: 100, clientProcs: 1,
    connectConcurrency: 200, setupTimeoutS: 300, settleTimeoutS: 60, timeoutS: 900, verbose: false, serverNodeArgs: [],
  };
  const int = (flag: string, v: string | undefined, min: number, max: number): number => {
    const n = Number(v);
    if (v === undefined || !Number.isInteger(n) || n < min || n > max) usage(`${flag}: ${JSON.stringify(v)} is not an integer from ${min} to ${max}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.includes("=") ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)] : [a, undefined];
    const val = () => inline ?? argv[++i];
    switch (flag) {
      case "--watchers": o.watchers = int(flag, val(), 1, 50_000); break;
      case "--changes": o.changes = int(flag, val(), 1, 10_000); break;
      case "--interval-ms": o.intervalMs = int(flag, val(), 0, 60_000); break;
      case "--leases": o.leases = int(flag, val(), 0, 50_000); break;
      case "--client-procs": o.clientProcs = int(flag, val(), 1, 16); break;
      case "--connect-concurrency": o.connectConcurrency = int(flag, val(), 1, 10_000); break;
      case "--setup-timeout-s": o.setupTimeoutS = int(flag, val(), 1, 3600); break;
      case "--settle-timeout-s": o.settleTimeoutS = int(flag, val(), 1, 3600); break;
      case "--timeout-s": o.timeoutS = int(flag, val(), 10, 7200); break;
      case "--target": {
        const t = val();
        if (t !== "weft" && t !== "etcd") usage(`--target: ${JSON.stringify(t)} is not weft or etcd`);
        o.target = t;
        break;
      }
      case "--verbose": o.verbose = true; break;
      case "--server-node-arg": o.serverNodeArgs.push(String(val())); break;
      case "--help": case "-h": process.stdout.write(HELP); process.exit(0);
      default: usage(`unknown flag ${JSON.stringify(a)}`);
    }
  }
  return o;
}

function usage(msg: string): never {
  process.stderr.write(`bench:fanout: ${msg}\n${HELP}`);
  process.exit(2);
}

// ---------------------------------------------------------------- /proc helpers

function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** utime + stime of a process in seconds (CLK_TCK = 100 on Linux). */
function cpuSeconds(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return 0;
  }
}

/** Busy and total jiffies of the whole machine (all cores), from /proc/stat. */
function systemCpu(): { busy: number; total: number } {
  try {
    const f = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    return { busy: total - f[3]! - (f[4] ?? 0), total };
  } catch {
    return { busy: 0, total: 0 };
  }
}

function fdLimit(): number {
  try {
    const m = /Max open files\s+(\d+|unlimited)/.exec(readFileSync("/proc/self/limits", "utf8"));
    return !m || m[1] === "unlimited" ? Infinity : Number(m[1]);
  } catch {
    return Infinity;
  }
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => res(port));
    });
  });
}

// ---------------------------------------------------------------- watcher process

/** One observed change: its kind and key, and when each watcher received it (epoch ms). */
interface Arrival { rev: number; type: string; key: string; times: number[] }

interface WorkerStart { cmd: "start"; target: "weft" | "etcd"; addr: string; count: number; concurrency: number; setupTimeoutS: number; offset: number }
type ToWorker = WorkerStart | { cmd: "report" } | { cmd: "exit" };
type FromWorker =
  | { ev: "ready"; opened: number; failed: number; setupMs: number }
  | { ev: "report"; arrivals: Arrival[]; reconnects: number; streamErrors: number; rss: number; heapUsed: number }
  | { ev: "fatal"; message: string };

interface WatchCounters { reconnects: number; streamErrors: number }

async function runWorker(): Promise<void> {
  const send = (m: FromWorker) => process.send!(m);
  const arrivals = new Map<number, Arrival>();
  const counters: WatchCounters = { reconnects: 0, streamErrors: 0 };
  const record = (rev: number, type: string, key: string, t: number) => {
    let a = arrivals.get(rev);
    if (!a) arrivals.set(rev, (a = { rev, type, key, times: [] }));
    a.times.push(t);
  };
  const closers: (() => void)[] = [];
  process.on("message", async (m: ToWorker) => {
    try {
      if (m.cmd === "start") {
        const open = m.target === "weft" ? openWeftWatcher : openEtcdWatcher;
        const started = now();
        let next = 0;
        let failed = 0;
        const deadline = started + m.setupTimeoutS * 1000;
        const lane = async () => {
          while (next < m.count && now() < deadline) {
            const i = m.offset + next++;
            // One open may not hang the lane past the setup deadline.
            let timer: NodeJS.Timeout | undefined;
            const opening = open(m.addr, i, record, counters, deadline);
            try {
              closers.push(await Promise.race([opening, new Promise<never>((_, rej) => {
                timer = setTimeout(() => rej(new Error("open timeout")), Math.max(1, Math.min(60_000, deadline - now())));
              })]));
            } catch {
              failed++;
              opening.then((close) => close(), () => undefined); // close it if it opens late
            } finally {
              clearTimeout(timer);
            }
          }
        };
        await Promise.all(Array.from({ length: Math.min(m.concurrency, m.count) }, lane));
        send({ ev: "ready", opened: closers.length, failed: failed + (m.count - next), setupMs: now() - started });
      } else if (m.cmd === "report") {
        const mem = process.memoryUsage();
        send({ ev: "report", arrivals: [...arrivals.values()], ...counters, rss: mem.rss, heapUsed: mem.heapUsed });
      } else if (m.cmd === "exit") {
        for (const c of closers) c();
        setTimeout(() => process.exit(0), 200).unref();
      }
    } catch (err) {
      send({ ev: "fatal", message: String((err as Error)?.stack ?? err) });
    }
  });
  process.on("disconnect", () => process.exit(0));
}

type Recorder = (rev: number, type: string, key: string, t: number) => void;

/** Opens one WatchLeases stream on its own connection; resolves at SNAPSHOT_COMPLETE. */
function openWeftWatcher(addr: string, _i: number, record: Recorder, counters: WatchCounters, deadline: number): Promise<() => void> {
  // A local subchannel pool gives this client its own HTTP/2 connection.
  const client = new LeaseServiceClient(addr, grpc.credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 });
  let lastRev = 0;
  let closed = false;
  let attempts = 0;
  let call: grpc.ClientReadableStream<WatchLeasesResponse> | undefined;
  return new Promise((resolveOpen, rejectOpen) => {
    let ready = false;
    const start = () => {
      call = client.watchLeases({ fromRevision: lastRev, storeId: "" });
      call.on("data", (msg: WatchLeasesResponse) => {
        const t = now();
        switch (msg.kind) {
          case WatchLeasesResponse_Kind.KIND_EVENTS:
            for (const e of msg.events) {
              if (e.revision <= lastRev) continue;
              lastRev = e.revision;
              record(e.revision, LeaseEvent_Type[e.type] ?? String(e.type), e.lease?.subnet ?? "", t);
            }
            break;
          case WatchLeasesResponse_Kind.KIND_SNAPSHOT_COMPLETE:
          case WatchLeasesResponse_Kind.KIND_PROGRESS:
            lastRev = Math.max(lastRev, msg.revision);
            if (!ready) {
              ready = true;
              resolveOpen(close);
            }
            break;
        }
      });
      call.on("error", (err: grpc.ServiceError) => {
        if (closed || err.code === grpc.status.CANCELLED) return;
        counters.streamErrors++;
        // As an agent does: resume from the last revision applied (bounded).
        if (++attempts > 5 || now() > deadline + 600_000) {
          if (!ready) rejectOpen(err);
          return;
        }
        counters.reconnects++;
        setTimeout(() => !closed && start(), 100 * attempts);
      });
    };
    const close = () => {
      closed = true;
      call?.cancel();
      client.close();
    };
    start();
    setTimeout(() => {
      if (!ready) {
        close();
        rejectOpen(new Error("snapshot timeout"));
      }
    }, Math.max(1, deadline - now())).unref();
  });
}

/** etcd: its own Etcd3 client, a range read of the prefix, then a watch from the next revision. */
async function openEtcdWatcher(addr: string, _i: number, record: Recorder, counters: WatchCounters, _deadline: number): Promise<() => void> {
  const { Etcd3 } = await import("etcd3");
  const client = new Etcd3({ hosts: addr, dialTimeout: 30_000, grpcOptions: { "grpc.use_local_subchannel_pool": 1 } });
  const res = await client.getAll().prefix("/weft/leases/").exec();
  const from = Number(res.header.revision) + 1;
  const watcher = await client.watch().prefix("/weft/leases/").startRevision(String(from)).create();
  let lastRev = from - 1;
  watcher.on("data", (r) => {
    const t = now();
    for (const e of r.events) {
      const rev = Number(e.kv.mod_revision);
      if (rev <= lastRev) continue;
      lastRev = rev;
      record(rev, e.type === "Delete" || (e.type as unknown) === "DELETE" ? "DELETE" : "PUT", e.kv.key.toString(), t);
    }
  });
  watcher.on("error", () => counters.streamErrors++);
  watcher.on("disconnected", () => counters.reconnects++);
  return () => {
    void watcher.cancel().catch(() => undefined);
    client.close();
  };
}

// ---------------------------------------------------------------- targets (server side)

interface Target {
  pid: number;
  addr: string;
  /** Server RSS as the server reports it in its metrics, when it has them. */
  metricsRss(): Promise<number | undefined>;
  /** Makes change i; returns its revision if the reply carries it, and a key to find it. */
  change(i: number): Promise<{ rev?: number; type: string; key: string }>;
  seed(n: number): Promise<void>;
  stop(): Promise<void>;
}

const children = new Set<ChildProcess>();
const tempDirs = new Set<string>();

function killAll(): void {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  }
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  tempDirs.clear();
}

async function stopChild(c: ChildProcess, graceMs = 3000): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const exited = new Promise<void>((r) => c.once("exit", () => r()));
  c.kill("SIGTERM");
  const t = setTimeout(() => c.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(t);
  children.delete(c);
}

/** Keeps the child's output drained; returns the last lines for error messages. */
function drainLines(c: ChildProcess, onLine: (line: string) => void, verbose: boolean): string[] {
  const tail: string[] = [];
  for (const s of [c.stdout, c.stderr]) {
    let buf = "";
    s?.setEncoding("utf8");
    s?.on("data", (d: string) => {
      if (verbose) process.stderr.write(d);
      buf += d;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        tail.push(line);
        if (tail.length > 30) tail.shift();
        onLine(line);
      }
    });
  }
  return tail;
}

function unary<Req, Res>(fn: (req: Req, md: grpc.Metadata, opts: Partial<grpc.CallOptions>, cb: (e: grpc.ServiceError | null, r: Res) => void) => unknown, req: Req): Promise<Res> {
  return new Promise((res, rej) => fn(req, new grpc.Metadata(), { deadline: Date.now() + 30_000 }, (e, r) => (e ? rej(e) : res(r))));
}

const vtepMac = (i: number) => `02:00:${[(i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255].map((b) => b.toString(16).padStart(2, "0")).join(":")}`;

async function startWeft(o: Opts): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), "weft-bench-fanout-"));
  tempDirs.add(dir);
  const netConf = join(dir, "net-conf.json");
  // /8 with /24 subnets: 65,536 subnets, enough for any --leases.
  writeFileSync(netConf, JSON.stringify({ Network: "10.0.0.0/8", SubnetLen: 24, Backend: { Type: "vxlan" } }));
  const bin = join(ROOT, "bin", "weft-lease-server");
  const child = spawn(process.execPath, [...o.serverNodeArgs, bin, "--insecure", "--store", `sqlite:${join(dir, "leases.db")}`, "--network-config", netConf,
    "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--lease-ttl", "24h"],
  { stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  // The server logs its ports in a JSON "lease server listening" line.
  const ports = await new Promise<{ grpc: string; http: string }>((res, rej) => {
    const t = setTimeout(() => rej(new Error(`lease server did not log "lease server listening" within 20 s:\n${tail.join("\n")}`)), 20_000);
    const tail = drainLines(child, (line) => {
      if (!line.includes("lease server listening")) return;
      try {
        const j = JSON.parse(line) as { grpc: string; http: string };
        clearTimeout(t);
        res(j);
      } catch { /* not JSON */ }
    }, o.verbose);
    child.once("exit", (code, sig) => {
      clearTimeout(t);
      rej(new Error(`lease server exited (${code ?? sig}) before listening:\n${tail.join("\n")}`));
    });
  });
  const addr = ports.grpc;
  const ctl = new LeaseServiceClient(addr, grpc.credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 });
  const held = new Map<number, PbLease>();
  const acquire = (name: string, i: number) =>
    unary<Parameters<typeof ctl.acquireLease>[0], PbLease>(ctl.acquireLease.bind(ctl) as never, {
      nodeName: name, publicIp: `192.0.${(i >> 8) & 255}.${i & 255}`, vxlan: { vni: 1, vtepMac: vtepMac(i) }, wireguard: undefined, hostGw: undefined, previousSubnet: "",
    });
  return {
    pid: child.pid!,
    addr,
    async metricsRss() {
      try {
        const text = await (await fetch(`http://${ports.http}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
        const m = /^weft_lease_server_process_resident_memory_bytes(?:\{[^}]*\})?\s+([0-9.e+]+)/m.exec(text);
        return m ? Number(m[1]) : undefined;
      } catch {
        return undefined;
      }
    },
    async seed(n) {
      for (let i = 0; i < n; i++) await acquire(`seed-${i}`, 100_000 + i);
    },
    async change(i) {
      const k = Math.floor(i / 3);
      const name = `bench-change-${k}`;
      switch (i % 3) {
        case 0: {
          const l = await acquire(name, k);
          held.set(k, l);
          return { rev: l.revision, type: "TYPE_ADDED", key: l.subnet };
        }
        case 1: {
          const l = await unary<{ nodeName: string; subnet: string }, PbLease>(ctl.renewLease.bind(ctl) as never, { nodeName: name, subnet: held.get(k)!.subnet });
          return { rev: l.revision, type: "TYPE_CHANGED", key: l.subnet };
        }
        default: {
          const subnet = held.get(k)!.subnet;
          held.delete(k);
          await unary(ctl.releaseLease.bind(ctl) as never, { nodeName: name, subnet });
          return { type: "TYPE_REMOVED", key: subnet };
        }
      }
    },
    async stop() {
      ctl.close();
      await stopChild(child);
    },
  };
}

async function startEtcd(o: Opts): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), "weft-bench-etcd-"));
  tempDirs.add(dir);
  const [cport, pport] = [await freePort(), await freePort()];
  const client = `http://127.0.0.1:${cport}`;
  const peer = `http://127.0.0.1:${pport}`;
  const child = spawn("/usr/bin/etcd", ["--name", "bench", "--data-dir", join(dir, "data"),
    "--listen-client-urls", client, "--advertise-client-urls", client,
    "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", `bench=${peer}`,
    "--log-level", "warn", "--logger", "zap"], { stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  const tail = drainLines(child, () => undefined, o.verbose);
  const { Etcd3 } = await import("etcd3");
  const ctl = new Etcd3({ hosts: client, grpcOptions: { "grpc.use_local_subchannel_pool": 1 } });
  const until = Date.now() + 20_000;
  for (;;) {
    try {
      await ctl.get("/weft/ping").string();
      break;
    } catch (err) {
      if (child.exitCode !== null || Date.now() > until) throw new Error(`etcd did not come up: ${(err as Error).message}\n${tail.join("\n")}`);
      await sleep(200);
    }
  }
  const value = (name: string, i: number) => JSON.stringify({
    nodeName: name, publicIP: `192.0.${(i >> 8) & 255}.${i & 255}`, backendType: "vxlan", vxlan: { vni: 1, vtepMac: vtepMac(i) },
    expiresAt: new Date(Date.now() + 86_400_000).toISOString(),
  });
  const keyOf = (k: number) => `/weft/leases/10.${(k >> 8) & 255}.${k & 255}.0-24`;
  return {
    pid: child.pid!,
    addr: client,
    async metricsRss() {
      try {
        const text = await (await fetch(`${client}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
        const m = /^process_resident_memory_bytes\s+([0-9.e+]+)/m.exec(text);
        return m ? Number(m[1]) : undefined;
      } catch {
        return undefined;
      }
    },
    async seed(n) {
      for (let i = 0; i < n; i++) await ctl.put(keyOf(40_000 + i)).value(value(`seed-${i}`, 100_000 + i)).exec();
    },
    async change(i) {
      const k = Math.floor(i / 3);
      const key = keyOf(k);
      if (i % 3 === 2) {
        const r = await ctl.delete().key(key).exec();
        return { rev: Number(r.header.revision), type: "DELETE", key };
      }
      const r = await ctl.put(key).value(value(`bench-change-${k}`, k)).exec();
      return { rev: Number(r.header.revision), type: "PUT", key };
    },
    async stop() {
      ctl.close();
      await stopChild(child);
    },
  };
}

// ---------------------------------------------------------------- coordinator

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}
const r1 = (n: number) => Math.round(n * 10) / 10;

async function coordinator(o: Opts): Promise<void> {
  const hardDeadline = setTimeout(() => {
    process.stderr.write(`bench:fanout: --timeout-s ${o.timeoutS} reached; stopping\n`);
    killAll();
    process.exit(3);
  }, o.timeoutS * 1000);
  hardDeadline.unref();

  // Each watcher is one socket in a watcher process and one in the server.
  const perProc = Math.ceil(o.watchers / o.clientProcs);
  const limit = fdLimit();
  if (perProc + 200 > limit || o.watchers + 200 > limit) {
    usage(`--watchers ${o.watchers} needs about ${Math.max(perProc, o.watchers) + 200} open files per process (the server holds one socket per watcher), but ulimit -n is ${limit}. `
      + `Raise it (ulimit -n 65536, or prlimit --nofile=65536 -p $$) and run again, or use fewer watchers`);
  }

  const log = (s: string) => process.stderr.write(`[fanout] ${s}\n`);
  // Other work on the machine skews every number here: measure it first.
  const idleA = systemCpu();
  await sleep(1000);
  const idleB = systemCpu();
  const busyBeforePct = Math.round(((idleB.busy - idleA.busy) / Math.max(1, idleB.total - idleA.total)) * 100);
  if (busyBeforePct > 10) log(`WARNING: the machine is already ${busyBeforePct}% busy before the bench starts; the results will be worse than on an idle machine`);
  log(`target=${o.target} watchers=${o.watchers} clientProcs=${o.clientProcs} changes=${o.changes} intervalMs=${o.intervalMs} leases=${o.leases} (ulimit -n ${limit})`);
  const target = o.target === "weft" ? await startWeft(o) : await startEtcd(o);
  log(`server pid ${target.pid} at ${target.addr}`);
  await target.seed(o.leases);

  // RSS sampler for the server and the watcher processes.
  let serverPeak = 0;
  const workers: ChildProcess[] = [];
  const workerPeak = new Map<number, number>();
  const sample = () => {
    serverPeak = Math.max(serverPeak, rssBytes(target.pid));
    for (const w of workers) workerPeak.set(w.pid!, Math.max(workerPeak.get(w.pid!) ?? 0, rssBytes(w.pid!)));
  };
  const sampler = setInterval(sample, 250);

  const self = fileURLToPath(import.meta.url);
  const inbox = new Map<ChildProcess, FromWorker[]>();
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

  const cpuMark = () => ({ server: cpuSeconds(target.pid), workers: workers.reduce((s, w) => s + cpuSeconds(w.pid!), 0), self: process.cpuUsage(), sys: systemCpu(), t: now() });
  try {
    let offset = 0;
    for (let p = 0; p < o.clientProcs; p++) {
      const count = Math.min(perProc, o.watchers - offset);
      if (count <= 0) break;
      const w = fork(self, ["--worker"], { stdio: ["ignore", "inherit", "inherit", "ipc"], execArgv: ["--max-old-space-size=8192"], serialization: "advanced" });
      children.add(w);
      workers.push(w);
      inbox.set(w, []);
      w.on("message", (m: FromWorker) => (waiters.get(w) ?? ((x: FromWorker) => inbox.get(w)!.push(x)))(m));
      w.on("exit", (code) => code && log(`watcher process ${w.pid} exited with ${code}`));
      w.send({ cmd: "start", target: o.target, addr: target.addr, count, concurrency: o.connectConcurrency, setupTimeoutS: o.setupTimeoutS, offset } satisfies ToWorker);
      offset += count;
    }
    const setupStart = cpuMark();
    const readies = await Promise.all(workers.map((w) => next(w, "ready", (o.setupTimeoutS + 30) * 1000))) as Extract<FromWorker, { ev: "ready" }>[];
    const opened = readies.reduce((s, r) => s + r.opened, 0);
    const failed = readies.reduce((s, r) => s + r.failed, 0);
    const setupMs = Math.max(...readies.map((r) => r.setupMs));
    sample();
    const rssAfterConnect = rssBytes(target.pid);
    const setupEnd = cpuMark();
    log(`${opened} watchers have their snapshot (${failed} failed) in ${r1(setupMs / 1000)} s; server RSS ${r1(rssAfterConnect / MiB)} MiB`);
    if (opened === 0) throw new Error("no watcher connected");
    await sleep(1000); // let connection setup settle before measuring

    // Changes, spaced --interval-ms apart (sent on a fixed schedule, not waiting for delivery).
    const sent: { i: number; tSend: number; tAck: number; rev?: number; type: string; key: string }[] = [];
    const phaseStart = cpuMark();
    const t0 = now();
    for (let i = 0; i < o.changes; i++) {
      const due = t0 + i * o.intervalMs;
      if (due > now()) await sleep(due - now());
      const tSend = now();
      const r = await target.change(i);
      sent.push({ i, tSend, tAck: now(), ...r });
    }
    const changesEnd = now();

    // Wait until the last change reached every open watcher (or --settle-timeout-s).
    const settleUntil = now() + o.settleTimeoutS * 1000;
    let arrivals: Arrival[] = [];
    let reports: Extract<FromWorker, { ev: "report" }>[] = [];
    const findRev = (s: (typeof sent)[number]) => s.rev ?? arrivals.find((a) => a.type === s.type && a.key === s.key && a.rev > (sent[s.i - 1]?.rev ?? 0))?.rev;
    for (;;) {
      await sleep(Math.max(250, Math.min(2000, o.watchers / 5)));
      reports = await Promise.all(workers.map((w) => { w.send({ cmd: "report" } satisfies ToWorker); return next(w, "report", 120_000); })) as typeof reports;
      const merged = new Map<number, Arrival>();
      for (const rep of reports) {
        for (const a of rep.arrivals) {
          const m = merged.get(a.rev);
          if (m) m.times.push(...a.times);
          else merged.set(a.rev, { ...a, times: [...a.times] });
        }
      }
      arrivals = [...merged.values()];
      for (const s of sent) s.rev ??= findRev(s);
      const done = sent.every((s) => s.rev !== undefined && (merged.get(s.rev)?.times.length ?? 0) >= opened);
      if (done || now() > settleUntil) break;
    }
    const phaseEnd = cpuMark();
    sample();
    clearInterval(sampler);
    const metricsRss = await target.metricsRss();
    const serverRssEnd = rssBytes(target.pid);

    // Per change: time from sending the request until the last (and the first) watcher got it.
    const byRev = new Map(arrivals.map((a) => [a.rev, a]));
    const lastMs: number[] = [];
    const firstMs: number[] = [];
    const ackMs: number[] = [];
    const delivery: number[] = [];
    let incomplete = 0;
    let missing = 0;
    for (const s of sent) {
      ackMs.push(s.tAck - s.tSend);
      const a = s.rev !== undefined ? byRev.get(s.rev) : undefined;
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
    const wall = (phaseEnd.t - phaseStart.t) / 1000;
    const selfCpu = (phaseEnd.self.user + phaseEnd.self.system - phaseStart.self.user - phaseStart.self.system) / 1e6;
    const res = {
      bench: "fanout",
      target: o.target,
      watchers: o.watchers,
      opened,
      failedToOpen: failed,
      clientProcs: o.clientProcs,
      changes: o.changes,
      intervalMs: o.intervalMs,
      snapshotLeases: o.leases,
      // time from sending the change until the LAST watcher received it
      p50Ms: r1(pct(lastMs, 50)),
      p99Ms: r1(pct(lastMs, 99)),
      maxMs: r1(lastMs[lastMs.length - 1] ?? NaN),
      // until the FIRST watcher received it
      firstP50Ms: r1(pct(firstMs, 50)),
      // every (watcher, change) delivery
      deliveryP50Ms: r1(pct(delivery, 50)),
      deliveryP99Ms: r1(pct(delivery, 99)),
      ackP50Ms: r1(pct(ackMs, 50)),
      incompleteChanges: incomplete,
      missingDeliveries: missing,
      reconnects: reports.reduce((s, r) => s + r.reconnects, 0),
      streamErrors: reports.reduce((s, r) => s + r.streamErrors, 0),
      setupS: r1(setupMs / 1000),
      serverRssAfterConnectMiB: r1(rssAfterConnect / MiB),
      serverRssPeakMiB: r1(serverPeak / MiB),
      serverRssEndMiB: r1(serverRssEnd / MiB),
      serverRssMetricsMiB: metricsRss === undefined ? null : r1(metricsRss / MiB),
      serverCpuSetupS: r1(setupEnd.server - setupStart.server),
      // CPU seconds during the change phase (send + settle), and as % of one core
      changePhaseS: r1(wall),
      serverCpuS: r1(phaseEnd.server - phaseStart.server),
      serverCpuPct: Math.round(((phaseEnd.server - phaseStart.server) / wall) * 100),
      watcherCpuS: r1(phaseEnd.workers - phaseStart.workers),
      watcherCpuPct: Math.round(((phaseEnd.workers - phaseStart.workers) / wall) * 100),
      coordinatorCpuS: r1(selfCpu),
      // whole machine, all cores: 100% = every core busy
      machineBusyBeforePct: busyBeforePct,
      machineBusyPct: Math.round(((phaseEnd.sys.busy - phaseStart.sys.busy) / Math.max(1, phaseEnd.sys.total - phaseStart.sys.total)) * 100),
      watcherRssPeakMiB: r1([...workerPeak.values()].reduce((s, v) => s + v, 0) / MiB),
      sendSpanS: r1((changesEnd - t0) / 1000),
      node: process.version,
      cpus: cpus().length,
      kernel: release(),
    };
    const pad = (s: string) => s.padEnd(34);
    const out = [
      `fan-out: ${o.target}, ${opened}/${o.watchers} watchers (own connection each) in ${o.clientProcs} process(es), ${o.changes} changes every ${o.intervalMs} ms, snapshot ${o.leases} leases`,
      `${pad("until last watcher saw the change")}p50 ${res.p50Ms} ms   p99 ${res.p99Ms} ms   max ${res.maxMs} ms`,
      `${pad("until first watcher saw it")}p50 ${res.firstP50Ms} ms`,
      `${pad("all deliveries (watcher x change)")}p50 ${res.deliveryP50Ms} ms   p99 ${res.deliveryP99Ms} ms`,
      `${pad("change RPC round trip")}p50 ${res.ackP50Ms} ms`,
      `${pad("incomplete changes / reconnects")}${incomplete} (${missing} deliveries missing) / ${res.reconnects}`,
      `${pad("setup (connect + snapshot)")}${res.setupS} s, server CPU ${res.serverCpuSetupS} s`,
      `${pad("server RSS")}after connect ${res.serverRssAfterConnectMiB} MiB, peak ${res.serverRssPeakMiB} MiB, end ${res.serverRssEndMiB} MiB (metrics: ${res.serverRssMetricsMiB} MiB)`,
      `${pad("CPU in change phase")}${res.changePhaseS} s wall: server ${res.serverCpuS} s (${res.serverCpuPct}%), watchers ${res.watcherCpuS} s (${res.watcherCpuPct}%), coordinator ${r1(selfCpu)} s; machine ${res.machineBusyPct}% busy (of ${cpus().length} cores)`,
      `${pad("watcher process RSS (peak, sum)")}${res.watcherRssPeakMiB} MiB`,
    ];
    process.stdout.write(out.join("\n") + "\n" + JSON.stringify(res) + "\n");
    for (const w of workers) w.send({ cmd: "exit" } satisfies ToWorker);
    await Promise.all(workers.map((w) => stopChild(w, 5000)));
  } finally {
    clearInterval(sampler);
    for (const w of workers) if (w.connected) w.disconnect();
    await target.stop().catch(() => undefined);
    killAll();
  }
}

// ---------------------------------------------------------------- entry

if (process.argv.includes("--worker")) {
  void runWorker();
} else {
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(sig, () => {
      killAll();
      process.exit(130);
    });
  }
  process.on("exit", killAll);
  coordinator(parseOpts(process.argv.slice(2))).then(() => process.exit(0), (err) => {
    process.stderr.write(`bench:fanout: ${(err as Error)?.stack ?? err}\n`);
    killAll();
    process.exit(1);
  });
}
