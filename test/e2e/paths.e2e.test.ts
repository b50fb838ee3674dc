// Route-based paths, end to end, on two underlay segments joined by a router
// namespace: nodes 0 and 1 share 198.18.0.0/24, node 2 is on 198.18.1.0/24.
//   1. VXLAN with DirectRouting: 0<->1 use a plain route via the peer's
//      public IP, 0<->2 and 1<->2 go through the tunnel.
//   2. The network config switches to host-gw and the agents restart: no
//      VXLAN state is left, 0<->1 use host-gw routes, node 2 is reported as
//      not on the segment, a stale route of ours is pruned at start-up, drift
//      and an underlay flap are repaired.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, type Pod } from "./cluster.js";
import { bridgeFdbJson, ip, ipJson, kernelTestEnv, newRunId, sh, timeUntil, waitFor } from "./netns.js";

const env = kernelTestEnv({ cni: true, nft: true, iptables: true });

interface RouteJson { dst: string; gateway?: string; dev: string; flags?: string[] }
interface PeerJson { nodeName: string; subnet: string; programmed: boolean; state: string; path?: string; reason?: string }

describe.skipIf(!env.ok)("DirectRouting and host-gw across two underlay segments", () => {
  const c = new Cluster({ runId: newRunId(), nodes: 3, segments: [0, 0, 1], leaseTtl: "60s", resyncInterval: "2s", backend: { Type: "vxlan", DirectRouting: true } });
  const subnets: string[] = [];
  const pods: Pod[] = [];
  const routes = (i: number) => ipJson<RouteJson[]>(c.nodes[i]!.ns, "route", "show", "proto", "87");
  const devFor = async (i: number, to: string) => (await ipJson<Array<{ dev: string; gateway?: string }>>(c.nodes[i]!.ns, "route", "get", to))[0]!;
  const peers = async (i: number) => (await c.agentApi<PeerJson[]>(i, "/v1/peers")).json;
  const pingAll = async (pairs: Array<[number, number]>) => {
    const res = await Promise.all(pairs.map(async ([a, b]) => ({ a, b, ok: await c.ping(pods[a]!, pods[b]!.ip, 2) })));
    return res.filter((r) => !r.ok);
  };

  beforeAll(async () => {
    await Cluster.cleanupStale();
    await c.setup();
    await c.startServer();
    for (let i = 0; i < 3; i++) c.startAgent(i);
    for (let i = 0; i < 3; i++) await c.waitPeers(i, 2, 40_000);
    for (let i = 0; i < 3; i++) {
      subnets.push((await c.agentApi<{ subnet: string }>(i, "/v1/lease")).json.subnet);
      pods.push(await c.addPod(i, 0));
    }
  }, 120_000);

  afterAll(async () => {
    await c.destroy();
  }, 60_000);

  it("DirectRouting: peers on the same segment get a direct route, the others go through VXLAN", async () => {
    const r0 = await routes(0);
    expect(r0.find((r) => r.dst === subnets[1])).toMatchObject({ gateway: "198.18.0.2", dev: "eth0" });
    expect(r0.find((r) => r.dst === subnets[2])).toMatchObject({ gateway: subnets[2]!.split("/")[0], dev: "weft.1", flags: ["onlink"] });
    // Only the tunnelled peer has an FDB entry.
    const fdb = (await bridgeFdbJson(c.nodes[0]!.ns, "weft.1")).filter((f) => f.dst);
    expect(fdb.map((f) => f.dst)).toEqual(["198.18.1.3"]);
    expect(Object.fromEntries((await peers(0)).map((p) => [p.nodeName, p.path]))).toEqual({ "node-1": "direct", "node-2": "vxlan" });
    expect(Object.fromEntries((await peers(2)).map((p) => [p.nodeName, p.path]))).toEqual({ "node-0": "vxlan", "node-1": "vxlan" });
    expect((await devFor(0, pods[1]!.ip)).dev).toBe("eth0");
    expect((await devFor(0, pods[2]!.ip)).dev).toBe("weft.1");
    expect(await pingAll([[0, 1], [1, 0], [0, 2], [2, 0], [1, 2], [2, 1]])).toEqual([]);
  });

  it("switching the network to host-gw takes effect on restart and leaves no VXLAN state behind", async () => {
    for (let i = 0; i < 3; i++) await c.stopAgent(i);
    await c.stopServer();
    await c.startServer({ Type: "host-gw" });
    // A route of ours that no lease backs (left by a crash, say) must go at start-up.
    await ip("-n", c.nodes[0]!.ns, "route", "add", "10.244.250.0/24", "via", "198.18.0.9", "dev", "eth0", "proto", "87");
    for (let i = 0; i < 3; i++) c.startAgent(i);
    for (let i = 0; i < 3; i++) await c.waitReady(i, 40_000);
    await waitFor("node 0 programs node 1 over host-gw", async () => (await peers(0)).some((p) => p.nodeName === "node-1" && p.path === "host-gw"), 20_000, 200);
    for (let i = 0; i < 3; i++) {
      expect(await ipJson(c.nodes[i]!.ns, "link", "show", "type", "vxlan")).toEqual([]);
      expect(c.subnetEnv(i).FLANNEL_MTU).toBe("1500");
    }
    expect(await routes(0)).toEqual([expect.objectContaining({ dst: subnets[1], gateway: "198.18.0.2", dev: "eth0" })]);
    expect(await pingAll([[0, 1], [1, 0]])).toEqual([]);
  });

  it("reports a peer on another segment as not programmable, with the reason, in /v1/peers and a metric", async () => {
    const p0 = await peers(0);
    expect(p0.find((p) => p.nodeName === "node-2")).toMatchObject({
      programmed: false, state: "rejected", reason: expect.stringMatching(/public IP 198.18.1.3 is not on eth0's subnet 198.18.0.0\/24: host-gw needs every node on one L2 segment/),
    });
    expect((await c.agentApi(0, "/metrics")).body).toMatch(/^weft_agent_peers_rejected\{reason="not_on_segment"\} 1$/m);
    expect((await peers(2)).every((p) => p.state === "rejected")).toBe(true);
    // A rejected peer does not hold readiness back.
    expect((await c.agentApi(2, "/readyz")).code).toBe(200);
    const log = (await sh("cat", [c.logPath("node-0")])).stdout;
    expect(log).toMatch(/"reason":"not_on_segment".*"msg":"peer rejected; not programming it"/);
  });

  it("puts back a deleted host-gw route within 1 s", async () => {
    await ip("-n", c.nodes[0]!.ns, "route", "del", subnets[1]!);
    const ms = await timeUntil("host-gw route back", async () => (await routes(0)).some((r) => r.dst === subnets[1]), 5000);
    console.log(`host-gw route repaired in ${ms} ms`);
    expect(ms).toBeLessThan(1000);
  });

  it("is not ready while the underlay is down (it says why), and repairs its routes when it comes back", async () => {
    const ns = c.nodes[0]!.ns;
    await ip("-n", ns, "link", "set", "eth0", "down");
    await waitFor("not ready", async () => (await c.agentApi(0, "/readyz")).code === 503, 10_000, 100);
    expect((await c.agentApi(0, "/readyz")).body).toMatch(/^not ready: dataplane: 1 of 1 peers not programmed .*ENETUNREACH/);
    expect((await peers(0)).find((p) => p.nodeName === "node-1")).toMatchObject({ state: "failed", reason: expect.stringMatching(/ENETUNREACH/) });
    await ip("-n", ns, "link", "set", "eth0", "up");
    const ms = await timeUntil("route back after the flap", async () => (await routes(0)).some((r) => r.dst === subnets[1]), 5000);
    console.log(`host-gw route back ${ms} ms after the underlay came up`);
    expect(ms).toBeLessThan(1000);
    await c.waitReady(0, 10_000);
    await waitFor("pods reach each other again", async () => c.ping(pods[0]!, pods[1]!.ip), 10_000, 200);
  });
});
