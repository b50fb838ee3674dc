// Lease integrity on real agents in network namespaces (no mTLS): a second
// agent with a node name that is taken is refused and changes nothing; a
// lease server down for longer than the TTL removes no lease and no route
// when it comes back; a revoked lease is re-acquired only after a back-off.
// Route removals are caught with `ip monitor route` in every node namespace,
// so even a flap shorter than any poll interval fails the test.
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster } from "./cluster.js";
import { ipJson, kernelTestEnv, newRunId, sh, waitFor } from "./netns.js";

const env = kernelTestEnv({});
const TTL_MS = 6000;

interface LeaseJson { subnet: string; nodeName: string; publicIP: string; expiresAt: string | null }

/** `ip monitor route` in each node namespace; collects every deleted overlay route. */
class RouteWatch {
  readonly deleted: string[] = [];
  readonly #procs: ChildProcess[] = [];
  constructor(c: Cluster, nodes: readonly number[]) {
    for (const i of nodes) {
      const p = spawn("ip", ["-n", c.nodes[i]!.ns, "monitor", "route"], { stdio: ["ignore", "pipe", "ignore"] });
      let buf = "";
      p.stdout!.on("data", (d: Buffer) => {
        buf += d.toString();
        const lines = buf.split("\n");
        buf = lines.pop()!;
        for (const l of lines) if (/^Deleted .*10\.244\./.test(l)) this.deleted.push(`node-${i}: ${l}`);
      });
      this.#procs.push(p);
    }
  }
  stop(): void {
    for (const p of this.#procs) if (p.exitCode === null) p.kill("SIGTERM");
  }
}

describe.skipIf(!env.ok)("lease integrity (nodes in namespaces, no mTLS)", () => {
  // Node 3 is a spare host: the impostor runs there with node-0's name and its own state dir.
  const c = new Cluster({ runId: newRunId(), nodes: 4, leaseTtl: `${TTL_MS / 1000}s`, resyncInterval: "1s", runner: "tsx" });
  const members = [0, 1, 2];

  const leases = async () => JSON.parse((await c.curl(c.srv, "http://127.0.0.1:7601/v1/leases")).body) as LeaseJson[];
  const overlayRoutes = async (i: number) =>
    (await ipJson<Array<{ dst: string }>>(c.nodes[i]!.ns, "route", "show")).map((r) => r.dst).filter((d) => d.startsWith("10.244.")).sort();
  const peerViews = async (i: number) => (await c.agentApi<unknown[]>(i, "/v1/peers")).json;

  beforeAll(async () => {
    await Cluster.cleanupStale();
    await c.setup();
    await c.startServer();
    for (const i of members) c.startAgent(i);
    for (const i of members) await c.waitReady(i, 60_000);
    for (const i of members) await c.waitPeers(i, 2, 30_000);
  }, 120_000);

  afterAll(async () => {
    await c.destroy();
  }, 60_000);

  it("refuses a second agent with a taken node name; the first keeps its subnet and no peer sees a change", async () => {
    const before = await leases();
    const node0 = before.find((l) => l.nodeName === "node-0")!;
    const routes = await Promise.all(members.map(overlayRoutes));
    const views = await Promise.all([1, 2].map(peerViews));
    const watch = new RouteWatch(c, members);
    try {
      const impostor = c.startAgent(3, ["--node-name", "node-0"]);
      const code = await new Promise<number | null>((resolve) => impostor.once("exit", resolve));
      expect(code).toBe(1);
      const log = readFileSync(c.logPath("node-3"), "utf8");
      expect(log).toContain(`node \\"node-0\\" already holds ${node0.subnet} from another agent instance`);
      expect(log).toContain("stop the other agent or give this node another --node-name");
      await new Promise((r) => setTimeout(r, 2000));
    } finally {
      watch.stop();
    }
    expect(watch.deleted).toEqual([]);
    expect((await leases()).find((l) => l.nodeName === "node-0")).toMatchObject({ subnet: node0.subnet, publicIP: node0.publicIP });
    expect(await Promise.all(members.map(overlayRoutes))).toEqual(routes);
    expect(await Promise.all([1, 2].map(peerViews))).toEqual(views);
    expect((await c.agentApi(0, "/readyz")).code).toBe(200);
  }, 90_000);

  it("removes no lease and no route when the lease server was down for longer than the TTL", async () => {
    const routes = await Promise.all(members.map(overlayRoutes));
    expect(routes.map((r) => r.length)).toEqual([2, 2, 2]); // one route per peer
    const watch = new RouteWatch(c, members);
    try {
      await c.stopServer("SIGTERM");
      const down = Date.now();
      // Down for twice the TTL: every lease expires meanwhile.
      await new Promise((r) => setTimeout(r, 2 * TTL_MS));
      for (const i of members) expect((await c.agentApi(i, "/readyz")).code).toBe(200);
      await c.startServer();
      const log = readFileSync(c.logPath("lease-server"), "utf8");
      expect(log).toMatch(/lease server was down for \d+s; 3 leases expired meanwhile and get a grace period until /);
      const downS = Number(/lease server was down for (\d+)s/.exec(log)![1]);
      expect(downS).toBeGreaterThanOrEqual(Math.floor((2 * TTL_MS) / 1000));
      expect(downS).toBeLessThan((Date.now() - down) / 1000 + 2);
      // Every agent renews within the grace (30 s), then a sweep after the grace removes nothing.
      await waitFor("every lease renewed", async () => {
        const ls = await leases();
        return ls.length === 3 && ls.every((l) => Date.parse(l.expiresAt!) > Date.now());
      }, 30_000, 500);
      await new Promise((r) => setTimeout(r, 32_000));
    } finally {
      watch.stop();
    }
    expect(watch.deleted).toEqual([]);
    expect((await leases()).map((l) => l.nodeName).sort()).toEqual(["node-0", "node-1", "node-2"]);
    expect(await Promise.all(members.map(overlayRoutes))).toEqual(routes);
    const serverLog = readFileSync(c.logPath("lease-server"), "utf8");
    expect(serverLog).not.toMatch(/"msg":"lease expired"/);
  }, 150_000);

  it("re-acquires a revoked lease only after the back-off, logging the reason", async () => {
    const node2 = (await leases()).find((l) => l.nodeName === "node-2")!;
    const path = `/v1/leases/${node2.subnet.replace("/", "-")}?reason=${encodeURIComponent("e2e: disk replaced")}`;
    const revokedAt = Date.now();
    const r = await sh("ip", ["netns", "exec", c.srv, "curl", "-s", "-m", "5", "-X", "DELETE", "-H", `Authorization: Bearer ${c.adminToken}`, "-w", "\n%{http_code}", `http://127.0.0.1:7601${path}`]);
    expect(r.stdout.trim().split("\n").pop()).toBe("200");
    await waitFor("agent 2 reports the revocation", async () => {
      const ready = await c.agentApi(2, "/readyz");
      return ready.code === 503 && ready.body.includes("was revoked: e2e: disk replaced");
    }, 10_000, 200);
    const log = () => readFileSync(c.logPath("node-2"), "utf8");
    await waitFor("the revocation logged at warn", async () => /"level":40.*"reason":"revoked: e2e: disk replaced".*the lease is acquired again in \d+s/.test(log()), 5000, 100);
    // 30 s ±20 %: nothing before 24 s.
    await new Promise((res) => setTimeout(res, 20_000));
    expect((await leases()).some((l) => l.nodeName === "node-2")).toBe(false);
    await waitFor("node-2 leased again", async () => (await leases()).some((l) => l.nodeName === "node-2"), 30_000, 250);
    const after = Date.now() - revokedAt;
    expect(after).toBeGreaterThanOrEqual(23_500);
    await waitFor("the re-acquire logged", async () => log().includes('"msg":"lease re-acquired"'), 5000, 100);
    await c.waitReady(2, 30_000);
    for (const i of [0, 1]) await c.waitPeers(i, 2, 30_000);
  }, 120_000);
});
