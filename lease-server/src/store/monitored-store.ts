// Watches a LeaseStore for failing writes (disk full, file turned read-only,
// etcd unreachable) so the server can say it is not ready instead of staying
// "ready" while every acquire and renew fails. The store itself stays the
// judge of consistency: SQLite rolls a failed transaction back whole, and
// etcd transactions are atomic, so a failed write leaves no half-written lease.
//
// Recovery needs a write that really wrote. The lease manager marks the store
// alive on its sweep (markAlive, about every few seconds), so that write is
// retried while the store fails and proves recovery without a probe of ours.
import { isWeftError } from "../../../lib/src/errors.js";
import type { Logger } from "../../../lib/src/logger.js";
import type { LeaseStore } from "./lease-store.js";

export interface StoreHealth {
  readonly ok: boolean;
  /** Why writes fail (the store's error message), while !ok. */
  readonly reason?: string;
  /** When writes started failing (ms since the epoch), while !ok. */
  readonly since?: number;
}

export interface MonitorOptions {
  readonly log: Logger;
  /** Called when writes start failing and when they succeed again. */
  readonly onChange?: (h: StoreHealth) => void;
  readonly now?: () => number;
  /** Repeat the error log at most this often while writes keep failing. */
  readonly logEveryMs?: number;
}

/** Methods whose success proves a write reached the store, given their result. */
const WROTE: Record<string, (result: unknown) => boolean> = {
  create: (r) => r !== undefined,
  update: (r) => r !== undefined,
  remove: (r) => r !== undefined,
  expire: (r) => Array.isArray(r) && r.length > 0,
  markAlive: () => true,
  putReservation: () => true,
  deleteReservation: () => true,
};

export interface MonitoredStore<S extends LeaseStore> {
  /** The same store (instanceof and extra methods still work), with its calls observed. */
  readonly store: S;
  health(): StoreHealth;
}

export function monitorStore<S extends LeaseStore>(target: S, opts: MonitorOptions): MonitoredStore<S> {
  const now = opts.now ?? Date.now;
  const logEvery = opts.logEveryMs ?? 60_000;
  let health: StoreHealth = { ok: true };
  let lastLog = 0;
  let suppressed = 0;

  const failed = (method: string, err: unknown) => {
    if (!isWeftError(err) || err.code !== "STORE_UNAVAILABLE") return;
    const t = now();
    if (health.ok) {
      health = { ok: false, reason: err.message, since: t };
      lastLog = t;
      suppressed = 0;
      opts.log.error({ err, method }, "lease store writes fail; not ready until a write succeeds again");
      opts.onChange?.(health);
      return;
    }
    health = { ...health, reason: err.message };
    if (t - lastLog >= logEvery) {
      opts.log.error({ err, method, failingSeconds: Math.round((t - health.since!) / 1000), suppressed }, "lease store writes still fail");
      lastLog = t;
      suppressed = 0;
    } else {
      suppressed++;
    }
  };
  const succeeded = (method: string, result: unknown) => {
    if (health.ok || !WROTE[method]?.(result)) return;
    const seconds = Math.round((now() - health.since!) / 1000);
    health = { ok: true };
    opts.log.info({ method, failedSeconds: seconds }, `lease store writes succeed again after ${seconds}s; ready`);
    opts.onChange?.(health);
  };

  const wrapped = new Map<PropertyKey, unknown>();
  const store = new Proxy(target, {
    get(t, prop) {
      // Private fields (#db) need the real object as `this`.
      const v = Reflect.get(t, prop, t) as unknown;
      if (typeof v !== "function") return v;
      let w = wrapped.get(prop);
      if (!w) {
        const method = String(prop);
        w = (...args: unknown[]) => {
          let out: unknown;
          try {
            out = (v as (...a: unknown[]) => unknown).apply(t, args);
          } catch (err) {
            failed(method, err);
            throw err;
          }
          if (out instanceof Promise) {
            return out.then((r) => {
              succeeded(method, r);
              return r;
            }, (err: unknown) => {
              failed(method, err);
              throw err;
            });
          }
          return out;
        };
        wrapped.set(prop, w);
      }
      return w;
    },
  });
  return { store, health: () => health };
}
