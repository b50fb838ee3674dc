// The VXLAN overlay end to end: a lease server and three agent processes in
// their own namespaces on a bridged underlay, pods wired by the real CNI
// bridge/host-local plugins, traffic checked with ping.
import { spawn } from "node:child_process";
import { statSync } from "node:fs";
import { dirname } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, type Pod } from "./cluster.js";
import { bridgeFdbJson, ipJson, kernelTestEnv, newRunId, sh, waitFor } from "./netns.js";

const env = kernelTestEnv({ cni: true });
const NODES = 3;

interface RouteJson { dst: string; gateway?: string; dev: string; protocol?: string; flags?: string[] }

describe.skipIf(!env.ok)("weft overlay (VXLAN, 3 nodes in namespaces)", () => {
  // A long TTL: a slow agent restart must not let its lease lapse (expiry has its own short-TTL cluster below).
  const c = new Cluster({ runId: newRunId(), nodes: NODES, leaseTtl: "20s", resyncInterval: "1s" });
  const pods: Pod[] = [];
  const subnets: string[] = [];

  const ourRoutes = (node: number) => ipJson<RouteJson[]>(c.nodes[node]!.ns, "route", "show", "proto", "87");

  beforeAll(async () => {
    await Cluster.cleanupStale();
    await c.setup();
    await c.startServer();
    for (let i = 0; i < NODES; i++) c.startAgent(i);
    for (let i = 0; i < NODES; i++) await c.waitReady(i, 40_000);
    for (let i = 0; i < NODES; i++) await c.waitPeers(i, NODES - 1);
    for (let i = 0; i < NODES; i++) {
      subnets.push((await c.agentApi<{ subnet: string }>(i, "/v1/lease")).json.subnet);
      for (let j = 0; j < 2; j++) pods.push(await c.addPod(i, j));
    }
  }, 120_000);

  afterAll(async () => {
    await c.destroy();
  }, 60_000);

  it("writes subnet.env in Flannel's format, atomically placed with modes 0755/0644", () => {
    for (let i = 0; i < NODES; i++) {
      const e = c.subnetEnv(i);
      const [net] = subnets[i]!.split("/");
      const o = net!.split(".").map(Number);
      expect(e).toEqual({
        FLANNEL_NETWORK: "10.244.0.0/16", FLANNEL_SUBNET: `${o[0]}.${o[1]}.${o[2]}.${o[3]! + 1}/24`, FLANNEL_MTU: "1450", FLANNEL_IPMASQ: "false",
      });
      expect(statSync(c.nodes[i]!.subnetFile).mode & 0o777).toBe(0o644);
      expect(statSync(dirname(c.nodes[i]!.subnetFile)).mode & 0o777).toBe(0o755);
    }
    expect(new Set(subnets).size).toBe(NODES);
  });

  it("programs route, ARP and FDB entries for every peer, as Flannel does", async () => {
    const [dev] = await ipJson<Array<{ address: string; mtu: number; linkinfo: { info_data: Record<string, unknown> } }>>(c.nodes[1]!.ns, "-d", "link", "show", "weft.1");
    expect(dev!.mtu).toBe(1450);
    expect(dev!.linkinfo.info_data).toMatchObject({ id: 1, local: "198.18.0.2", port: 8472, learning: false });
    const routes = await ourRoutes(0);
    expect(routes.map((r) => r.dst).sort()).toEqual([subnets[1], subnets[2]].sort());
    for (const r of routes) {
      expect(r.gateway).toBe(r.dst.split("/")[0]);
      expect(r.dev).toBe("weft.1");
      expect(r.flags).toContain("onlink");
    }
    const neigh = await ipJson<Array<{ dst: string; lladdr: string; state: string[] }>>(c.nodes[0]!.ns, "neigh", "show", "dev", "weft.1");
    expect(neigh.find((n) => n.dst === subnets[1]!.split("/")[0])).toMatchObject({ lladdr: dev!.address, state: ["PERMANENT"] });
    const fdb = await bridgeFdbJson(c.nodes[0]!.ns, "weft.1");
    expect(fdb.find((f) => f.mac === dev!.address)).toMatchObject({ dst: "198.18.0.2", state: "permanent" });
    const [addr] = await ipJson<Array<{ addr_info: Array<{ local: string; prefixlen: number }> }>>(c.nodes[0]!.ns, "-4", "addr", "show", "dev", "weft.1");
    expect(addr!.addr_info).toEqual([expect.objectContaining({ local: subnets[0]!.split("/")[0], prefixlen: 32 })]);
  });

  it("every pod reaches every pod on the other nodes", async () => {
    const pairs = pods.flatMap((a) => pods.filter((b) => b.node !== a.node).map((b) => [a, b] as const));
    const results = await Promise.all(pairs.map(async ([a, b]) => ({ from: a.ns, to: b.ip, ok: await c.ping(a, b.ip, 2) })));
    expect(results.filter((r) => !r.ok)).toEqual([]);
    expect(results.length).toBe(NODES * 2 * (NODES - 1) * 2);
  });

  it("serves lease, peers and metrics on the local API", async () => {
    const lease = await c.agentApi<Record<string, string>>(0, "/v1/lease");
    expect(lease.json).toMatchObject({ subnet: subnets[0], publicIP: "198.18.0.1", backendType: "vxlan" });
    expect(Date.parse(lease.json.expiresAt!)).toBeGreaterThan(Date.now());
    const peers = await c.agentApi<Array<Record<string, unknown>>>(0, "/v1/peers");
    expect(peers.json.map((p) => p.nodeName).sort()).toEqual(["node-1", "node-2"]);
    expect(peers.json.every((p) => p.programmed === true)).toBe(true);
    const m = await c.agentApi(0, "/metrics");
    expect(m.body).toMatch(/^weft_agent_peers 2$/m);
    expect(m.body).toMatch(/^weft_agent_server_connected 1$/m);
    expect(m.body).toMatch(/^weft_agent_reconcile_duration_seconds_count [1-9]/m);
    expect(m.body).toMatch(/^weft_agent_lease_expiry_timestamp_seconds \d/m);
    expect(m.body).toMatch(/weft_agent_reconcile_errors_total/);
  });

  it("the lease server sees every node converged, and measured how long each change took to reach all of them", async () => {
    type Nodes = { revision: number; agents: Record<string, number>; nodes: { nodeName: string; state: string; appliedRevision: number; peers: number; healthy: boolean; subnet: string }[] };
    // Renewals keep changing the revision; wait for a moment when all three have applied the newest one.
    const nodes = await waitFor("all nodes converged", async () => {
      const r = await c.serverApi<Nodes>("/v1/nodes");
      return r.json?.agents.converged === NODES && r.json;
    }, 15_000, 100);
    expect(nodes.agents).toEqual({ converged: NODES, lagging: 0, unhealthy: 0, disconnected: 0 });
    for (const n of nodes.nodes) expect(n).toMatchObject({ state: "converged", appliedRevision: nodes.revision, peers: NODES - 1, healthy: true });
    expect(nodes.nodes.map((n) => n.subnet).sort()).toEqual([...subnets].sort());
    // Agents that start together may all join before any of them reports (nothing to measure then); the
    // renewals (every 10 s with this TTL) are changes every connected agent applies.
    const m = await waitFor("a convergence observed", async () => {
      const body = (await c.serverApi("/metrics")).body;
      return Number(/^weft_lease_server_convergence_seconds_count (\d+)/m.exec(body)?.[1]) > 0 && body;
    }, 25_000, 250);
    const count = Number(/^weft_lease_server_convergence_seconds_count (\d+)/m.exec(m)?.[1]);
    const sum = Number(/^weft_lease_server_convergence_seconds_sum ([\d.e-]+)/m.exec(m)?.[1]);
    // Three agents on one host apply a change within a few reconcile passes.
    expect(sum / count).toBeLessThan(2);
    expect((await c.agentApi(0, "/metrics")).body).toMatch(/^weft_agent_applied_revision [1-9]/m);
  });

  it("restarts an agent without touching routes or dropping a packet", async () => {
    const ns = c.nodes[0]!.ns;
    const before = { mac: (await ipJson<Array<{ address: string; ifindex: number }>>(ns, "link", "show", "weft.1"))[0]!, routes: await ourRoutes(0) };
    const monitor = spawn("ip", ["-n", ns, "monitor", "route", "nexthop", "neigh"], { stdio: ["ignore", "pipe", "ignore"] });
    let monitorOut = "";
    monitor.stdout.on("data", (d) => (monitorOut += d));
    // 120 pings at 50 ms span the whole restart.
    const ping = sh("ip", ["netns", "exec", pods[0]!.ns, "ping", "-c", "120", "-i", "0.05", "-W", "1", pods[2]!.ip], { allowFail: true, timeoutMs: 30_000 });
    await new Promise((r) => setTimeout(r, 500));
    expect(await c.stopAgent(0, "SIGTERM")).toBe(0);
    c.startAgent(0);
    await c.waitReady(0, 30_000);
    const out = (await ping).stdout;
    monitor.kill();
    expect(out).toMatch(/120 packets transmitted, 120 received, 0% packet loss/);
    const after = { mac: (await ipJson<Array<{ address: string; ifindex: number }>>(ns, "link", "show", "weft.1"))[0]!, routes: await ourRoutes(0) };
    expect(after.mac).toEqual(before.mac);
    expect(after.routes).toEqual(before.routes);
    expect((await c.agentApi<{ subnet: string }>(0, "/v1/lease")).json.subnet).toBe(subnets[0]);
    // Not a single route, nexthop or neighbour change for the peers (added, replaced or deleted) during the restart.
    const peerPrefixes = [subnets[1]!, subnets[2]!].map((s) => s.split(".").slice(0, 3).join(".") + ".");
    // (IPv6 link-local/multicast routes on the device are the kernel's own churn, not the agent's.)
    const ours = (l: string) => (l.includes("weft.1") && !/\b(fe80|ff0[0-9a-f]):/.test(l)) || peerPrefixes.some((p) => l.includes(p));
    expect(monitorOut.split("\n").filter(ours).join("\n")).toBe("");
  }, 60_000);

  it("keeps the data plane while the lease server is down, then reconnects", async () => {
    const routesBefore = await ourRoutes(1);
    await c.stopServer("SIGTERM");
    await waitFor("agent sees the server gone", async () => /^weft_agent_server_connected 0$/m.test((await c.agentApi(1, "/metrics")).body), 15_000);
    expect(await c.ping(pods[2]!, pods[4]!.ip)).toBe(true);
    expect(await ourRoutes(1)).toEqual(routesBefore);
    await c.startServer();
    await waitFor("agent reconnected", async () => /^weft_agent_server_connected 1$/m.test((await c.agentApi(1, "/metrics")).body), 20_000);
    for (let i = 0; i < NODES; i++) await c.waitPeers(i, NODES - 1);
    expect(await ourRoutes(1)).toEqual(routesBefore);
  }, 60_000);
});

describe.skipIf(!env.ok)("weft overlay: lease expiry (2 nodes, short TTL)", () => {
  const c = new Cluster({ runId: newRunId(), nodes: 2, leaseTtl: "5s", resyncInterval: "1s" });
  const ourRoutes = (node: number) => ipJson<RouteJson[]>(c.nodes[node]!.ns, "route", "show", "proto", "87");

  beforeAll(async () => {
    await Cluster.cleanupStale();
    await c.setup();
    await c.startServer();
    for (let i = 0; i < 2; i++) c.startAgent(i);
    for (let i = 0; i < 2; i++) await c.waitPeers(i, 1, 40_000);
  }, 90_000);

  afterAll(async () => {
    await c.destroy();
  }, 60_000);

  it("removes a stopped node's route, ARP and FDB entries from the others once its lease expires", async () => {
    const gone = (await c.agentApi<{ subnet: string }>(1, "/v1/lease")).json.subnet;
    const gw = gone.split("/")[0]!;
    const neigh = () => ipJson<Array<{ dst: string }>>(c.nodes[0]!.ns, "neigh", "show", "dev", "weft.1");
    expect((await neigh()).some((n) => n.dst === gw)).toBe(true);
    await c.stopAgent(1, "SIGKILL");
    await waitFor("node 1's route gone from node 0", async () => !(await ourRoutes(0)).some((r) => r.dst === gone), 20_000, 250);
    await waitFor("node 1's ARP and FDB entries gone from node 0", async () =>
      !(await neigh()).some((n) => n.dst === gw) && !(await bridgeFdbJson(c.nodes[0]!.ns, "weft.1")).some((f) => f.dst === "198.18.0.2"), 5000, 250);
    await c.waitPeers(0, 0);
  }, 40_000);
});
