// Keeps the kernel in line with the peers. Passes run one at a time and are
// coalesced: a request during a pass makes one more pass follow it. A pass may
// first repair the backend's device and the firewall rules (the timer asks for
// both; a kernel notification about our device asks for the device), then
// reconciles the peers' objects. What the last pass found (programmed, failed,
// rejected peers, and why the data plane is not as wanted) feeds readiness,
// /v1/peers and the metrics.
//
// Passes asked for by lease events trust the reconciler's memory of the
// kernel and look at the changed peers alone (the peer table says which): a
// peer change costs its own objects, not three dumps of 15,000 nor a walk
// over every peer. The timer, kernel notifications and failures make the
// next pass read the kernel and compare every peer, which is what repairs
// drift. A lease event that arrives while such a pass is reading the kernel
// does not wait for it: its changed peers are programmed beside it (a lane),
// and the full pass takes the lane's result into its own.
//
// Kernel notifications: only what touches our device, our underlay interface
// or an object the last pass wanted starts a pass, after a short debounce,
// since a deleted device announces its addresses, routes and entries in one
// burst.
import type { Lease } from "../../lib/src/lease.js";
import type { Logger } from "../../lib/src/logger.js";
import type { PeerView } from "./api.js";
import type { Backend, PeerHealth, Rejection } from "./backends/backend.js";
import { backoffDelay, sleep } from "./backoff.js";
import type { KernelChange } from "./dataplane/dataplane.js";
import type { RuleSet } from "./firewall/firewall.js";
import type { AgentMetrics } from "./metrics.js";
import type { PeerChange } from "./peer-table.js";
import { MAX_PROBLEMS, type Reconciler, type ReconcileResult } from "./reconciler.js";

const DRIFT_DEBOUNCE_MS = 20;

type Problem = "device" | "firewall" | "dataplane";

export interface DataplaneSyncDeps {
  readonly backend: Backend;
  readonly firewall: RuleSet;
  readonly reconciler: Reconciler;
  /** The remote peers (the agent's PeerTable); no pass runs before a complete snapshot (nothing is pruned before). */
  readonly peers: PeerSource;
  readonly underlayIndex: number;
  readonly resyncIntervalMs: number;
  readonly log: Logger;
  readonly metrics: AgentMetrics;
  readonly signal: AbortSignal;
  /** Called after every pass; `ok`: it programmed every acceptable peer (false: it failed, or some peers did; retried). */
  readonly onPass: (ok: boolean) => void;
  /** Called when a pass reads the peers: what it programs is the peer table as of this moment. */
  readonly onPassStart?: () => void;
  /** Called when passes that read the kernel's tables are done and none is queued (heap.ts). */
  readonly afterKernelRead?: () => void;
}

export interface PeerSource {
  /** A complete snapshot arrived. */
  readonly synced: boolean;
  readonly size: number;
  list(): readonly Lease[];
  get(subnet: string): Lease | undefined;
  /** The peers changed since the last call; undefined when only the whole list says what is wanted. */
  takeChanges(): PeerChange[] | undefined;
}

/** Up to this many changed peers, a pass from memory looks at them alone; more take a full pass. */
const MAX_CHANGE_PASS = 512;

interface PassOutcome {
  readonly result: ReconcileResult;
  /** Every peer refused now (a lane's: the changed peers' alone). */
  readonly rejected: ReadonlyMap<string, Rejection>;
  /** A change pass's changed peers. */
  readonly changes?: readonly PeerChange[];
}

/**
 * A full pass's outcome with that of the change pass that ran beside it: the lane's peers are as the
 * lane left them (the full pass planned from the model the lane had already updated), except that a
 * peer the lane failed and the full pass then programmed is programmed.
 */
function withLane(full: PassOutcome, lane: PassOutcome | undefined): PassOutcome {
  if (!lane) return full;
  const a = full.result, b = lane.result;
  const rejected = new Map(full.rejected);
  for (const c of lane.changes ?? []) rejected.delete((c.after ?? c.before)!.subnet);
  lane.rejected.forEach((rej, subnet) => rejected.set(subnet, rej));
  const repaired = new Map(a.repaired);
  b.repaired.forEach((n, kind) => repaired.set(kind, (repaired.get(kind) ?? 0) + n));
  const result: ReconcileResult = {
    programmed: a.programmed, failed: new Map([...a.failed, ...[...b.failed].filter(([peer]) => !a.programmed.has(peer))]), rejected, added: a.added + b.added, deleted: a.deleted + b.deleted,
    repaired, errors: a.errors + b.errors, problems: [...a.problems, ...b.problems].slice(0, MAX_PROBLEMS), durationMs: a.durationMs,
  };
  return { result, rejected };
}

export class DataplaneSync {
  private programmed: ReadonlySet<string> = new Set();
  private failed: ReadonlyMap<string, string> = new Map();
  private rejected: ReadonlyMap<string, Rejection> = new Map();
  private readonly problems = new Map<Problem, string>();
  /** True once one pass over a complete snapshot finished. */
  passDone = false;
  lastPassMs = 0;
  private running: Promise<void> | undefined;
  private dirty = false;
  private repairPending = false;
  private firewallPending = false;
  /** The next pass reads the kernel (timer, kernel notification, failure) instead of trusting the last pass's result. */
  private readKernel = true;
  private debounce: NodeJS.Timeout | undefined;
  /** A change pass run beside a running pass (Reconciler.acceptsChange); undefined result: it could not run. */
  private lane: Promise<PassOutcome | undefined> | undefined;
  /** The running pass is repairing the device: the peers' objects wait for it (the device's index may change). */
  private repairingDevice = false;

  constructor(private readonly deps: DataplaneSyncDeps) {}

  /**
   * Asks for a pass (after `delayMs`); `repair`/`firewall` also check the device or the rules first,
   * and those and `kernel` make the pass read the kernel's tables. A bare request (a lease event)
   * trusts what the last pass left in the kernel (Reconciler, trustMemory): no dumps, and only the
   * changed peers' objects are touched.
   */
  request(what: { repair?: boolean; firewall?: boolean; kernel?: boolean } = {}, delayMs = 0): void {
    if (this.deps.signal.aborted) return;
    if (what.repair || what.firewall || what.kernel) this.readKernel = true;
    if (what.repair) this.repairPending = true;
    if (what.firewall) this.firewallPending = true;
    if (delayMs > 0) {
      this.debounce ??= setTimeout(() => {
        this.debounce = undefined;
        this.request();
      }, delayMs);
      return;
    }
    if (!this.deps.peers.synced) return;
    if (this.running) {
      this.dirty = true;
      if (!what.repair && !what.firewall && !what.kernel) this.changeBesideRead();
      return;
    }
    this.running = this.run().finally(() => (this.running = undefined));
  }

  onKernelChange(c: KernelChange): void {
    if (c.kind === "lost") {
      if (c.why === "overflow") this.deps.log.warn("kernel notifications were lost; checking everything");
      this.request({ repair: true }, DRIFT_DEBOUNCE_MS);
    } else if (this.deps.backend.concerns(c)) {
      this.request({ repair: true }, DRIFT_DEBOUNCE_MS);
    } else if ((c.kind === "link" && c.link.index === this.deps.underlayIndex) || (c.kind === "address" && c.address.index === this.deps.underlayIndex)) {
      // The underlay went down or up, or its address changed: routes via it vanished without a
      // notification of their own, or can come back now.
      this.request({ kernel: true }, DRIFT_DEBOUNCE_MS);
    } else if (this.deps.reconciler.affectedBy(c)) {
      this.request({ kernel: true }, DRIFT_DEBOUNCE_MS);
    }
  }

  private async run(): Promise<void> {
    const { log, metrics, backend, firewall } = this.deps;
    let failures = 0;
    let readTables = false;
    do {
      this.dirty = false;
      let ok = true;
      try {
        if (this.repairPending) {
          this.repairPending = false;
          this.repairingDevice = true;
          try {
            await this.guard("device", async () => this.countRepairs(await backend.repair()));
          } finally {
            this.repairingDevice = false;
          }
        }
        if (this.firewallPending) {
          this.firewallPending = false;
          await this.guard("firewall", async () => this.countRepairs(await firewall.ensure()));
        }
        this.deps.onPassStart?.();
        const trustMemory = !this.readKernel;
        this.readKernel = false;
        readTables ||= !trustMemory;
        const { result: r, rejected } = withLane(await this.reconcilePeers(trustMemory), await this.takeLane());
        for (const [subnet, rej] of r.rejected) {
          if (this.rejected.get(subnet)?.detail !== rej.detail) log.error({ peer: this.deps.peers.get(subnet)?.nodeName, subnet, reason: rej.reason, detail: rej.detail }, "peer rejected; not programming it");
        }
        for (const [kind, n] of r.repaired) {
          metrics.driftRepairs.inc({ kind }, n);
          log.warn({ kind, count: n }, "kernel objects were changed or removed; put them back");
        }
        this.programmed = r.programmed;
        this.failed = r.failed;
        this.rejected = rejected;
        this.passDone = true;
        this.lastPassMs = r.durationMs;
        ok = r.errors === 0;
        if (r.errors) this.problems.set("dataplane", `${r.failed.size} of ${this.deps.peers.size - this.rejected.size} peers not programmed (${r.errors} failed operations): ${r.problems.join("; ")}`);
        else this.problems.delete("dataplane");
        await this.updateMetrics();
        failures = 0;
      } catch (err) {
        ok = false;
        // A lane's changes are in the model; the full pass that follows reads the kernel and covers them.
        await this.takeLane();
        metrics.reconcileErrors.inc({ op: "pass" });
        this.problems.set("dataplane", `reconcile pass failed: ${(err as Error).message}`);
        const delay = backoffDelay(failures++, 250, this.deps.resyncIntervalMs);
        log.warn({ err, retryInMs: delay }, "reconcile pass failed; will retry");
        this.repairPending = true;
        this.readKernel = true;
        await sleep(delay, this.deps.signal);
        this.dirty = true;
      }
      this.deps.onPass(ok);
    } while (this.dirty && !this.deps.signal.aborted);
    if (readTables && !this.deps.signal.aborted) this.deps.afterKernelRead?.();
  }

  /**
   * Reconciles the peers: a lease event's changed peers alone when the memory may be trusted (no
   * dumps, no walk over every peer), otherwise all of them. `rejected`: every peer refused now.
   */
  private async reconcilePeers(trustMemory: boolean): Promise<PassOutcome> {
    const { backend, reconciler, peers } = this.deps;
    // Taken on every pass, so a later change pass sees only what changed after this one.
    const changes = peers.takeChanges();
    if (trustMemory && changes !== undefined && changes.length <= MAX_CHANGE_PASS) {
      const outcome = await this.changePass(changes, this.rejected);
      if (outcome) return outcome;
    }
    const result = await reconciler.reconcile(backend.desired(peers.list()), { trustMemory });
    return { result, rejected: result.rejected };
  }

  /** The changed peers alone (Reconciler.reconcileChange); undefined when the reconciler wants a full pass. */
  private async changePass(changes: readonly PeerChange[], rejectedBefore: ReadonlyMap<string, Rejection>): Promise<PassOutcome | undefined> {
    const { backend, reconciler } = this.deps;
    const before = changes.flatMap((c) => (c.before ? [c.before] : []));
    const after = changes.flatMap((c) => (c.after ? [c.after] : []));
    const result = await reconciler.reconcileChange(backend.desired(before), backend.desired(after));
    if (!result) return undefined;
    const rejected = new Map(rejectedBefore);
    for (const c of changes) rejected.delete((c.after ?? c.before)!.subnet);
    result.rejected.forEach((rej, subnet) => rejected.set(subnet, rej));
    return { result, rejected, changes };
  }

  /**
   * A lease event while a pass runs (a timer pass checks the firewall rules and reads the kernel: 75-250
   * ms at 5,000 peers): its changed peers are programmed now, beside that pass (Reconciler.acceptsChange
   * says when that is safe), and the pass takes the result into its own. When that cannot be (too many
   * changes, a snapshot, the memory in doubt), the pass that follows reads the kernel and covers
   * everything.
   */
  private changeBesideRead(): void {
    if (this.lane || this.repairingDevice || !this.deps.reconciler.acceptsChange) return;
    const changes = this.deps.peers.takeChanges();
    if (changes === undefined || changes.length > MAX_CHANGE_PASS) {
      this.readKernel = true;
      return;
    }
    this.deps.onPassStart?.();
    this.lane = this.changePass(changes, new Map()).then(
      (outcome) => { if (!outcome) this.readKernel = true; return outcome; },
      (err: unknown) => {
        this.deps.log.warn({ err }, "peer change beside the running pass failed; the next pass reads the kernel");
        this.readKernel = true;
        return undefined;
      },
    );
  }

  private takeLane(): Promise<PassOutcome | undefined> | undefined {
    const lane = this.lane;
    this.lane = undefined;
    return lane;
  }

  /** Runs one repair step; a failure is a readiness problem, not a reason to skip the peers. */
  private async guard(what: Problem, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
      this.problems.delete(what);
    } catch (err) {
      const msg = (err as Error).message;
      if (this.problems.get(what) !== msg) this.deps.log.error({ err: msg }, `${what} cannot be put in order; will retry`);
      this.problems.set(what, msg);
      if (what === "device") this.repairPending = true;
      else this.firewallPending = true;
    }
  }

  private countRepairs(kinds: readonly string[]): void {
    for (const kind of kinds) this.deps.metrics.driftRepairs.inc({ kind });
  }

  private async updateMetrics(): Promise<void> {
    const m = this.deps.metrics;
    const health = await this.deps.backend.peerHealth?.(false);
    if (health) m.peersUnreachable.set(this.deps.peers.list().filter((p) => this.programmed.has(p.subnet) && health(p)?.problem).length);
    m.peers.set(this.programmed.size);
    m.peersFailed.set(this.failed.size);
    m.peersRejected.reset();
    for (const r of this.rejected.values()) m.peersRejected.inc({ reason: r.reason });
  }

  /** Why the data plane is not as wanted, e.g. "dataplane: 1 of 2 peers not programmed ...". */
  problemList(): string[] {
    return [...this.problems].map(([k, v]) => `${k}: ${v}`);
  }

  get counts(): { programmed: number; rejected: number } {
    return { programmed: this.programmed.size, rejected: this.rejected.size };
  }

  /** A peer as /v1/peers shows it, with the tunnel's live state where the backend has one. */
  peerView(p: Lease, health?: PeerHealth): PeerView {
    const rej = this.rejected.get(p.subnet);
    const fail = this.failed.get(p.subnet);
    const programmed = !rej && this.programmed.has(p.subnet);
    const state = rej ? "rejected" : programmed ? "programmed" : fail ? "failed" : "pending";
    const reason = rej?.detail ?? fail ?? (programmed ? health?.problem : undefined);
    return {
      nodeName: p.nodeName, subnet: p.subnet, publicIP: p.publicIP, programmed, state,
      ...(programmed ? { path: this.deps.backend.pathTo(p) } : {}), ...(reason ? { reason } : {}),
      ...(health ? { [p.attrs.type]: health.details } : {}),
    };
  }

  /** Stops asking for passes and waits (a while) for the one running. */
  async stop(): Promise<void> {
    if (this.debounce) clearTimeout(this.debounce);
    await Promise.race([this.running, sleep(3000)]);
  }
}

