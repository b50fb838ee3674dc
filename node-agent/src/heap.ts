// Giving memory back after a pass that read the kernel's tables. Such a pass
// parses every route, ARP and FDB entry (15,000 objects at 5,000 peers), all
// garbage a moment later; V8 keeps the pages they filled until its next full
// collection, which an agent that allocates little otherwise may not reach
// for minutes. bin/weft-agent runs node with --expose-gc, and the agent asks
// for a full collection, run concurrently, once such a pass is done and
// nothing else is queued: ~1 MiB less RSS at 5,000 peers, for about a
// millisecond of main-thread work per resync interval (docs/benchmarks.md).
// At most one every MIN_GAP_MS, so a storm of drift repairs (a pass every
// few tens of ms) does not turn into a storm of collections. Without the
// flag (tests, tsx) this does nothing.

type Gc = (options: { type: "major"; execution: "async" }) => Promise<void>;

const MIN_GAP_MS = 1_000;
let last = -Infinity;

export function collectGarbage(now = Date.now()): void {
  const gc = (globalThis as { gc?: Gc }).gc;
  if (!gc || now - last < MIN_GAP_MS) return;
  last = now;
  void gc({ type: "major", execution: "async" }).catch(() => undefined);
}
