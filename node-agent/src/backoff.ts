// Exponential backoff with full jitter, and an abortable sleep.

export function backoffDelay(attempt: number, baseMs = 500, maxMs = 10_000): number {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 20));
  // Full jitter spreads many agents reconnecting to a restarted server.
  return Math.round(cap / 2 + Math.random() * (cap / 2));
}

/** Largest delay setTimeout/setInterval accept; anything above fires after 1 ms instead. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** A delay clamped into what Node timers can represent (never 0 or negative, never overflowing). */
export function clampTimerMs(ms: number): number {
  if (!Number.isFinite(ms)) return ms > 0 ? MAX_TIMER_MS : 1;
  return Math.min(MAX_TIMER_MS, Math.max(1, Math.round(ms)));
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, clampTimerMs(ms));
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
