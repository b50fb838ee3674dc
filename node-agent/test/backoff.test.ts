import { describe, expect, it } from "vitest";
import { clampTimerMs, MAX_TIMER_MS, sleep } from "../src/backoff.js";

describe("sleep", () => {
  it("clamps delays beyond setTimeout's 2^31-1 ms instead of firing after 1 ms", async () => {
    expect(clampTimerMs(2 ** 40)).toBe(MAX_TIMER_MS);
    expect(clampTimerMs(-5)).toBe(1);
    const ac = new AbortController();
    let done = false;
    const p = sleep(2 ** 32 + 5, ac.signal).then(() => (done = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(done).toBe(false);
    ac.abort();
    await p;
    expect(done).toBe(true);
  });
});
