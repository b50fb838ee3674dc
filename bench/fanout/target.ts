// What the coordinator needs from a measured system (weft lease servers, or etcd alone).

/** One server process of a target, measured on its own (CPU, RSS). */
export interface ServerProc {
  /** e.g. "weft-1", "etcd". */
  name: string;
  pid: number;
  /** Index into Target.addrs when watchers connect to it; undefined for a process no watcher talks to (etcd behind weft). */
  watchIndex?: number;
}

export interface Target {
  /** The server the changes go through (weft: the first lease server; etcd alone: etcd). */
  pid: number;
  addr: string;
  /** Where the watchers connect, spread evenly: one address per server they watch. */
  addrs: string[];
  /** Every server process: the lease servers, then etcd when it is there. */
  procs: ServerProc[];
  /** Server RSS as the server reports it in its metrics, when it has them. */
  metricsRss(): Promise<number | undefined>;
  /** The first server's Prometheus text, when it has metrics (weft). */
  metricsText?(): Promise<string | undefined>;
  /** Makes change i; returns its revision if the reply carries it, and a key to find it. */
  change(i: number): Promise<{ rev?: number; type: string; key: string }>;
  seed(n: number): Promise<void>;
  stop(): Promise<void>;
}

export const vtepMac = (i: number) => `02:00:${[(i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255].map((b) => b.toString(16).padStart(2, "0")).join(":")}`;
