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
// The reconciler also remembers what it last wanted, so a kernel notification
// can be judged cheaply: only a change that undoes something wanted (a
// deleted route, a replaced ARP entry) is drift worth a pass.
import type { Logger } from "../../lib/src/logger.js";
import { NODE_ENTRY, type DesiredState, type Rejection } from "./backends/backend.js";
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
const MAX_PROBLEMS = 3;

async function forEachBounded<T>(items: readonly T[], fn: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(WINDOW, items.length) }, worker));
}

const errText = (err: unknown): string => (err instanceof Error ? err.message : String(err));

type AnyTable = KernelTable<unknown>;

export class Reconciler {
  /** What the last pass wanted, per kind: id -> key. */
  private wanted = new Map<ObjectKind, Map<string, string>>();
  private identify = new Map<ObjectKind, AnyTable>();
  private lastFailed: ReadonlySet<string> = new Set();

  constructor(private readonly log: Logger, private readonly hooks: ReconcilerHooks = {}) {}

  async reconcile(want: DesiredState): Promise<ReconcileResult> {
    const t0 = performance.now();
    const stages = want.stages as ReadonlyArray<ReadonlyArray<{ table: AnyTable; entries: ReadonlyArray<{ peer: string; value: unknown }> }>>;
    const failed = new Map<string, string>();
    const problems: string[] = [];
    const repaired = new Map<ObjectKind, number>();
    let added = 0;
    let deleted = 0;
    let errors = 0;

    const attempt = async (op: string, peer: string | undefined, fn: () => Promise<void>): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        errors++;
        const text = errText(err);
        if (peer && !failed.has(peer)) failed.set(peer, text);
        if (problems.length < MAX_PROBLEMS) problems.push(text);
        this.hooks.onError?.(op, err);
        this.log.warn({ err: text, op, peer }, "dataplane operation failed; will retry");
      }
    };

    const all = stages.flat();
    const have = await Promise.all(all.map((s) => s.table.list()));
    // Each entry's id and key, computed once: a full pass at 5,000 VXLAN peers has 15,000 of them.
    const keyed = all.map((s) => s.entries.map((e) => ({ e, id: s.table.id(e.value), key: s.table.key(e.value) })));
    const previous = this.wanted;
    const nextWanted = new Map<ObjectKind, Map<string, string>>();
    all.forEach((s, i) => {
      this.identify.set(s.table.kind, s.table);
      const m = nextWanted.get(s.table.kind) ?? new Map<string, string>();
      for (const k of keyed[i]!) m.set(k.id, k.key);
      nextWanted.set(s.table.kind, m);
    });
    // From now on notifications are judged against this pass: the echoes of its own removals are not drift.
    this.wanted = nextWanted;

    // The plan, per table: entries missing or different in the kernel (a put of something the last pass
    // wanted just so, and got, is drift), and our objects no longer wanted.
    const plan = all.map((s, i) => {
      const { table } = s;
      const current = new Map(have[i]!.map((o) => [table.id(o), o]));
      const before = previous.get(table.kind);
      const puts = keyed[i]!.filter(({ id, key }) => {
        const cur = current.get(id);
        return cur === undefined || table.key(cur) !== key;
      }).map(({ e, id, key }) => ({ e, drift: before?.get(id) === key && !this.lastFailed.has(e.peer) }));
      const wantedIds = nextWanted.get(table.kind)!;
      const removes = [...current].filter(([id]) => !wantedIds.has(id)).map(([, o]) => o);
      return { table, puts, removes };
    });
    const ops = plan.reduce((n, p) => n + p.puts.length + p.removes.length, 0);
    const endBulk = ops > BULK_OPS ? this.hooks.onBulk?.(ops) : undefined;
    try {
      // 1. Puts, stage by stage; a peer that failed an earlier stage waits for the next pass.
      let at = 0;
      for (const stage of stages) {
        const work: Array<() => Promise<void>> = [];
        for (const { table, puts } of plan.slice(at, (at += stage.length))) {
          for (const { e, drift } of puts) {
            work.push(() => failed.has(e.peer) ? Promise.resolve() : attempt(`${table.kind}_put`, e.peer, async () => {
              await table.put(e.value);
              added++;
              if (drift) repaired.set(table.kind, (repaired.get(table.kind) ?? 0) + 1);
            }));
          }
        }
        await forEachBounded(work, (f) => f());
      }
      // 2. Removals of ours-but-unwanted, last stage first.
      for (let si = stages.length - 1; si >= 0; si--) {
        at -= stages[si]!.length;
        const work = plan.slice(at, at + stages[si]!.length).flatMap(({ table, removes }) =>
          removes.map((o) => () => attempt(`${table.kind}_remove`, undefined, async () => { await table.remove(o); deleted++; })));
        await forEachBounded(work, (f) => f());
      }
    } finally {
      endBulk?.();
    }

    const programmed = new Set<string>();
    for (const s of all) for (const e of s.entries) if (e.peer !== NODE_ENTRY && !failed.has(e.peer)) programmed.add(e.peer);
    this.lastFailed = new Set(failed.keys());
    const result: ReconcileResult = { programmed, failed, rejected: want.rejected, added, deleted, repaired, errors, problems, durationMs: performance.now() - t0 };
    this.hooks.onPass?.(result);
    if (added || deleted || errors) this.log.info({ added, deleted, errors, peers: programmed.size, ms: Math.round(result.durationMs) }, "reconciled");
    return result;
  }

  /** Whether a kernel change undoes something the last pass wanted (so a pass should put it back). */
  affectedBy(c: KernelChange): boolean {
    if (c.kind !== "route" && c.kind !== "neighbour" && c.kind !== "fdb") return false;
    const table = this.identify.get(c.kind);
    const want = table && this.wanted.get(c.kind)?.get(table.id(c.value));
    if (want === undefined) return false;
    return c.deleted || !c.ours || table!.key(c.value) !== want;
  }
}
