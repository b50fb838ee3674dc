// Messages between the coordinator and its watcher processes (IPC, advanced serialization).
import type { TargetName } from "./options.js";

/** One observed change: its kind and key, when each watcher received it (epoch ms), and how many got it from each server. */
export interface Arrival { rev: number; type: string; key: string; times: number[]; byServer: number[] }

export interface WorkerStart {
  cmd: "start";
  target: TargetName;
  /** Servers to watch; watcher i (counted over all processes) watches addrs[i % addrs.length]. */
  addrs: string[];
  count: number;
  concurrency: number;
  setupTimeoutS: number;
  offset: number;
  /** --isolated: say "complete" when every watcher of this process has a change. */
  notifyComplete: boolean;
  /** Loopback source addresses to spread the connections over (empty: the system's choice, 127.0.0.1). */
  srcAddrs: string[];
  /** --report-status: each weft watcher also streams its NodeStatus. */
  reportStatus: boolean;
  /** Weft watchers of this process that share one gRPC client (one HTTP/2 connection) to their server. */
  streamsPerConnection: number;
}
export type ToWorker = WorkerStart | { cmd: "report" } | { cmd: "exit" };
export type FromWorker =
  /** connections: HTTP/2 connections the open watchers hold (fewer than opened with --streams-per-connection). */
  | { ev: "ready"; opened: number; connections: number; failed: number; setupMs: number; openedByServer: number[]; failReasons: Record<string, number> }
  | { ev: "report"; arrivals: Arrival[]; reconnects: number; streamErrors: number; eventMessages: number; statusReports: number; statusErrors: number; rss: number; heapUsed: number }
  | { ev: "complete"; rev: number; type: string; key: string }
  | { ev: "fatal"; message: string };
