import { describe, expect, it } from "vitest";
import { Semaphore } from "../src/dataplane/netlink-dataplane.js";

describe("Semaphore (netlink in-flight bound)", () => {
  it("hands a released slot to the waiter, so a newcomer cannot overtake it and exceed the bound", async () => {
    const s = new Semaphore(1);
    let active = 0;
    let peak = 0;
    const job = async () => {
      await s.acquire();
      active++;
      peak = Math.max(peak, active);
      await new Promise((r) => setTimeout(r, 5));
      active--;
      s.release();
    };
    await s.acquire();
    const waiter = job();
    s.release();
    // Arrives after the release but before the waiter resumed: must queue, not take a slot.
    const newcomer = job();
    await Promise.all([waiter, newcomer]);
    expect(peak).toBe(1);
    expect(s.inUse).toBe(0);
  });

  it("close() is final: rejects queued waiters and later callers", async () => {
    const s = new Semaphore(1);
    await s.acquire();
    const queued = s.acquire();
    s.close();
    await expect(queued).rejects.toThrow(/closed/);
    s.release();
    await expect(s.acquire()).rejects.toThrow(/closed/);
  });
});
