// What an agent reports about itself on ReportStatus, as both daemons see it.

/** One report: the whole state of the node each time, not a delta. */
export interface NodeStatusReport {
  /** The lease-feed revision the node's kernel reflects (every change up to it programmed). */
  readonly appliedRevision: number;
  /** The agent's /readyz is ready. */
  readonly healthy: boolean;
  /** Why not (the /readyz reasons), at most MAX_PROBLEMS of at most MAX_PROBLEM_CHARS. */
  readonly problems: readonly string[];
  readonly backend: string;
  readonly version: string;
  /** Peers programmed in the kernel. */
  readonly peers: number;
  /** The node's own subnet ("" before it has a lease). */
  readonly subnet: string;
}

/** The server keeps this much of the reasons: a handful of short sentences. */
export const MAX_PROBLEMS = 8;
export const MAX_PROBLEM_CHARS = 200;
