// What every node has applied, from the agents' ReportStatus streams.
//
// A node is one of four states: converged (connected, healthy, applied the
// newest revision), lagging (connected, healthy, behind), unhealthy
// (connected, its /readyz has reasons) or disconnected (it holds a lease but
// has no report stream here). Convergence of a revision is the time from the
// hub learning of its commit until every connected agent reported it applied.
//
// Reports arrive from every agent after every change, so the hot path is
// O(1) per report: the oldest pending revision keeps a count of connected
// agents still behind it; only when that count reaches zero is the fleet
// scanned, once per converged revision. Listeners (the status page's event
// stream) get the changed nodes at most every batchMs, and only when there are
// listeners is anything collected.
import type { Lease, LeaseEvent } from "../../lib/src/lease.js";
import type { NodeStatusReport } from "../../lib/src/node-status.js";

export const AGENT_STATES = ["converged", "lagging", "unhealthy", "disconnected"] as const;
export type AgentState = (typeof AGENT_STATES)[number];

/** One status message of an agent, validated. */
export type NodeReport = NodeStatusReport;

/** A node as GET /v1/nodes and the status page show it. */
export interface NodeJson {
  nodeName: string;
  state: AgentState;
  subnet: string | null;
  publicIP: string | null;
  backendType: string | null;
  leaseExpiresAt: string | null;
  leaseRevision: number | null;
  connected: boolean;
  appliedRevision: number | null;
  lagRevisions: number | null;
  healthy: boolean | null;
  problems: string[];
  lastReportAt: string | null;
  agentVersion: string | null;
  peers: number | null;
}

export interface FleetSummary {
  revision: number;
  agents: Record<AgentState, number>;
  convergence: { lastSeconds: number | null; lastRevision: number | null; pendingRevisions: number };
}

export type NodesJson = FleetSummary & { nodes: NodeJson[] };

export interface FleetChanges {
  readonly nodes: readonly NodeJson[];
  readonly removed: readonly string[];
  readonly summary: FleetSummary;
}

export interface FleetClock {
  /** Wall clock (ms since the epoch), for lastReportAt. */
  now(): number;
  /** Monotonic ms, for convergence times and staleness. */
  monotonic(): number;
}

export interface FleetOptions {
  /** The hub's newest revision. */
  readonly revision: () => number;
  /** The hub's live leases. */
  readonly leases: () => Iterable<Lease>;
  /** Convergence of one revision, in seconds. */
  readonly onConverged?: (seconds: number) => void;
  /** A revision that did not converge within maxWaitMs (an agent stuck behind): given up on. */
  readonly onGaveUp?: () => void;
  readonly clock?: FleetClock;
  /** A stream with no report for this long counts as gone (agents report at least every 10 s). */
  readonly staleMs?: number;
  /** How long a revision may wait for every agent before it is given up on. */
  readonly maxWaitMs?: number;
  /** Listeners get changes at most this often. */
  readonly batchMs?: number;
}

interface Reporter {
  readonly nodeName: string;
  /** Ends the stream (replaced, silent too long, server closing). */
  readonly end: (reason: string) => void;
  report: NodeReport | undefined;
  lastReportAt: number;
  lastSeen: number;
}

export interface ReporterHandle {
  report(r: NodeReport): void;
  /** The stream ended. */
  close(): void;
}

const systemClock: FleetClock = { now: () => Date.now(), monotonic: () => performance.now() };

export class Fleet {
  readonly #o: FleetOptions;
  readonly #clock: FleetClock;
  readonly #reporters = new Map<string, Reporter>();
  /** Revisions committed and not yet applied everywhere, oldest first. */
  #pending: { revision: number; at: number }[] = [];
  /** Connected agents whose applied revision is below #pending[0]. */
  #behind = 0;
  #last: { seconds: number; revision: number } | undefined;
  readonly #listeners = new Set<(c: FleetChanges) => void>();
  readonly #dirty = new Set<string>();
  #flushTimer: NodeJS.Timeout | undefined;
  readonly #sweep: NodeJS.Timeout;

  constructor(opts: FleetOptions) {
    this.#o = opts;
    this.#clock = opts.clock ?? systemClock;
    this.#sweep = setInterval(() => this.sweep(), Math.min(5000, this.#staleMs / 4));
    this.#sweep.unref();
  }

  get #staleMs(): number {
    return this.#o.staleMs ?? 35_000;
  }

  /**
   * A report stream for nodeName opened; `end` closes it from this side. A second stream for the same
   * node replaces the first (an agent that reconnected before the server saw the old stream go).
   */
  connect(nodeName: string, end: (reason: string) => void): ReporterHandle {
    const r: Reporter = { nodeName, end, report: undefined, lastReportAt: 0, lastSeen: this.#clock.monotonic() };
    const old = this.#reporters.get(nodeName);
    if (old) {
      this.#disconnect(old);
      old.end("a newer status stream for this node replaced this one");
    }
    this.#reporters.set(nodeName, r);
    return {
      report: (rep) => {
        if (this.#reporters.get(nodeName) !== r) return;
        this.#report(r, rep);
      },
      close: () => {
        if (this.#reporters.get(nodeName) === r) this.#disconnect(r);
      },
    };
  }

  /** The hub applied a batch of changes; `at` is monotonic ms when the first of them reached it. */
  committed(events: readonly LeaseEvent[], at: number): void {
    if (events.length === 0) return;
    const revision = events[events.length - 1]!.revision;
    if (this.#listeners.size > 0) for (const e of events) this.#dirty.add(e.lease.nodeName);
    if (this.#reporters.size > 0) {
      this.#pending.push({ revision, at });
      if (this.#pending.length === 1) this.#behind = this.#countBehind(revision);
      this.#settle();
    }
    this.#changed();
  }

  #report(r: Reporter, rep: NodeReport): void {
    const before = r.report;
    const head = this.#pending[0]?.revision;
    r.report = rep;
    r.lastReportAt = this.#clock.now();
    r.lastSeen = this.#clock.monotonic();
    if (head !== undefined) {
      const wasBehind = before !== undefined && before.appliedRevision < head;
      const isBehind = rep.appliedRevision < head;
      // A first report joins the count only if it is behind; a connected agent that has not reported yet does not block.
      if (wasBehind && !isBehind) this.#behind--;
      else if (!wasBehind && isBehind) this.#behind++;
      if (this.#behind === 0) this.#settle();
    }
    if (this.#listeners.size > 0 && !sameReport(before, rep)) {
      this.#dirty.add(r.nodeName);
      this.#changed();
    }
  }

  #disconnect(r: Reporter): void {
    this.#reporters.delete(r.nodeName);
    const head = this.#pending[0]?.revision;
    if (head !== undefined && r.report !== undefined && r.report.appliedRevision < head) {
      this.#behind--;
      this.#settle();
    }
    if (this.#reporters.size === 0) this.#pending = [];
    if (this.#listeners.size > 0) {
      this.#dirty.add(r.nodeName);
      this.#changed();
    }
  }

  #countBehind(revision: number): number {
    let n = 0;
    for (const r of this.#reporters.values()) if (r.report !== undefined && r.report.appliedRevision < revision) n++;
    return n;
  }

  /** Observes every pending revision that all connected agents have applied. */
  #settle(): void {
    if (this.#behind > 0 || this.#pending.length === 0) return;
    let min = Infinity;
    for (const r of this.#reporters.values()) if (r.report !== undefined) min = Math.min(min, r.report.appliedRevision);
    if (min === Infinity) {
      // No agent has reported yet: nothing was applied anywhere, so there is nothing to measure.
      this.#pending = [];
      return;
    }
    const now = this.#clock.monotonic();
    while (this.#pending.length > 0 && this.#pending[0]!.revision <= min) {
      const p = this.#pending.shift()!;
      const seconds = Math.max(0, now - p.at) / 1000;
      this.#last = { seconds, revision: p.revision };
      this.#o.onConverged?.(seconds);
    }
    if (this.#pending.length > 0) this.#behind = this.#countBehind(this.#pending[0]!.revision);
  }

  /** Drops streams silent for staleMs and revisions that waited longer than maxWaitMs. */
  sweep(): void {
    const now = this.#clock.monotonic();
    for (const r of [...this.#reporters.values()]) {
      if (now - r.lastSeen <= this.#staleMs) continue;
      this.#disconnect(r);
      r.end(`no status report for ${Math.round(this.#staleMs / 1000)} s`);
    }
    const maxWait = this.#o.maxWaitMs ?? 600_000;
    let gaveUp = false;
    while (this.#pending.length > 0 && now - this.#pending[0]!.at > maxWait) {
      this.#pending.shift();
      this.#o.onGaveUp?.();
      gaveUp = true;
    }
    if (gaveUp) {
      this.#behind = this.#pending.length > 0 ? this.#countBehind(this.#pending[0]!.revision) : 0;
      this.#settle();
    }
  }

  #state(r: Reporter | undefined, revision: number): AgentState {
    if (r === undefined) return "disconnected";
    if (r.report === undefined) return "lagging";
    if (!r.report.healthy) return "unhealthy";
    return r.report.appliedRevision >= revision ? "converged" : "lagging";
  }

  /** Agents by state: connected reporters, and nodes with a lease and no stream here. */
  counts(): Record<AgentState, number> {
    const out: Record<AgentState, number> = { converged: 0, lagging: 0, unhealthy: 0, disconnected: 0 };
    const revision = this.#o.revision();
    for (const r of this.#reporters.values()) out[this.#state(r, revision)]++;
    for (const l of this.#o.leases()) if (!this.#reporters.has(l.nodeName)) out.disconnected++;
    return out;
  }

  summary(): FleetSummary {
    return {
      revision: this.#o.revision(),
      agents: this.counts(),
      convergence: { lastSeconds: this.#last?.seconds ?? null, lastRevision: this.#last?.revision ?? null, pendingRevisions: this.#pending.length },
    };
  }

  #nodeJson(nodeName: string, lease: Lease | undefined, revision: number): NodeJson {
    const r = this.#reporters.get(nodeName);
    const rep = r?.report;
    return {
      nodeName,
      state: this.#state(r, revision),
      subnet: lease?.subnet ?? null,
      publicIP: lease?.publicIP ?? null,
      backendType: lease?.attrs.type ?? rep?.backend ?? null,
      leaseExpiresAt: lease?.expiresAt ? new Date(lease.expiresAt).toISOString() : null,
      leaseRevision: lease?.revision ?? null,
      connected: r !== undefined,
      appliedRevision: rep?.appliedRevision ?? null,
      lagRevisions: rep ? Math.max(0, revision - rep.appliedRevision) : null,
      healthy: rep?.healthy ?? null,
      problems: rep ? [...rep.problems] : [],
      lastReportAt: r && rep ? new Date(r.lastReportAt).toISOString() : null,
      agentVersion: rep?.version || null,
      peers: rep?.peers ?? null,
    };
  }

  #leasesByNode(): Map<string, Lease> {
    const byNode = new Map<string, Lease>();
    for (const l of this.#o.leases()) byNode.set(l.nodeName, l);
    return byNode;
  }

  /** Every node with a lease or a report stream, sorted by subnet (nodes without one last), then name. */
  nodes(): NodesJson {
    const revision = this.#o.revision();
    const byNode = this.#leasesByNode();
    const names = new Set([...byNode.keys(), ...this.#reporters.keys()]);
    const nodes = [...names].map((n) => this.#nodeJson(n, byNode.get(n), revision));
    nodes.sort(compareNodes);
    return { ...this.summary(), nodes };
  }

  /** Changes at most every batchMs while subscribed; the listener should start from nodes(). */
  subscribe(listener: (c: FleetChanges) => void): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
      if (this.#listeners.size === 0) {
        this.#dirty.clear();
        clearTimeout(this.#flushTimer);
        this.#flushTimer = undefined;
      }
    };
  }

  #changed(): void {
    if (this.#listeners.size === 0 || this.#flushTimer !== undefined) return;
    this.#flushTimer = setTimeout(() => this.#flush(), this.#o.batchMs ?? 250);
    this.#flushTimer.unref();
  }

  #flush(): void {
    this.#flushTimer = undefined;
    if (this.#listeners.size === 0) return;
    const revision = this.#o.revision();
    const byNode = this.#leasesByNode();
    const nodes: NodeJson[] = [];
    const removed: string[] = [];
    for (const n of this.#dirty) {
      const lease = byNode.get(n);
      if (lease === undefined && !this.#reporters.has(n)) removed.push(n);
      else nodes.push(this.#nodeJson(n, lease, revision));
    }
    this.#dirty.clear();
    const changes = { nodes, removed, summary: this.summary() };
    for (const l of this.#listeners) l(changes);
  }

  /** Ends every report stream (server shutdown). */
  close(): void {
    for (const r of [...this.#reporters.values()]) {
      this.#reporters.delete(r.nodeName);
      r.end("lease server is shutting down");
    }
    this.#pending = [];
    clearInterval(this.#sweep);
    clearTimeout(this.#flushTimer);
    this.#listeners.clear();
  }
}

function sameReport(a: NodeReport | undefined, b: NodeReport): boolean {
  return a !== undefined && a.appliedRevision === b.appliedRevision && a.healthy === b.healthy && a.backend === b.backend
    && a.version === b.version && a.peers === b.peers && a.subnet === b.subnet
    && a.problems.length === b.problems.length && a.problems.every((p, i) => p === b.problems[i]);
}

/** By subnet address (numerically), nodes without a subnet last, then by name. */
function compareNodes(a: NodeJson, b: NodeJson): number {
  if (a.subnet !== b.subnet) {
    if (a.subnet === null) return 1;
    if (b.subnet === null) return -1;
    return subnetKey(a.subnet) - subnetKey(b.subnet);
  }
  return a.nodeName < b.nodeName ? -1 : a.nodeName > b.nodeName ? 1 : 0;
}

function subnetKey(cidr: string): number {
  const [a = 0, b = 0, c = 0, d = 0] = cidr.split("/")[0]!.split(".").map(Number);
  return ((a * 256 + b) * 256 + c) * 256 + d;
}
