// Makes the kernel match a backend's desired state, for any backend. The
// desired state is a list of stages, each a set of kernel tables (routes, ARP
// entries, FDB entries, later WireGuard peers) with the entries wanted in
// them. Each pass lists what the kernel has in every table (ours only), puts
// what is missing or differs, stage by stage, and then removes what is ours
// but no longer wanted, in reverse stage order. A failed operation is counted
// against its peer and simply retried by the next pass (on the next event,
// notification or timer), so passes are idempotent and need no rollback.
//
// Stages carry Flannel's ordering: for VXLAN the ARP and FDB entries come
// before the route, so the kernel never has to resolve a gateway it cannot;
// a peer whose earlier stage failed gets no later entries this pass. Removal
// runs backwards, so a departing peer loses its route before its ARP entry.
//
// The reconciler also remembers what it last wanted (the model: one item per
// wanted object, with its id and key), so a kernel notification can be judged
// cheaply: only a change that undoes something wanted (a deleted route, a
// replaced ARP entry) is drift worth a pass. Backends hand out the same entry
// objects for unchanged peers, so a pass recognises them by identity and
// computes ids and keys only for what is new: no per-peer strings or maps
// are built for the thousands of unchanged peers. A pass that may trust the
// model (a lease event, no error or drift since the last pass) skips the
// kernel dumps and touches only the changed objects; the others (timer,
// kernel notifications, after errors) dump the tables and compare. A change
// pass (reconcileChange) goes further: it is given only the changed peers'
// desired state, before and after, so a lease event costs the same with ten
// peers or ten thousand. The wanted objects are the backend's entries
// themselves, which carry the model's bookkeeping (one object per wanted
// object, not two). A change pass may also run while a full pass reads the
// kernel (`acceptsChange`), so a lease event never waits for a timer's dumps.
import { WeftError } from "../../lib/src/errors.js";
import type { Logger } from "../../lib/src/logger.js";
import { NODE_ENTRY, type DesiredEntry, type DesiredState, type Rejection } from "./backends/backend.js";
import type { KernelChange, KernelTable, ObjectKind } from "./dataplane/dataplane.js";

export interface ReconcileResult {
  /** Peers (by subnet) whose objects are all in the kernel after this pass. */
  readonly programmed: ReadonlySet<string>;
  /** Peers whose objects could not all be programmed this pass, with the first error. */
  readonly failed: ReadonlyMap<string, string>;
  /** Peers the backend refused to program: not failures, and never retried as such. */
  readonly rejected: ReadonlyMap<string, Rejection>;
  readonly added: number;
  readonly deleted: number;
  /** Objects put back although nothing about them changed since the last pass: drift, by kind. */
  readonly repaired: ReadonlyMap<ObjectKind, number>;
  readonly errors: number;
  /** The first few failed operations, for /readyz. */
  readonly problems: readonly string[];
  readonly durationMs: number;
}

export interface ReconcilerHooks {
  onError?(op: string, err: unknown): void;
  onPass?(r: ReconcileResult): void;
  /** Called before a pass with more than BULK_OPS changes; what it returns is called when the pass ends. */
  onBulk?(ops: number): () => void;
}

/** From this many changes in one pass on, reading back their notifications costs more than one more pass. */
export const BULK_OPS = 256;

/** Operations in flight per pass: matches the dataplane's bound, so no unbounded queue of closures builds up. */
const WINDOW = 64;
/** Failed operations a result names (ReconcileResult.problems). */
export const MAX_PROBLEMS = 3;

async function forEachBounded<T>(items: readonly T[], fn: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(WINDOW, items.length) }, worker));
}

const errText = (err: unknown): string => (err instanceof Error ? err.message : String(err));

type AnyTable = KernelTable<unknown>;
type Stage = ReadonlyArray<{ table: AnyTable; entries: ReadonlyArray<DesiredEntry<unknown>> }>;

/**
 * One wanted object: the backend's entry, which the model keeps by id (see DesiredEntry). `since`: the
 * pass that first wanted it so; `seen`: the last pass that wanted it; `inKernel`: the last reading of
 * the kernel's table that found it; `key`: only for tables without `same`.
 */
type Item = DesiredEntry<unknown> & { since: number; seen: number; inKernel: number };

/** The wanted objects of one kind, by id. */
interface Model {
  readonly items: Map<string, Item>;
  /** The last pass that updated it, and the entries it was given. */
  pass: number;
  last: ReadonlyArray<DesiredEntry<unknown>>;
  /** A change pass (reconcileChange) updated the items since `last` was given: `last` no longer lists them all. */
  patched: boolean;
}

interface Plan {
  readonly table: AnyTable;
  readonly puts: Item[];
  readonly removes: unknown[];
}

export class Reconciler {
  private models = new Map<ObjectKind, Model>();
  private identify = new Map<ObjectKind, AnyTable>();
  private pass = 0;
  /** Numbers the readings of kernel tables (Item.inKernel). */
  private marks = 0;
  private lastFailed: ReadonlySet<string> = new Set();
  /** Wanted objects per peer, and the peers with any that did not fail: the programmed ones. */
  private readonly counts = new Map<string, number>();
  private programmed = new Set<string>();
  /** The kernel holds exactly the model as far as we know: the last pass had no errors and no drift was seen since. */
  private trusted = false;
  /** A full pass is putting and removing (its plan is made): a change pass now would cross it. */
  private applyingFull = false;
  /** The change pass in flight, if any: a full pass applies its plan only after it. */
  private changeInFlight: Promise<unknown> | undefined;

  constructor(private readonly log: Logger, private readonly hooks: ReconcilerHooks = {}) {}

  /** Something may have changed in the kernel behind our back: the next pass reads the kernel again. */
  invalidate(): void {
    this.trusted = false;
  }

  /**
   * A change pass (reconcileChange) may start now, even while a full pass reads the kernel (75-150 ms
   * at 5,000 peers), as long as no other change pass runs and no full pass is putting and removing.
   * The two do not get in each other's way: the change pass updates the model before it touches the
   * kernel, and the full pass plans from the model and applies only after the change pass is done, so
   * at worst it puts again an object the change pass was still putting (puts are idempotent).
   */
  get acceptsChange(): boolean {
    return !this.applyingFull && this.changeInFlight === undefined;
  }

  /**
   * One pass. `trustMemory`: nothing but the desired state changed since the last pass (a lease
   * event), so what the last pass left in the kernel is taken from memory instead of three dumps,
   * unless there is reason to doubt it (errors, drift, invalidate()); a peer change then costs its own
   * few objects. Passes on the timer and after kernel notifications read the kernel.
   */
  async reconcile(want: DesiredState, opts: { trustMemory?: boolean } = {}): Promise<ReconcileResult> {
    const t0 = performance.now();
    const all = want.stages.flat() as Stage;
    const pass = ++this.pass;
    const fromMemory = !!opts.trustMemory && !want.listEveryPass && this.trusted && all.every((s) => this.models.has(s.table.kind));
    // From now on notifications are judged against this pass (the echoes of its own removals are not
    // drift), and drift seen from here on makes the memory doubtful again.
    const changes = all.map((s) => this.update(s.table, s.entries, pass));
    this.trusted = true;
    let plan: Plan[];
    try {
      plan = fromMemory
        ? all.map((s, i) => ({ table: s.table, puts: changes[i]!.fresh, removes: changes[i]!.gone }))
        : await Promise.all(all.map((s) => this.planFromKernel(s.table)));
    } catch (err) {
      this.trusted = false;
      // What this pass wanted anew is not in the kernel: not programmed (until a pass puts it: counted
      // as failed), and no drift when the next pass puts it.
      const unplaced = new Set(this.lastFailed);
      for (const c of changes) {
        for (const it of c.fresh) {
          this.programmed.delete(it.peer);
          unplaced.add(it.peer);
          it.since = pass + 1;
        }
      }
      this.lastFailed = unplaced;
      throw err;
    }
    // No two passes put and remove at once: their bookkeeping (failed peers, counts) would cross.
    await this.changeInFlight?.catch(() => undefined);
    this.applyingFull = true;
    try {
      return await this.apply(want.stages as ReadonlyArray<Stage>, plan, pass, fromMemory, want.rejected, t0);
    } finally {
      this.applyingFull = false;
    }
  }

  /**
   * A pass over a few changed peers alone: `before` is the desired state of their leases as the last
   * pass had them, `after` as they are now (desired() of just those leases). Only their objects are
   * looked at and touched, so a peer change costs the same with 10 or 10,000 peers. Undefined when the
   * memory cannot be trusted (errors, drift, a backend that lists every pass, a table never
   * reconciled): the caller runs a full pass instead. `rejected` of the result: the changed peers' only.
   */
  async reconcileChange(before: DesiredState, after: DesiredState): Promise<ReconcileResult | undefined> {
    // One change pass at a time (one may have started beside a full pass).
    while (this.changeInFlight) await this.changeInFlight.catch(() => undefined);
    const all = after.stages.flat() as Stage;
    if (!this.trusted || after.listEveryPass || !all.every((s) => this.models.has(s.table.kind))) return undefined;
    const t0 = performance.now();
    const pass = ++this.pass;
    const was = new Map((before.stages.flat() as Stage).map((s) => [s.table.kind, s.entries]));
    const plan = all.map((s) => ({ table: s.table, ...this.patch(s.table, was.get(s.table.kind) ?? [], s.entries, pass) }));
    const applied = this.apply(after.stages as ReadonlyArray<Stage>, plan, pass, true, after.rejected, t0);
    this.changeInFlight = applied;
    const done = () => { if (this.changeInFlight === applied) this.changeInFlight = undefined; };
    applied.then(done, done);
    return applied;
  }

  /** Puts and removes what the plan says, stage by stage, and settles which peers are programmed. */
  private async apply(stages: ReadonlyArray<Stage>, plan: Plan[], pass: number, fromMemory: boolean, rejected: ReadonlyMap<string, Rejection>, t0: number): Promise<ReconcileResult> {
    const failed = new Map<string, string>();
    const problems: string[] = [];
    const repaired = new Map<ObjectKind, number>();
    let added = 0;
    let deleted = 0;
    let errors = 0;

    const failure = (op: string, peer: string | undefined, err: unknown): void => {
      errors++;
      const text = errText(err);
      if (peer && !failed.has(peer)) failed.set(peer, text);
      if (problems.length < MAX_PROBLEMS) problems.push(text);
      this.hooks.onError?.(op, err);
      this.log.warn({ err: text, op, peer }, "dataplane operation failed; will retry");
    };
    const attempt = async (op: string, peer: string | undefined, fn: () => Promise<void>): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        failure(op, peer, err);
      }
    };

    const ops = plan.reduce((n, p) => n + p.puts.length + p.removes.length, 0);
    const endBulk = ops > BULK_OPS ? this.hooks.onBulk?.(ops) : undefined;
    try {
      // 1. Puts, stage by stage; a peer that failed an earlier stage waits for the next pass.
      let at = 0;
      for (const stage of stages) {
        const work: Array<() => Promise<void>> = [];
        for (const { table, puts } of plan.slice(at, (at += stage.length))) {
          const todo = puts.filter((it) => !failed.has(it.peer));
          const done = (it: Item) => {
            added++;
            // Drift: put back although the last pass wanted it just so, and got it.
            if (!fromMemory && it.since < pass && !this.lastFailed.has(it.peer)) repaired.set(table.kind, (repaired.get(table.kind) ?? 0) + 1);
          };
          if (table.putMany && todo.length > 1) {
            work.push(async () => {
              const errs = await table.putMany!(todo.map((it) => it.value));
              todo.forEach((it, i) => (errs[i] ? failure(`${table.kind}_put`, it.peer, errs[i]) : done(it)));
            });
          } else {
            for (const it of todo) work.push(() => attempt(`${table.kind}_put`, it.peer, async () => { await table.put(it.value); done(it); }));
          }
        }
        await forEachBounded(work, (f) => f());
      }
      // 2. Removals of ours-but-unwanted, last stage first.
      for (let si = stages.length - 1; si >= 0; si--) {
        at -= stages[si]!.length;
        const work: Array<() => Promise<void>> = [];
        for (const { table, removes } of plan.slice(at, at + stages[si]!.length)) {
          if (table.removeMany && removes.length > 1) {
            work.push(async () => {
              const errs = await table.removeMany!(removes);
              removes.forEach((_, i) => (errs[i] ? failure(`${table.kind}_remove`, undefined, errs[i]) : deleted++));
            });
          } else {
            for (const o of removes) work.push(() => attempt(`${table.kind}_remove`, undefined, async () => { await table.remove(o); deleted++; }));
          }
        }
        await forEachBounded(work, (f) => f());
      }
    } finally {
      endBulk?.();
    }
    // A failed put or remove leaves the kernel other than wanted: the next pass reads it again.
    if (errors) this.trusted = false;

    // Failed peers are not programmed until a pass gets all their objects in; the others are again.
    for (const p of this.lastFailed) if (!failed.has(p) && (this.counts.get(p) ?? 0) > 0) this.programmed.add(p);
    for (const p of failed.keys()) this.programmed.delete(p);
    this.lastFailed = new Set(failed.keys());
    const result: ReconcileResult = { programmed: this.programmed, failed, rejected, added, deleted, repaired, errors, problems, durationMs: performance.now() - t0 };
    this.hooks.onPass?.(result);
    if (added || deleted || errors) this.log.info({ added, deleted, errors, peers: this.programmed.size, ms: Math.round(result.durationMs * 10) / 10, fromMemory }, "reconciled");
    return result;
  }

  /**
   * Brings the model of one table to `entries`: entries it saw last pass, at the same place in the
   * list (a backend hands out the same objects for unchanged peers), cost a comparison; only the
   * others get their id and key computed. Returns the items wanted anew (new, or with another key) and the values no longer wanted
   * (dropped from the model).
   */
  private update(table: AnyTable, entries: ReadonlyArray<DesiredEntry<unknown>>, pass: number): { fresh: Item[]; gone: unknown[] } {
    if (this.identify.get(table.kind) !== undefined && this.models.get(table.kind)!.pass === pass) {
      throw new WeftError("INTERNAL", `two ${table.kind} tables in one desired state; a backend has one table per kind`);
    }
    this.identify.set(table.kind, table);
    let m = this.models.get(table.kind);
    if (!m) this.models.set(table.kind, (m = { items: new Map(), pass, last: [], patched: false }));
    m.pass = pass;
    // After a change pass `last` is not the whole model: every entry is looked up, and what no entry
    // wanted is swept out below.
    const patched = m.patched;
    const prev = patched ? [] : m.last;
    m.last = entries;
    m.patched = false;
    const fresh: Item[] = [];
    /** Last pass's entries not found at their place: gone, unless found elsewhere. */
    const missed: Array<DesiredEntry<unknown>> = [];
    let j = 0;
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      const p = prev[j];
      if (p === e || (p !== undefined && p.value === e.value && p.peer === e.peer)) { j++; continue; }
      // One entry of last pass's list gone here (a peer left): skip it.
      const q = prev[j + 1];
      if (p !== undefined && q !== undefined && q.value === e.value && q.peer === e.peer) { missed.push(p); j += 2; continue; }
      this.want(m, table, e, pass, fresh);
    }
    for (; j < prev.length; j++) missed.push(prev[j]!);
    const gone: unknown[] = [];
    const drop = (id: string, it: Item) => {
      gone.push(it.value);
      m.items.delete(id);
      this.count(it.peer, -1);
    };
    if (patched) {
      m.items.forEach((it, id) => it.seen !== pass && drop(id, it));
    } else {
      for (const p of missed) {
        const id = table.id(p.value);
        const it = m.items.get(id);
        if (it !== undefined && it.seen !== pass) drop(id, it);
      }
    }
    return { fresh, gone };
  }

  /** The model of one table after a change: `now` is wanted, what `was` wanted and `now` does not is gone. */
  private patch(table: AnyTable, was: ReadonlyArray<DesiredEntry<unknown>>, now: ReadonlyArray<DesiredEntry<unknown>>, pass: number): { puts: Item[]; removes: unknown[] } {
    const m = this.models.get(table.kind)!;
    m.pass = pass;
    m.patched = true;
    const puts: Item[] = [];
    for (const e of now) this.want(m, table, e, pass, puts);
    const removes: unknown[] = [];
    for (const e of was) {
      const id = table.id(e.value);
      const it = m.items.get(id);
      // Wanted again in this pass, or another peer's object under this id: it stays.
      if (it === undefined || it.seen === pass || it.peer !== e.peer) continue;
      removes.push(it.value);
      m.items.delete(id);
      this.count(it.peer, -1);
    }
    return { puts, removes };
  }

  /**
   * Records one wanted entry in the model; `fresh` gets it if it is new or differs from what was
   * wanted. An equal entry in a new object (a renewed lease) takes the old one's place and history.
   */
  private want(m: Model, table: AnyTable, entry: DesiredEntry<unknown>, pass: number, fresh: Item[]): void {
    const e = entry as Item;
    const id = table.id(e.value);
    if (!table.same) e.key = table.key === table.id ? id : table.key(e.value);
    const it = m.items.get(id);
    if (it === undefined) {
      e.since = pass;
      e.inKernel = 0;
      m.items.set(id, e);
      this.count(e.peer, 1);
      fresh.push(e);
    } else if (it !== e) {
      if (table.same ? !table.same(it.value, e.value) : it.key !== e.key) {
        e.since = pass;
        e.inKernel = 0;
        fresh.push(e);
      } else {
        e.since = it.since;
        e.inKernel = it.inKernel;
      }
      if (it.peer !== e.peer) { this.count(it.peer, -1); this.count(e.peer, 1); }
      m.items.set(id, e);
    }
    e.seen = pass;
  }

  private count(peer: string, d: number): void {
    if (peer === NODE_ENTRY) return;
    const n = (this.counts.get(peer) ?? 0) + d;
    if (n > 0) {
      this.counts.set(peer, n);
      if (n === 1) this.programmed.add(peer);
    } else {
      this.counts.delete(peer);
      this.programmed.delete(peer);
    }
  }

  /**
   * The plan from the kernel's table: wanted items missing or different there, and our objects not
   * wanted. A table that can scan hands its objects over one by one as the kernel's replies arrive,
   * so a timer pass never holds three dumps of thousands of objects at once.
   */
  private async planFromKernel(table: AnyTable): Promise<Plan> {
    const { items } = this.models.get(table.kind)!;
    let removes: unknown[] = [];
    // Each reading of the table (a scan may restart) marks what it found with a number of its own.
    let mark = ++this.marks;
    const visit = (o: unknown): void => {
      const it = items.get(table.id(o));
      if (it === undefined) removes.push(o);
      else if (table.same ? table.same(it.value, o) : it.key === table.key(o)) it.inKernel = mark;
    };
    if (table.scan) {
      await table.scan(visit, () => { removes = []; mark = ++this.marks; });
    } else {
      for (const o of await table.list()) visit(o);
    }
    const puts: Item[] = [];
    items.forEach((it) => { if (it.inKernel !== mark) puts.push(it); });
    return { table, puts, removes };
  }

  /** Whether a kernel change undoes something the last pass wanted (so a pass should put it back). */
  affectedBy(c: KernelChange): boolean {
    if (c.kind !== "route" && c.kind !== "neighbour" && c.kind !== "fdb") return false;
    const table = this.identify.get(c.kind);
    const want = table && this.models.get(c.kind)?.items.get(table.id(c.value));
    if (want === undefined) return false;
    const drift = c.deleted || !c.ours || (table!.same ? !table!.same(c.value, want.value) : table!.key(c.value) !== want.key);
    if (drift) this.trusted = false;
    return drift;
  }
}
