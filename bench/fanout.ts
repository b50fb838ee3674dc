// npm run bench:fanout -- [--watchers N] [--changes K] [--interval-ms MS] [--client-procs P] [--target weft|etcd] [--streams-per-connection N]
//                         [--store sqlite|etcd] [--servers N] [--isolated] [--report-status] [--compare [--configs LIST]]
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
// --store etcd starts one etcd and --servers N lease servers on it; the
// watchers are spread over the servers and the changes go through the first.
//
// --target etcd runs the same harness against etcd (/usr/bin/etcd, temp data
// dir, 127.0.0.1): each watcher is its own etcd3 client (own connection) that
// reads the prefix and then watches it; changes are puts and deletes.
//
// --streams-per-connection N lets N weft watchers share one gRPC client (one
// HTTP/2 connection), each still its own stream: the server's per-stream cost
// and memory at more streams than the open-file limit allows connections.
//
// --compare runs all of these side by side for a list of sizes and prints one table.
//
// --isolated sends each change only once the previous one reached every
// watcher; --report-status makes each weft watcher also stream its status as
// an agent does (ReportStatus) and reads the server's convergence histogram.
//
// Everything is bounded: watcher count, change count, setup, settle and total
// time. Every process this bench starts is killed on exit, also on failure.
//
// The parts, in bench/fanout/: options.ts (flags), run.ts (one run: the
// coordinator), worker.ts (a watcher process), weft-target.ts and
// etcd-target.ts (the systems measured), report.ts (numbers and output),
// compare.ts (--compare), proc.ts (/proc and child processes).
import { parseOpts } from "./fanout/options.js";
import { killAll } from "./fanout/proc.js";
import { runOnce } from "./fanout/run.js";
import { runCompare } from "./fanout/compare.js";

for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(sig, () => {
    killAll();
    process.exit(130);
  });
}
process.on("exit", killAll);
const o = parseOpts(process.argv.slice(2));
(o.compare ? runCompare(o) : runOnce(o)).then(() => process.exit(0), (err) => {
  process.stderr.write(`bench:fanout: ${(err as Error)?.stack ?? err}\n`);
  killAll();
  process.exit(1);
});
