import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { createAgentMetrics } from "../src/metrics.js";

describe("agent metrics", () => {
  it("pass promtool's checks", async () => {
    if (spawnSync("sh", ["-c", "command -v promtool"]).status !== 0) {
      if (process.env.CI) throw new Error("promtool is missing: apt-get install prometheus (CI must not skip this)");
      console.warn("SKIP-REASON: promtool not installed (apt-get install prometheus)");
      return;
    }
    const m = createAgentMetrics();
    m.peers.set(3);
    m.reconcileDuration.observe(0.02);
    m.reconcileErrors.inc({ op: "route" });
    m.leaseRenewals.inc({ result: "ok" });
    const text = await m.registry.metrics();
    for (const name of ["weft_agent_peers 3", "weft_agent_reconcile_duration_seconds_bucket", 'weft_agent_reconcile_errors_total{op="route"} 1', "weft_agent_lease_expiry_timestamp_seconds", "weft_agent_server_connected"]) {
      expect(text).toContain(name);
    }
    const check = spawnSync("promtool", ["check", "metrics"], { input: text, encoding: "utf8" });
    expect(check.stdout + check.stderr).toBe("");
    expect(check.status).toBe(0);
  });
});
