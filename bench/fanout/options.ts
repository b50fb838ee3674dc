// Command line of the fan-out bench: flags, their bounds and the help text.
import { MAX_STREAMS_PER_CONNECTION } from "../../lease-server/src/grpc-limits.js";

export type TargetName = "weft" | "etcd";
export type StoreName = "sqlite" | "etcd";

export interface Opts {
  target: TargetName;
  /** --target weft: where the lease servers keep leases. */
  store: StoreName;
  /** --target weft: lease servers (more than 1 needs --store etcd). */
  servers: number;
  watchers: number;
  /** --compare: the watcher counts to run, one after the other. */
  sizes: number[];
  compare: boolean;
  changes: number;
  intervalMs: number;
  /** Each change waits until the previous one reached every watcher, then --interval-ms: changes never queue. */
  isolated: boolean;
  /** --target weft: every watcher also streams its status (ReportStatus) as an agent does. */
  reportStatus: boolean;
  /** --compare: the set-ups to run (ids of compare.ts CONFIGS); empty: all. */
  configs: string[];
  leases: number;
  /** --target weft: watchers of one watcher process that share one gRPC client (one HTTP/2 connection), each on its own stream. */
  streamsPerConnection: number;
  clientProcs: number;
  /** Whether --client-procs was given (--compare picks a count per size otherwise). */
  clientProcsSet: boolean;
  connectConcurrency: number;
  setupTimeoutS: number;
  settleTimeoutS: number;
  timeoutS: number;
  /** Which of the timeouts were given (--compare has its own defaults). */
  given: Set<string>;
  /** Report each server's CPU per delivered event and RSS (always on with --store etcd or --servers > 1). */
  perServer: boolean;
  verbose: boolean;
  serverNodeArgs: string[];
}

export const HELP = `usage: npm run bench:fanout -- [flags]
  --watchers N             watch streams, each on its own connection unless --streams-per-connection
                           (default 1000, max 50000)
  --streams-per-connection N
                           --target weft: N watchers share one gRPC client, i.e. one HTTP/2 connection, each
                           still its own WatchLeases stream that resumes on its own (default 1: one connection
                           per watcher, as agents have; max 100, 64 with --report-status: the server allows
                           128 streams per connection). Measures the server's per-stream cost and memory
                           with watchers/N sockets, e.g. 50,000 streams under a 20,000 open-file limit
  --changes K              lease changes to make (default 50, max 10000)
  --interval-ms MS         pause between changes (default 150)
  --isolated               send each change only once the previous one reached every watcher, then wait
                           --interval-ms: changes never queue behind each other (latency of one change alone)
  --report-status          --target weft: each watcher also opens a ReportStatus stream as an agent does (its
                           own node name, applied_revision = the revision of each event it gets, healthy, and
                           a heartbeat every 10 s); the run also reads weft_lease_server_convergence_seconds
  --leases M               leases created before the watchers connect, i.e. snapshot size (default 100)
  --client-procs P         watcher processes (default 1: all watchers in one Node.js process)
  --connect-concurrency C  watchers connecting at once per process (default 200)
  --setup-timeout-s S      limit for connecting every watcher (default 300)
  --settle-timeout-s S     limit for the last change to reach every watcher (default 60)
  --timeout-s S            hard limit for the whole run (default 900)
  --target weft|etcd       server to measure (default weft; etcd needs /usr/bin/etcd)
  --verbose                pass server logs through to stderr
  --server-node-arg ARG    extra node option for the weft server process (repeatable), e.g. --cpu-prof
  --store sqlite|etcd      --target weft: the lease servers' store (default sqlite: a temp SQLite file;
                           etcd: one etcd (/usr/bin/etcd, temp data dir, 127.0.0.1) that the servers share)
  --servers N              --target weft --store etcd: lease servers on that etcd (default 1, max 8);
                           watchers are spread evenly over them, changes go through the first
  --per-server             report each server's CPU per delivered event and RSS (always on; kept for old scripts)
  --compare                run weft+sqlite (1 server), weft+etcd (1 and 2 servers) and etcd direct, one
                           after the other for each size, and print one table; --watchers takes a list
                           (default 1000,5000,10000), --timeout-s bounds each run (default 240),
                           --setup-timeout-s defaults to 150, --client-procs to 1 per 2,500 watchers
  --configs LIST           --compare: only these set-ups, e.g. weft-sqlite-1,etcd-direct (default: all four:
                           weft-sqlite-1, weft-etcd-1, weft-etcd-2, etcd-direct)

Open files: each connection (a watcher, or N of them with --streams-per-connection N) is a socket in its
watcher process and one in the server. When the soft limit (ulimit -n) is too low, the bench raises its
own limit with prlimit (up to the hard limit, or beyond it as root) before it starts any process, so the
server, etcd and the watcher processes inherit it.
Above 20,000 connections per server, the watchers connect from several loopback source addresses
(127.0.0.2, 127.0.0.3, ...; all of 127.0.0.0/8 is local): one source address has only the ~28,000
ephemeral ports of net.ipv4.ip_local_port_range towards one server port.
`;

/** A watcher with --report-status holds two streams (watch and status) on its connection. */
const MAX_REPORTING_PER_CONNECTION = MAX_STREAMS_PER_CONNECTION / 2;

export function usage(msg: string): never {
  process.stderr.write(`bench:fanout: ${msg}\n${HELP}`);
  process.exit(2);
}

export function parseOpts(argv: string[]): Opts {
  const o: Opts = {
    target: "weft", store: "sqlite", servers: 1, watchers: 1000, sizes: [], compare: false, changes: 50, intervalMs: 150, isolated: false, reportStatus: false, configs: [], leases: 100, streamsPerConnection: 1, clientProcs: 1,
    clientProcsSet: false, connectConcurrency: 200, setupTimeoutS: 300, settleTimeoutS: 60, timeoutS: 900, given: new Set(), perServer: false,
    verbose: false, serverNodeArgs: [],
  };
  const int = (flag: string, v: string | undefined, min: number, max: number): number => {
    const n = Number(v);
    if (v === undefined || !Number.isInteger(n) || n < min || n > max) usage(`${flag}: ${JSON.stringify(v)} is not an integer from ${min} to ${max}`);
    return n;
  };
  let watchersArg: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.includes("=") ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)] : [a, undefined];
    const val = () => inline ?? argv[++i];
    o.given.add(flag);
    switch (flag) {
      case "--watchers": watchersArg = val(); if (!argv.includes("--compare")) o.watchers = int(flag, watchersArg, 1, 50_000); break;
      case "--changes": o.changes = int(flag, val(), 1, 10_000); break;
      case "--interval-ms": o.intervalMs = int(flag, val(), 0, 60_000); break;
      case "--leases": o.leases = int(flag, val(), 0, 50_000); break;
      case "--streams-per-connection": {
        const v = val();
        const n = Number(v);
        if (v === undefined || !Number.isInteger(n) || n < 1 || n > 100) {
          usage(`--streams-per-connection: ${JSON.stringify(v)} is not an integer from 1 to 100; give how many watchers share one connection, e.g. --streams-per-connection 4 (1: a connection each)`);
        }
        o.streamsPerConnection = n;
        break;
      }
      case "--client-procs": o.clientProcs = int(flag, val(), 1, 16); o.clientProcsSet = true; break;
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
      case "--store": {
        const s = val();
        if (s !== "sqlite" && s !== "etcd") usage(`--store: ${JSON.stringify(s)} is not sqlite or etcd`);
        o.store = s;
        break;
      }
      case "--servers": o.servers = int(flag, val(), 1, 8); break;
      case "--per-server": o.perServer = true; break;
      case "--isolated": o.isolated = true; break;
      case "--report-status": o.reportStatus = true; break;
      case "--configs": o.configs = String(val()).split(",").map((s) => s.trim()).filter(Boolean); break;
      case "--compare": o.compare = true; break;
      case "--verbose": o.verbose = true; break;
      case "--server-node-arg": o.serverNodeArgs.push(String(val())); break;
      case "--help": case "-h": process.stdout.write(HELP); process.exit(0);
      default: usage(`unknown flag ${JSON.stringify(a)}`);
    }
  }
  if (o.compare) {
    for (const f of ["--target", "--store", "--servers"]) if (o.given.has(f)) usage(`${f} does not go with --compare (it runs every target)`);
    if (o.reportStatus) usage("--report-status does not go with --compare; run --target weft with and without it");
    if (o.streamsPerConnection > 1) usage("--streams-per-connection does not go with --compare (etcd watchers keep a connection each); run --target weft with it");
    o.sizes = (o.given.has("--watchers") ? String(watchersArg) : "1000,5000,10000").split(",").map((s) => int("--watchers", s.trim(), 1, 50_000));
    o.watchers = Math.max(...o.sizes);
    if (!o.given.has("--timeout-s")) o.timeoutS = 240;
    if (!o.given.has("--setup-timeout-s")) o.setupTimeoutS = 150;
  } else {
    if (o.target !== "weft" && (o.given.has("--store") || o.given.has("--servers"))) usage("--store and --servers go with --target weft (--target etcd is etcd alone)");
    if (o.servers > 1 && o.store !== "etcd") usage(`--servers ${o.servers}: several lease servers need a store they share; add --store etcd`);
    if (o.reportStatus && o.target !== "weft") usage("--report-status goes with --target weft (etcd has no status stream)");
    if (o.given.has("--configs")) usage("--configs goes with --compare");
    // etcd's watchers stay one client and one connection each, as Go clientv3 (flanneld) has.
    if (o.streamsPerConnection > 1 && o.target !== "weft") {
      usage(`--streams-per-connection ${o.streamsPerConnection} goes with --target weft; etcd watchers keep a connection each (as flanneld's clientv3 does): leave the flag out`);
    }
    // The server allows MAX_STREAMS_PER_CONNECTION streams at once on a connection (grpc.max_concurrent_streams).
    if (o.reportStatus && o.streamsPerConnection > MAX_REPORTING_PER_CONNECTION) {
      usage(`--streams-per-connection ${o.streamsPerConnection} with --report-status is ${2 * o.streamsPerConnection} streams per connection, more than the lease server's ${MAX_STREAMS_PER_CONNECTION}; use --streams-per-connection ${MAX_REPORTING_PER_CONNECTION} or less`);
    }
  }
  // CPU per delivered event is a headline figure: always measured per server.
  o.perServer = true;
  return o;
}
