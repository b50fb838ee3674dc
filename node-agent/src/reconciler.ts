// Makes the kernel match the backend's desired state. Each pass lists what the
// kernel has (routes with our protocol number; neighbours and FDB entries on
// our own devices only), adds what is missing, replaces what differs and
// deletes what is ours but no longer wanted. A failed operation is counted and
// simply retried by the next pass (on the next peer event or the timer), so
// passes are idempotent and need no rollback.
//
// Ordering per peer follows Flannel: ARP and FDB first, the route last, so the
// route never points at a gateway the kernel would have to resolve; on removal
// the route goes first.
import type { Lease } from "../../lib/src/lease.js";
import type { Logger } from "../../lib/src/logger.js";
import type { Backend, DesiredEntry } from "./backends/backend.js";
import type { Dataplane, FdbEntry, Neighbour, Route } from "./dataplane/dataplane.js";

export interface ReconcileResult {
  /** Subnets of peers whose objects are all in the kernel after this pass. */
  readonly programmed: ReadonlySet<string>;
  /** Peers the backend refused to program (by subnet), with the reason: not failures, and never retried as such. */
  readonly rejected: ReadonlyMap<string, string>;
  readonly added: number;
  readonly deleted: number;
  readonly errors: number;
  readonly durationMs: number;
}

export interface ReconcilerHooks {
  onError?(op: string, err: unknown): void;
  onPass?(r: ReconcileResult): void;
}

/** Operations in flight per pass: matches the dataplane's bound, so no unbounded queue of closures builds up. */
const WINDOW = 64;

async function forEachBounded<T>(items: readonly T[], fn: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(WINDOW, items.length) }, worker));
}

const routeKey = (r: Route) => `${r.dst}|${r.gateway}|${r.oif}|${r.onlink}`;
const neighKey = (n: Neighbour) => `${n.index}|${n.ip}|${n.mac}`;
const fdbKey = (f: FdbEntry) => `${f.index}|${f.mac}|${f.dst}`;

export class Reconciler {
  constructor(
    private readonly dataplane: Dataplane,
    private readonly backend: Backend,
    private readonly log: Logger,
    private readonly hooks: ReconcilerHooks = {},
  ) {}

  async reconcile(peers: readonly Lease[]): Promise<ReconcileResult> {
    const t0 = performance.now();
    const dp = this.dataplane;
    const want = this.backend.desired(peers);
    const failed = new Set<string>();
    let added = 0;
    let deleted = 0;
    let errors = 0;

    const attempt = async (op: string, peer: string | undefined, fn: () => Promise<void>): Promise<boolean> => {
      try {
        await fn();
        return true;
      } catch (err) {
        errors++;
        if (peer) failed.add(peer);
        this.hooks.onError?.(op, err);
        this.log.warn({ err, op, peer }, "dataplane operation failed; will retry");
        return false;
      }
    };

    const [routes, neighLists, fdbLists] = await Promise.all([
      dp.listRoutes(),
      Promise.all(want.ownedLinks.map((i) => dp.listNeighbours(i))),
      Promise.all(want.ownedLinks.map((i) => dp.listFdb(i))),
    ]);
    const haveRoutes = new Set(routes.map(routeKey));
    const haveNeigh = new Set(neighLists.flat().map(neighKey));
    const haveFdb = new Set(fdbLists.flat().map(fdbKey));

    // 1. Routes that are ours but not wanted (a replaced route keeps its dst, so it is not stale).
    const wantRouteDsts = new Set(want.routes.map((e) => e.value.dst));
    await forEachBounded(routes.filter((r) => !wantRouteDsts.has(r.dst)), (r) =>
      attempt("route_delete", undefined, async () => { await dp.deleteRoute(r); deleted++; }));

    // 2. ARP and FDB: add missing or changed, then drop unwanted ones on our devices.
    const missing = <T>(list: readonly DesiredEntry<T>[], have: Set<string>, key: (v: T) => string) => list.filter((e) => !have.has(key(e.value)));
    const l2Adds: Array<() => Promise<boolean>> = [
      ...missing(want.neighbours, haveNeigh, neighKey).map((e) => () =>
        attempt("neigh_replace", e.peer, async () => { await dp.replaceNeighbour(e.value); added++; })),
      ...missing(want.fdb, haveFdb, fdbKey).map((e) => () =>
        attempt("fdb_replace", e.peer, async () => { await dp.replaceFdb(e.value); added++; })),
    ];
    await forEachBounded(l2Adds, (f) => f());
    const wantNeighIps = new Set(want.neighbours.map((e) => `${e.value.index}|${e.value.ip}`));
    const wantFdb = new Set(want.fdb.map((e) => fdbKey(e.value)));
    const l2Deletes: Array<() => Promise<boolean>> = [
      ...neighLists.flat().filter((n) => !wantNeighIps.has(`${n.index}|${n.ip}`)).map((n) => () =>
        attempt("neigh_delete", undefined, async () => { await dp.deleteNeighbour(n); deleted++; })),
      ...fdbLists.flat().filter((f) => !wantFdb.has(fdbKey(f))).map((f) => () =>
        attempt("fdb_delete", undefined, async () => { await dp.deleteFdb(f); deleted++; })),
    ];
    await forEachBounded(l2Deletes, (f) => f());

    // 3. Routes last, only for peers whose ARP and FDB entries are in place.
    await forEachBounded(missing(want.routes, haveRoutes, routeKey).filter((e) => !failed.has(e.peer)), (e) =>
      attempt("route_replace", e.peer, async () => { await dp.replaceRoute(e.value); added++; }));

    const programmed = new Set<string>();
    for (const e of want.routes) if (!failed.has(e.peer)) programmed.add(e.peer);
    const result: ReconcileResult = { programmed, rejected: want.rejected, added, deleted, errors, durationMs: performance.now() - t0 };
    this.hooks.onPass?.(result);
    if (added || deleted || errors) this.log.info({ added, deleted, errors, peers: programmed.size, ms: Math.round(result.durationMs) }, "reconciled");
    return result;
  }
}
