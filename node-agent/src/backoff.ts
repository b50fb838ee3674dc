// Exponential backoff with full jitter, and an abortable sleep.

export function backoffDelay(attempt: number, baseMs = 500, maxMs = 10_000): number {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 20));
  // Full jitter spreads many agents reconnecting to a restarted server.
  return Math.round(cap / 2 + Math.random() * (cap / 2));
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
