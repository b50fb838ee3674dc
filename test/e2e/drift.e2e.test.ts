// Self-healing, end to end: two VXLAN nodes with --ip-masq; every kind of
// kernel drift is made by hand in node 0's namespace and must be undone by
// the agent (kernel objects within 1 s, from rtnetlink notifications; the
// firewall rules within the resync interval). The timer is 3 s, so a repair
// under 1 s can only come from a notification. Then: a device of weft's name
// that weft did not create is refused and left alone, and --cleanup removes
// everything weft made.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, ROOT, shebangNodeFlags, type Pod } from "./cluster.js";
import { nexthopIdFor } from "../../node-agent/src/dataplane/nexthop-id.js";
import { bridgeFdbJson, ip, ipJson, kernelTestEnv, newRunId, sh, timeUntil, waitFor } from "./netns.js";

const env = kernelTestEnv({ cni: true, nft: true, iptables: true });
const REPAIR_MS = 1000;

interface RouteJson { dst: string; gateway?: string; dev: string; protocol?: string; flags?: string[] }
interface LinkJson { ifindex: number; address: string; mtu: number; flags: string[]; ifalias?: string }

describe.skipIf(!env.ok)("drift repair (2 VXLAN nodes, --ip-masq)", () => {
  const c = new Cluster({ runId: newRunId(), nodes: 3, leaseTtl: "30s", resyncInterval: "3s" });
  const times: Record<string, number> = {};
  let ns = "";
  let peerSubnet = "";
  let peerGw = "";
  let peerMac = "";
  const pods: Pod[] = [];

  const routes = () => ipJson<RouteJson[]>(ns, "route", "show", "proto", "87");
  const link = async () => (await ipJson<LinkJson[]>(ns, "link", "show", "weft.1").catch(() => []))[0];
  const neigh = () => ipJson<Array<{ dst: string; lladdr?: string; state?: string[] }>>(ns, "neigh", "show", "dev", "weft.1").catch(() => []);
  const routeBack = async () => (await routes()).some((r) => r.dst === peerSubnet && r.dev === "weft.1");
  const neighBack = async () => (await neigh()).some((n) => n.dst === peerGw && n.lladdr === peerMac && n.state?.includes("PERMANENT"));
  const fdbBack = async () => (await bridgeFdbJson(ns, "weft.1").catch(() => [])).some((f) => f.mac === peerMac && f.dst === "198.18.0.2");
  // The peer's MAC leads to its address and nowhere else (a replaced destination is drift too).
  const fdbOnly = async () => (await bridgeFdbJson(ns, "weft.1").catch(() => [])).filter((f) => f.mac === peerMac).map((f) => f.dst).join() === "198.18.0.2";
  const nftTable = async () => (await sh("ip", ["netns", "exec", ns, "nft", "list", "table", "ip", "weft"], { allowFail: true })).stdout;
  const iptablesRules = async (n = ns) => (await sh("ip", ["netns", "exec", n, "iptables", "-S", "FORWARD"])).stdout.split("\n").filter((l) => l.includes("weft: cluster traffic"));

  beforeAll(async () => {
    await Cluster.cleanupStale();
    await c.setup();
    await c.startServer();
    for (const i of [0, 1]) c.startAgent(i, ["--ip-masq"]);
    for (const i of [0, 1]) await c.waitPeers(i, 1, 40_000);
    ns = c.nodes[0]!.ns;
    peerSubnet = (await c.agentApi<{ subnet: string }>(1, "/v1/lease")).json.subnet;
    peerGw = peerSubnet.split("/")[0]!;
    peerMac = (await ipJson<LinkJson[]>(c.nodes[1]!.ns, "link", "show", "weft.1"))[0]!.address;
    pods.push(await c.addPod(0, 0), await c.addPod(1, 0));
    expect(await c.ping(pods[0]!, pods[1]!.ip)).toBe(true);
  }, 120_000);

  afterAll(async () => {
    console.log(`drift repair times (ms): ${JSON.stringify(times)}`);
    await c.destroy();
  }, 60_000);

  it("marks its device as weft's", async () => {
    expect((await link())!.ifalias).toBe("weft:vxlan");
  });

  it.each([
    ["route", () => ip("-n", ns, "route", "del", peerSubnet), routeBack],
    // The kernel announces no route deletion with it: only the nexthop's own deletion tells.
    ["nexthop", () => ip("-n", ns, "nexthop", "del", "id", String(nexthopIdFor(peerSubnet))), routeBack],
    ["neighbour", () => ip("-n", ns, "neigh", "del", peerGw, "dev", "weft.1"), neighBack],
    ["neighbour-changed", () => ip("-n", ns, "neigh", "replace", peerGw, "lladdr", "0e:de:ad:be:ef:01", "dev", "weft.1", "nud", "permanent"), neighBack],
    ["fdb", () => sh("ip", ["netns", "exec", ns, "bridge", "fdb", "del", peerMac, "dev", "weft.1", "dst", "198.18.0.2", "self"]), fdbBack],
    ["fdb-changed", () => sh("ip", ["netns", "exec", ns, "bridge", "fdb", "replace", peerMac, "dev", "weft.1", "dst", "198.18.0.77", "self", "permanent"]), fdbOnly],
  ] as const)("puts back a %s within 1 s", async (kind, drift, back) => {
    await drift();
    times[kind] = await timeUntil(`${kind} restored`, back, 5000);
    expect(times[kind]).toBeLessThan(REPAIR_MS);
  });

  it("puts back the device's address, MTU and state within 1 s", async () => {
    const sub = (await c.agentApi<{ subnet: string }>(0, "/v1/lease")).json.subnet.split("/")[0]!;
    await ip("-n", ns, "addr", "del", `${sub}/32`, "dev", "weft.1");
    times.address = await timeUntil("address restored", async () =>
      (await ipJson<Array<{ addr_info: Array<{ local: string }> }>>(ns, "-4", "addr", "show", "dev", "weft.1"))[0]?.addr_info.some((a) => a.local === sub) ?? false);
    await ip("-n", ns, "link", "set", "weft.1", "mtu", "1300");
    times.mtu = await timeUntil("MTU restored", async () => (await link())?.mtu === 1450);
    await ip("-n", ns, "link", "set", "weft.1", "down");
    times.down = await timeUntil("device up again", async () => (await link())?.flags.includes("UP") ?? false);
    for (const k of ["address", "mtu", "down"]) expect(times[k]).toBeLessThan(REPAIR_MS);
    expect(await c.ping(pods[0]!, pods[1]!.ip)).toBe(true);
  });

  it("recreates a deleted device with the same MAC and its peers within 1 s", async () => {
    const before = (await link())!;
    await ip("-n", ns, "link", "del", "weft.1");
    times.device = await timeUntil("device, route, ARP and FDB back", async () => (await routeBack()) && (await neighBack()) && (await fdbBack()));
    expect(times.device).toBeLessThan(REPAIR_MS);
    const after = (await link())!;
    expect(after.address).toBe(before.address);
    expect(after.ifindex).not.toBe(before.ifindex);
    await waitFor("pods reach each other again", async () => c.ping(pods[0]!, pods[1]!.ip), 5000);
    const m = (await c.agentApi(0, "/metrics")).body;
    expect(m).toMatch(/^weft_agent_drift_repairs_total\{kind="device"\} [1-9]/m);
    expect(m).toMatch(/^weft_agent_drift_repairs_total\{kind="route"\} [1-9]/m);
  });

  it("survives the underlay going down and up", async () => {
    await ip("-n", ns, "link", "set", "eth0", "down");
    await new Promise((r) => setTimeout(r, 500));
    await ip("-n", ns, "link", "set", "eth0", "up");
    times.underlayFlap = await timeUntil("pods reach each other after the flap", async () => c.ping(pods[0]!, pods[1]!.ip), 10_000, 50);
    await c.waitReady(0, 10_000);
  });

  it("puts back a deleted or flushed nftables table, and the iptables forward rules, within the resync interval", async () => {
    const want = await nftTable();
    expect(want).toContain("masquerade fully-random");
    await sh("ip", ["netns", "exec", ns, "nft", "delete", "table", "ip", "weft"]);
    times.nftDeleted = await timeUntil("table back", async () => (await nftTable()) === want, 8000, 50);
    await sh("ip", ["netns", "exec", ns, "nft", "flush", "chain", "ip", "weft", "postrouting"]);
    times.nftFlushed = await timeUntil("chain refilled", async () => (await nftTable()) === want, 8000, 50);
    expect((await iptablesRules()).length).toBe(2);
    await sh("ip", ["netns", "exec", ns, "iptables", "-D", ...(await iptablesRules())[0]!.replace(/^-A /, "").match(/"[^"]*"|\S+/g)!.map((w) => w.replace(/"/g, ""))]);
    times.iptables = await timeUntil("forward rule back", async () => (await iptablesRules()).length === 2, 8000, 50);
    for (const k of ["nftDeleted", "nftFlushed", "iptables"]) expect(times[k]).toBeLessThan(3000 + 1000);
    expect((await c.agentApi(0, "/metrics")).body).toMatch(/^weft_agent_drift_repairs_total\{kind="nftables"\} 2$/m);
  });

  it("refuses a device of its name that weft did not create (flanneld's flannel.1), and leaves it and its FDB alone", async () => {
    const n2 = c.nodes[2]!.ns;
    await ip("-n", n2, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", "198.18.0.3", "dev", "eth0", "dstport", "8472", "nolearning");
    await ip("-n", n2, "link", "set", "flannel.1", "up");
    await sh("ip", ["netns", "exec", n2, "bridge", "fdb", "append", "0e:f1:00:00:00:09", "dev", "flannel.1", "dst", "198.18.0.9", "self", "permanent"]);
    const agent = c.startAgent(2, ["--vxlan-device", "flannel.1"]);
    const code = await new Promise<number | null>((r) => agent.once("exit", r));
    expect(code).toBe(1);
    const log = (await sh("cat", [c.logPath("node-2")])).stdout;
    expect(log).toMatch(/interface flannel.1 exists but was not created by weft.*will not adopt, change or delete it/);
    expect((await bridgeFdbJson(n2, "flannel.1")).some((f) => f.mac === "0e:f1:00:00:00:09" && f.dst === "198.18.0.9")).toBe(true);
    expect((await ipJson<LinkJson[]>(n2, "link", "show", "flannel.1"))[0]!.ifalias).toBeUndefined();
    const leases = (await c.curl(c.srv, "http://127.0.0.1:7601/v1/leases")).body;
    expect(leases).not.toContain("node-2");
  });

  it("--cleanup removes every device, route and rule weft made, and nothing else", async () => {
    await c.stopAgent(0);
    const bin = join(ROOT, "bin/weft-agent");
    expect(existsSync(bin)).toBe(true);
    const cleanup = () => sh("ip", ["netns", "exec", ns, process.execPath, ...shebangNodeFlags(bin), bin, "--cleanup"], { allowFail: true });
    const r = await cleanup();
    expect(r.code).toBe(0);
    expect(await ipJson(ns, "link", "show", "type", "vxlan")).toEqual([]);
    expect(await routes()).toEqual([]);
    expect(await ipJson(ns, "nexthop", "show")).toEqual([]);
    expect(await nftTable()).toBe("");
    expect(await iptablesRules()).toEqual([]);
    // Not ours: the underlay, its address and the pods' bridge stay.
    expect((await ipJson<Array<{ addr_info: Array<{ local: string }> }>>(ns, "-4", "addr", "show", "dev", "eth0"))[0]!.addr_info[0]!.local).toBe("198.18.0.1");
    expect((await ipJson(ns, "link", "show", "cni0")).length).toBe(1);
    expect((await cleanup()).code).toBe(0);
  });
});
