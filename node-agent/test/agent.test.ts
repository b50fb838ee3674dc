// The agent's lifecycle on a FakeDataplane and a scripted lease API: start-up
// order, renew timing and retries, re-acquire on NOT_FOUND, and a data plane
// that stays put while the server is unreachable.
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { WeftError } from "../../lib/src/errors.js";
import type { Lease } from "../../lib/src/lease.js";
import { Agent } from "../src/agent.js";
import { loadAgentConfig } from "../src/config.js";
import { FakeDataplane } from "../src/dataplane/fake-dataplane.js";
import type { AcquireRequest, LeaseApi, WatchMessage } from "../src/lease-client.js";
import { createAgentMetrics } from "../src/metrics.js";
import { network, peer, silentLog } from "./helpers/fixtures.js";

const TTL = 600;

class ScriptedApi implements LeaseApi {
  acquires: AcquireRequest[] = [];
  renews: number[] = [];
  renewScript: Array<"ok" | "unavailable" | "not_found"> = [];
  private mine(): Lease {
    return { subnet: "10.244.1.0/24", nodeName: "node-1", publicIP: "198.18.0.1", attrs: this.acquires.at(-1)!.attrs, expiresAt: Date.now() + TTL, revision: 1 };
  }
  async getNetworkConfig() { return network; }
  async acquire(r: AcquireRequest) { this.acquires.push(r); return this.mine(); }
  async renew() {
    this.renews.push(Date.now());
    const step = this.renewScript.shift() ?? "ok";
    if (step === "unavailable") throw new WeftError("SERVER_UNAVAILABLE", "lease server down");
    if (step === "not_found") throw new WeftError("LEASE_NOT_FOUND", "no such lease");
    return this.mine();
  }
  async release() {}
  async *watch(_from: number, signal: AbortSignal): AsyncIterable<WatchMessage> {
    yield { kind: "snapshot", leases: [peer(2), peer(3)], resync: false };
    yield { kind: "complete", revision: 3 };
    await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
  }
  close() {}
}

function setup(api: ScriptedApi) {
  const dir = mkdtempSync(join(tmpdir(), "weft-agent-"));
  const dp = new FakeDataplane();
  dp.links.set("eth0", { index: 2, name: "eth0", mac: "0e:00:00:00:aa:01", mtu: 1500, up: true, kind: undefined });
  dp.addresses.push({ index: 2, ip: "198.18.0.1", prefix: 24 });
  const config = loadAgentConfig(["--server", "198.18.0.254:7600", "--node-name", "node-1", "--iface", "eth0", "--insecure",
    "--subnet-file", join(dir, "run", "subnet.env"), "--state-dir", join(dir, "state"), "--resync-interval", "200ms"])!;
  const metrics = createAgentMetrics();
  const agent = new Agent({ config, dataplane: dp, client: api, log: silentLog, metrics });
  return { agent, dp, dir, config, metrics };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("Agent", () => {
  it("starts in Flannel's order, becomes ready and programs the peers", async () => {
    const api = new ScriptedApi();
    const { agent, dp, config } = setup(api);
    await agent.start();
    expect(readFileSync(config.subnetFile, "utf8")).toContain("FLANNEL_SUBNET=10.244.1.1/24");
    expect(dp.calls.indexOf("ensureVxlan weft.1")).toBeLessThan(dp.calls.indexOf("addAddress 10.244.1.0"));
    expect(api.acquires[0]).toMatchObject({ nodeName: "node-1", publicIP: "198.18.0.1", attrs: { type: "vxlan", vni: 1 } });
    await sleep(100);
    expect(agent.view().ready()).toBe(true);
    expect(agent.view().peers().map((p) => p.programmed)).toEqual([true, true]);
    expect(dp.routes.size).toBe(2);
    await agent.stop();
    expect(dp.routes.size).toBe(2);
    expect(dp.links.has("weft.1")).toBe(true);
  });

  it("passes the previous subnet from subnet.env and keeps the VTEP MAC across restarts", async () => {
    const api = new ScriptedApi();
    const first = setup(api);
    await first.agent.start();
    await first.agent.stop();
    const again = new Agent({ config: first.config, dataplane: first.dp, client: api, log: silentLog, metrics: createAgentMetrics() });
    await again.start();
    expect(api.acquires[1]!.previousSubnet).toBe("10.244.1.0/24");
    expect(api.acquires[1]!.attrs).toEqual(api.acquires[0]!.attrs);
    await again.stop();
  });

  it("renews at half the TTL, retries while the server is down without touching the kernel, re-acquires on NOT_FOUND", async () => {
    const api = new ScriptedApi();
    api.renewScript = ["unavailable", "unavailable", "not_found", "ok"];
    const { agent, dp } = setup(api);
    const t0 = Date.now();
    await agent.start();
    await sleep(100);
    const routes = [...dp.routes.values()];
    await sleep(1400);
    await agent.stop();
    expect(api.renews[0]! - t0).toBeGreaterThanOrEqual(TTL / 2 - 60);
    expect(api.renews[0]! - t0).toBeLessThan(TTL);
    // Retries come well before the lease would expire.
    expect(api.renews[1]! - api.renews[0]!).toBeLessThan(TTL / 2);
    expect(api.acquires.length).toBe(2);
    expect(api.acquires[1]!.previousSubnet).toBe("10.244.1.0/24");
    expect(api.renews.length).toBeGreaterThanOrEqual(4);
    expect([...dp.routes.values()]).toEqual(routes);
    expect(dp.calls.filter((c) => c.startsWith("delete"))).toEqual([]);
  });
});
