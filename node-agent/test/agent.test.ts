// The agent's lifecycle on a FakeDataplane and a scripted lease API: start-up
// order, renew timing and retries, re-acquire on NOT_FOUND, a data plane
// that stays put while the server is unreachable, and a lease server of
// another store refused.
import { mkdtempSync, readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { WeftError, isWeftError } from "../../lib/src/errors.js";
import type { Lease } from "../../lib/src/lease.js";
import { Agent, type AgentDeps } from "../src/agent.js";
import { loadAgentConfig, type AgentConfig } from "../src/config.js";
import type { FirewallOptions, RuleSet } from "../src/firewall/firewall.js";
import { FakeDataplane } from "./helpers/fake-dataplane.js";
import type { AcquireRequest, GrantedLease, LeaseApi, StatusReport, StatusStream, WatchMessage } from "../src/lease-client.js";
import { createAgentMetrics } from "../src/metrics.js";
import { network, peer, silentLog } from "./helpers/fixtures.js";

const TTL = 600;

/** One scripted WatchLeases stream: the test pushes messages (or an Error, which breaks the stream). */
class Feed {
  readonly q: Array<WatchMessage | Error> = [];
  wake: (() => void) | undefined;
  push(...m: Array<WatchMessage | Error>): this {
    this.q.push(...m);
    this.wake?.();
    return this;
  }
}

const initialFeed = () => new Feed().push({ kind: "snapshot", leases: [peer(2), peer(3)], resync: false }, { kind: "complete", revision: 3 });

class ScriptedApi implements LeaseApi {
  acquires: AcquireRequest[] = [];
  renews: number[] = [];
  /** Instance id of every renew, in order. */
  renewIds: (string | undefined)[] = [];
  /** State the granted TTL on replies (as a current server does); without it only expiresAt is sent. */
  grantTtl = false;
  /** Thrown by the next acquires. */
  acquireError: Error | undefined;
  renewScript: Array<"ok" | "unavailable" | "not_found" | "already_exists"> = [];
  renewDefault: "ok" | "unavailable" | "not_found" = "ok";
  /** --server addresses; as in LeaseClient, a SERVER_UNAVAILABLE (renew or watch) moves on to the next. */
  servers = ["198.18.0.254:7600"];
  current = 0;
  /** The server of every watch call, in order. */
  watchServers: string[] = [];
  get server() { return this.servers[this.current]!; }
  nextServer() { this.current = (this.current + 1) % this.servers.length; }
  ttl = TTL;
  /** fromRevision of every watch call, in order. */
  froms: number[] = [];
  storeIds: (string | undefined)[] = [];
  /** Streams handed out by the next watch calls; when empty, the initial snapshot of peers 2 and 3. */
  feeds: Feed[] = [];
  feed: Feed | undefined;
  mine(): GrantedLease {
    const l = { subnet: "10.244.1.0/24", nodeName: "node-1", publicIP: "198.18.0.1", attrs: this.acquires.at(-1)!.attrs, expiresAt: Date.now() + this.ttl, revision: 1 };
    return this.grantTtl ? { ...l, ttlMs: this.ttl, storeId: "" } : l;
  }
  async getNetworkConfig() { return network; }
  async acquire(r: AcquireRequest) {
    this.acquires.push(r);
    if (this.acquireError) throw this.acquireError;
    return this.mine();
  }
  async renew(_node: string, _subnet: string, instanceId?: string) {
    this.renews.push(Date.now());
    this.renewIds.push(instanceId);
    const step = this.renewScript.shift() ?? this.renewDefault;
    if (step === "unavailable") {
      this.nextServer();
      throw new WeftError("SERVER_UNAVAILABLE", "lease server down");
    }
    if (step === "not_found") throw new WeftError("LEASE_NOT_FOUND", "no such lease");
    if (step === "already_exists") throw new WeftError("ALREADY_EXISTS", "held by another agent instance");
    return this.mine();
  }
  async release() {}
  /** Every status report sent, in order. */
  reports: StatusReport[] = [];
  reportStatus(): StatusStream {
    return { send: (r) => this.reports.push(r), close: () => {}, done: new Promise(() => {}) };
  }
  async *watch(from: number, signal: AbortSignal, storeId?: string): AsyncIterable<WatchMessage> {
    this.froms.push(from);
    this.storeIds.push(storeId);
    this.watchServers.push(this.server);
    const feed = (this.feed = this.feeds.shift() ?? initialFeed());
    while (!signal.aborted) {
      const m = feed.q.shift();
      if (m instanceof Error) {
        if (isWeftError(m, "SERVER_UNAVAILABLE")) this.nextServer();
        throw m;
      }
      if (m) { yield m; continue; }
      await new Promise<void>((r) => { feed.wake = r; signal.addEventListener("abort", () => r(), { once: true }); });
      feed.wake = undefined;
    }
  }
  close() {}
}

/** Records what the agent asks of the host firewall (unit tests run in the root namespace: no real nft). */
class FakeFirewall implements RuleSet {
  opts: FirewallOptions | undefined;
  ensures = 0;
  checkError: Error | undefined;
  ensureError: Error | undefined;
  repaired: string[] = [];
  async check() { if (this.checkError) throw this.checkError; }
  async ensure() {
    this.ensures++;
    if (this.ensureError) throw this.ensureError;
    return this.repaired.splice(0);
  }
}

function setup(api: ScriptedApi, dp = new FakeDataplane(), dir = mkdtempSync(join(tmpdir(), "weft-agent-")), extra: string[] = [], over: Partial<AgentDeps> = {}) {
  if (!dp.links.has("eth0")) {
    dp.links.set("eth0", { index: 2, name: "eth0", mac: "0e:00:00:00:aa:01", mtu: 1500, up: true, kind: undefined });
    dp.addresses.push({ index: 2, ip: "198.18.0.1", prefix: 24 });
  }
  const config = loadAgentConfig(["--server", "198.18.0.254:7600", "--node-name", "node-1", "--iface", "eth0", "--insecure",
    "--subnet-file", join(dir, "run", "subnet.env"), "--state-dir", join(dir, "state"), "--resync-interval", "1s", ...extra]) as AgentConfig;
  const metrics = createAgentMetrics();
  const fw = new FakeFirewall();
  const agent = new Agent({ config, dataplane: dp, client: api, log: silentLog, metrics, firewall: (o) => { fw.opts = o; return fw; }, ...over });
  return { agent, dp, dir, config, metrics, fw };
}

const metricValue = async (m: ReturnType<typeof createAgentMetrics>, name: string, labels: Record<string, string> = {}) =>
  (await m.registry.getSingleMetric(name)!.get()).values.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))?.value;

async function until(what: string, fn: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const broken = () => new WeftError("SERVER_UNAVAILABLE", "stream broke");
const routeDsts = (dp: FakeDataplane) => [...dp.routeMap.keys()].sort();

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("Agent", () => {
  it("starts in Flannel's order, becomes ready and programs the peers", async () => {
    const api = new ScriptedApi();
    const { agent, dp, config } = setup(api);
    await agent.start();
    expect(readFileSync(config.subnetFile, "utf8")).toContain("FLANNEL_SUBNET=10.244.1.1/24");
    expect(dp.calls.indexOf("createLink weft.1")).toBeLessThan(dp.calls.indexOf("addAddress 10.244.1.0"));
    expect(api.acquires[0]).toMatchObject({ nodeName: "node-1", publicIP: "198.18.0.1", attrs: { type: "vxlan", vni: 1 } });
    await sleep(100);
    expect(agent.view().status()).toEqual({ ready: true, reasons: [] });
    expect((await agent.view().peers()).map((p) => p.programmed)).toEqual([true, true]);
    expect(dp.routeMap.size).toBe(2);
    await agent.stop();
    expect(dp.routeMap.size).toBe(2);
    expect(dp.links.has("weft.1")).toBe(true);
  });

  it("passes the previous subnet from subnet.env and keeps the VTEP MAC across a reboot (device gone)", async () => {
    const api = new ScriptedApi();
    const first = setup(api);
    await first.agent.start();
    await first.agent.stop();
    // A fresh dataplane: no device to adopt the MAC from, only the state dir.
    const rebooted = setup(api, new FakeDataplane(), first.dir);
    await rebooted.agent.start();
    expect(rebooted.dp.calls).toContain("createLink weft.1");
    expect(api.acquires[1]!.previousSubnet).toBe("10.244.1.0/24");
    expect(api.acquires[1]!.attrs).toEqual(api.acquires[0]!.attrs);
    expect(rebooted.dp.links.get("weft.1")!.mac).toBe((api.acquires[0]!.attrs as { vtepMac: string }).vtepMac);
    await rebooted.agent.stop();
  });

  it("becomes ready despite a rejected peer and shows it unprogrammed with the reason", async () => {
    const api = new ScriptedApi();
    api.feeds.push(new Feed().push({ kind: "snapshot", leases: [peer(2), peer(3, { attrs: { type: "vxlan", vni: 9, vtepMac: "0e:00:00:00:00:03" } })], resync: false }, { kind: "complete", revision: 3 }));
    const { agent, dp, metrics } = setup(api);
    await agent.start();
    await until("ready", () => agent.view().status().ready);
    expect((await agent.view().peers())).toEqual([
      { nodeName: "node-2", subnet: "10.244.2.0/24", publicIP: "198.18.0.2", programmed: true, state: "programmed", path: "vxlan" },
      { nodeName: "node-3", subnet: "10.244.3.0/24", publicIP: "198.18.0.3", programmed: false, state: "rejected", reason: "VNI 9, want 1" },
    ]);
    expect(routeDsts(dp)).toEqual(["10.244.2.0/24"]);
    expect(await metricValue(metrics, "weft_agent_ready")).toBe(1);
    expect(await metricValue(metrics, "weft_agent_peers_rejected", { reason: "invalid" })).toBe(1);
    await agent.stop();
  });

  it("backs off properly once the lease has expired instead of retrying every 250 ms", async () => {
    const api = new ScriptedApi();
    api.renewDefault = "unavailable";
    const { agent } = setup(api);
    await agent.start();
    await sleep(2500);
    await agent.stop();
    // TTL 600 ms: renew at ~300, retries at <=250 ms until ~600 (expiry), then 4 s+ apart. Without the
    // post-expiry backoff the agent kept retrying every 250 ms (about 9 attempts here).
    expect(api.renews.length).toBeGreaterThanOrEqual(2);
    expect(api.renews.length).toBeLessThanOrEqual(5);
  });

  it("renews at half the TTL, retries while the server is down without touching the kernel, re-acquires on NOT_FOUND", async () => {
    const api = new ScriptedApi();
    api.renewScript = ["unavailable", "unavailable", "not_found", "ok"];
    const { agent, dp } = setup(api);
    const t0 = Date.now();
    await agent.start();
    await sleep(100);
    const routes = [...dp.routeMap.values()];
    await sleep(1400);
    await agent.stop();
    expect(api.renews[0]! - t0).toBeGreaterThanOrEqual(TTL / 2 - 60);
    expect(api.renews[0]! - t0).toBeLessThan(TTL);
    // Retries come well before the lease would expire.
    expect(api.renews[1]! - api.renews[0]!).toBeLessThan(TTL / 2);
    expect(api.acquires.length).toBe(2);
    expect(api.acquires[1]!.previousSubnet).toBe("10.244.1.0/24");
    expect(api.renews.length).toBeGreaterThanOrEqual(4);
    expect([...dp.routeMap.values()]).toEqual(routes);
    expect(dp.calls.filter((c) => c.startsWith("delete") || c.startsWith("remove"))).toEqual([]);
    // The re-acquire publishes the start-up attributes; the device is not set up a second time.
    expect(api.acquires[1]!.attrs).toEqual(api.acquires[0]!.attrs);
    expect(dp.calls.filter((c) => c.startsWith("createLink"))).toEqual(["createLink weft.1"]);
  });
});

describe("Agent watch loop", () => {
  async function started(api = new ScriptedApi(), peers = 2) {
    const s = setup(api);
    await s.agent.start();
    await until("initial peers programmed", () => s.dp.routeMap.size === peers);
    return { ...s, api };
  }

  it("resumes from the last applied revision after the stream breaks", async () => {
    const api = new ScriptedApi();
    api.feeds.push(initialFeed(), new Feed());
    const { agent, dp } = await started(api);
    api.feed!.push({ kind: "events", events: [{ type: "added", lease: peer(4), revision: 5 }], revision: 5 });
    await until("peer 4 programmed", () => dp.routeMap.size === 3);
    api.feed!.push(broken());
    await until("second watch", () => api.froms.length === 2);
    expect(api.froms).toEqual([0, 5]);
    expect(routeDsts(dp)).toEqual(["10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24"]);
    await agent.stop();
  });

  it("resumes with the store id its revision belongs to", async () => {
    const api = new ScriptedApi();
    api.feeds.push(new Feed().push({ kind: "snapshot", leases: [peer(2)], resync: false }, { kind: "complete", revision: 3, storeId: "aaaaaaaaaaaa" }), new Feed());
    const { agent } = await started(api, 1);
    api.feed!.push({ kind: "progress", revision: 6, storeId: "aaaaaaaaaaaa" }, broken());
    await until("second watch", () => api.froms.length === 2);
    expect(api.froms).toEqual([0, 6]);
    expect(api.storeIds).toEqual(["", "aaaaaaaaaaaa"]);
    await agent.stop();
  });

  it("prunes on a resync snapshot only once SNAPSHOT_COMPLETE arrives", async () => {
    const api = new ScriptedApi();
    const resync = new Feed();
    api.feeds.push(initialFeed(), resync);
    const { agent, dp } = await started(api);
    api.feed!.push(broken());
    await until("second watch", () => api.froms.length === 2);
    resync.push({ kind: "snapshot", leases: [peer(2)], resync: true });
    await sleep(150);
    expect(routeDsts(dp)).toEqual(["10.244.2.0/24", "10.244.3.0/24"]);
    expect((await agent.view().peers()).length).toBe(2);
    resync.push({ kind: "complete", revision: 7 });
    await until("peer 3 pruned", () => dp.routeMap.size === 1);
    expect(routeDsts(dp)).toEqual(["10.244.2.0/24"]);
    await agent.stop();
  });

  it("keeps the old peers when a stream breaks mid-snapshot, and PROGRESS then does not advance the revision", async () => {
    const api = new ScriptedApi();
    const partial = new Feed();
    const third = new Feed();
    api.feeds.push(initialFeed(), partial, third);
    const { agent, dp } = await started(api);
    api.feed!.push(broken());
    await until("second watch", () => api.froms.length === 2);
    partial.push({ kind: "snapshot", leases: [peer(2)], resync: true }, { kind: "progress", revision: 9 }, broken());
    await until("third watch", () => api.froms.length === 3);
    expect(api.froms).toEqual([0, 3, 3]);
    await sleep(100);
    expect(routeDsts(dp)).toEqual(["10.244.2.0/24", "10.244.3.0/24"]);
    expect((await agent.view().peers()).map((p) => p.subnet)).toEqual(["10.244.2.0/24", "10.244.3.0/24"]);
    third.push({ kind: "snapshot", leases: [peer(3)], resync: true }, { kind: "complete", revision: 10 });
    await until("snapshot applied", () => dp.routeMap.size === 1);
    expect(routeDsts(dp)).toEqual(["10.244.3.0/24"]);
    await agent.stop();
  });

  it("skips events at or below the revision already applied", async () => {
    const { agent, dp, api } = await started();
    api.feed!.push({ kind: "events", events: [{ type: "removed", lease: peer(2), revision: 3 }], revision: 3 });
    await sleep(150);
    expect(dp.routeMap.size).toBe(2);
    api.feed!.push({ kind: "events", events: [{ type: "removed", lease: peer(2), revision: 4 }], revision: 4 });
    await until("peer 2 removed", () => dp.routeMap.size === 1);
    expect(routeDsts(dp)).toEqual(["10.244.3.0/24"]);
    await agent.stop();
  });

  it("renews (and re-acquires) at once when our own lease is REMOVED", async () => {
    const api = new ScriptedApi();
    api.ttl = 60_000; // the timer alone would renew only after 30 s
    api.renewScript = ["not_found"];
    const { agent } = await started(api);
    api.feed!.push({ kind: "events", events: [{ type: "removed", lease: api.mine(), revision: 4 }], revision: 4 });
    await until("renew and re-acquire", () => api.acquires.length === 2, 2000);
    expect(api.renews.length).toBe(1);
    expect(api.acquires[1]!.previousSubnet).toBe("10.244.1.0/24");
    await agent.stop();
  });

  it("starts over from revision 0 (a fresh snapshot) when the revision was compacted", async () => {
    const { agent, api } = await started();
    api.feed!.push({ kind: "events", events: [{ type: "added", lease: peer(4), revision: 5 }], revision: 5 });
    await sleep(50);
    api.feed!.push(new WeftError("REVISION_COMPACTED", "revision 5 compacted"));
    await until("second watch", () => api.froms.length === 2);
    expect(api.froms).toEqual([0, 0]);
    await agent.stop();
  });
});

describe("Agent status reports", () => {
  const last = (api: ScriptedApi) => api.reports.at(-1);
  it("reports the revision its kernel reflects, only once the peers of that revision are programmed", async () => {
    const api = new ScriptedApi();
    const { agent, dp, metrics } = setup(api);
    await agent.start();
    await until("a report of revision 3", () => last(api)?.appliedRevision === 3);
    expect(last(api)).toMatchObject({ nodeName: "node-1", healthy: true, problems: [], backend: "vxlan", peers: 2, subnet: "10.244.1.0/24" });
    expect(await metricValue(metrics, "weft_agent_applied_revision")).toBe(3);
    // A new peer whose route cannot be programmed: the feed moves on, the applied revision does not.
    dp.failing.add("putRoute");
    api.feed!.push({ kind: "events", events: [{ type: "added", lease: peer(4, { revision: 5 }), revision: 5 }], revision: 5 });
    await until("not healthy", () => last(api)?.healthy === false);
    expect(last(api)!.appliedRevision).toBe(3);
    expect(last(api)!.problems[0]).toMatch(/^dataplane: .*injected failure/);
    // Progress alone cannot advance what is not programmed either.
    api.feed!.push({ kind: "progress", revision: 6 });
    await sleep(50);
    expect(last(api)!.appliedRevision).toBe(3);
    dp.failing.clear();
    await until("revision 6 applied (a timer pass)", () => last(api)?.appliedRevision === 6 && last(api)!.healthy, 3000);
    expect(last(api)!.peers).toBe(3);
    // A change that touches no peer (our own lease renewed) is applied as soon as it arrives.
    api.feed!.push({ kind: "events", events: [{ type: "changed", lease: { ...peer(1), nodeName: "node-1", revision: 7 }, revision: 7 }], revision: 7 });
    await until("revision 7", () => last(api)?.appliedRevision === 7, 1000);
    await agent.stop();
  });

  it("sends no report while nothing changes (between heartbeats)", async () => {
    const api = new ScriptedApi();
    const { agent } = setup(api);
    await agent.start();
    await until("revision 3", () => last(api)?.appliedRevision === 3);
    await sleep(100);
    const n = api.reports.length;
    await sleep(200);
    expect(api.reports.length).toBe(n);
    await agent.stop();
  });
});

describe("Agent lease store", () => {
  const A = "10.0.0.1:7600";
  const B = "10.0.0.2:7600";
  const why = `lease server ${B} has store store-2, but this node's lease is in store store-1 (server ${A}): it is not the same lease database; fix --server or the servers' --store`;
  const ours = () => new Feed().push({ kind: "snapshot", leases: [peer(2), peer(3)], resync: false }, { kind: "complete", revision: 3, storeId: "store-1" });
  /** B: a server with a SQLite file of its own, answering our store id with a resync snapshot of its store. */
  const foreign = () => new Feed().push({ kind: "snapshot", leases: [peer(5)], resync: true }, { kind: "complete", revision: 40, storeId: "store-2" });
  const kernel = (dp: FakeDataplane) => ({ routes: [...dp.routeMap.values()], neighbours: [...dp.neighbourMap.values()], fdb: [...dp.fdbMap.values()] });

  /** Ready with its lease from A (store-1); then A's stream breaks, B answers for store-2, and the next watch (A again) stays silent. */
  async function mismatched(api = new ScriptedApi()) {
    api.servers = [A, B];
    const again = new Feed();
    api.feeds.push(ours(), foreign(), again);
    const s = setup(api);
    await s.agent.start();
    await until("ready", () => s.agent.view().status().ready);
    expect(await metricValue(s.metrics, "weft_agent_store_mismatch")).toBe(0);
    const before = kernel(s.dp);
    s.dp.calls.length = 0;
    api.feed!.push(broken());
    await until("store mismatch reported", () => !s.agent.view().status().ready);
    return { ...s, api, again, before };
  }

  it("refuses a watch answered by another store: says why, keeps peers and kernel as they are, acquires nothing", async () => {
    const api = new ScriptedApi();
    api.ttl = 60_000; // no renew in this test: the watch moves on by itself
    const { agent, dp, metrics, before } = await mismatched(api);
    expect(agent.view().status()).toEqual({ ready: false, reasons: [why] });
    expect(await metricValue(metrics, "weft_agent_store_mismatch")).toBe(1);
    // The watch moves on (back to A) after a pause and resumes from store-1's revision.
    await until("third watch", () => api.froms.length === 3, 5000);
    expect(api.watchServers).toEqual([A, B, A]);
    expect(api.froms).toEqual([0, 3, 3]);
    expect(api.storeIds).toEqual(["", "store-1", "store-1"]);
    await sleep(1200); // a timer pass too
    expect((await agent.view().peers()).map((p) => p.subnet)).toEqual(["10.244.2.0/24", "10.244.3.0/24"]);
    expect(kernel(dp)).toEqual(before);
    expect(dp.calls.filter((c) => !c.startsWith("list"))).toEqual([]);
    expect(api.acquires.length).toBe(1);
    expect(agent.view().status().reasons).toEqual([why]);
    await agent.stop();
  });

  it("follows the feed again, ready, once a server of its store answers", async () => {
    const { agent, api, dp, metrics, again } = await mismatched();
    await until("third watch", () => api.froms.length === 3, 5000);
    again.push({ kind: "progress", revision: 5, storeId: "store-1" });
    await until("ready again", () => agent.view().status().ready);
    expect(agent.view().status()).toEqual({ ready: true, reasons: [] });
    expect(await metricValue(metrics, "weft_agent_store_mismatch")).toBe(0);
    again.push({ kind: "events", events: [{ type: "added", lease: peer(4), revision: 6 }], revision: 6 });
    await until("peer 4 programmed", () => dp.routeMap.size === 3);
    expect(api.acquires.length).toBe(1);
    await agent.stop();
  });

  it("does not re-acquire on LEASE_NOT_FOUND while the store is mismatched; does once its store answers again", async () => {
    const { agent, api, again } = await mismatched();
    await until("client back on A", () => api.server === A);
    api.renewDefault = "not_found";
    const n = api.renews.length;
    await until("a renew answered LEASE_NOT_FOUND", () => api.renews.length > n, 5000);
    await sleep(300);
    expect(api.acquires.length).toBe(1);
    expect(agent.view().status().reasons).toEqual([why]);
    // The same answer from a server of our store, once the watch is back on it, is a lease that really expired.
    await until("third watch", () => api.froms.length === 3, 5000);
    again.push({ kind: "progress", revision: 5, storeId: "store-1" }, { kind: "events", events: [{ type: "removed", lease: api.mine(), revision: 6 }], revision: 6 });
    await until("re-acquired", () => api.acquires.length === 2, 5000);
    expect(api.acquires[1]!.previousSubnet).toBe("10.244.1.0/24");
    await agent.stop();
  });

  it("does not re-acquire on LEASE_NOT_FOUND from a server the watch has not seen: the watch goes there first", async () => {
    const api = new ScriptedApi();
    api.servers = [A, B];
    // The renew fails over from A to B, which knows no such lease; the watch stream on A is still open.
    api.renewScript = ["unavailable", "not_found"];
    api.feeds.push(ours(), foreign());
    const { agent, metrics } = setup(api);
    await agent.start();
    await until("watch moved to B and refused it", () => api.watchServers.length === 2 && agent.view().status().reasons.includes(why), 5000);
    expect(api.renews.length).toBe(2);
    expect(api.froms).toEqual([0, 3]);
    await sleep(300);
    expect(api.acquires.length).toBe(1);
    expect(await metricValue(metrics, "weft_agent_store_mismatch")).toBe(1);
    await agent.stop();
  });

  it("takes a compacted history (REVISION_COMPACTED) as the same store: a fresh snapshot of it, no mismatch", async () => {
    const api = new ScriptedApi();
    api.feeds.push(ours(), new Feed().push({ kind: "snapshot", leases: [peer(2)], resync: false }, { kind: "complete", revision: 50, storeId: "store-1" }));
    const { agent, dp, metrics } = setup(api);
    await agent.start();
    await until("ready", () => agent.view().status().ready);
    api.feed!.push(new WeftError("REVISION_COMPACTED", "revision 3 compacted"));
    await until("fresh snapshot applied", () => dp.routeMap.size === 1);
    expect(api.froms).toEqual([0, 0]);
    expect(api.storeIds).toEqual(["", "store-1"]);
    await until("ready", () => agent.view().status().ready);
    expect(await metricValue(metrics, "weft_agent_store_mismatch")).toBe(0);
    await agent.stop();
  });

  it("sends no renew to a server of another store", async () => {
    const api = new ScriptedApi();
    api.servers = [B];
    api.feeds.push(new Feed().push({ kind: "snapshot", leases: [peer(2)], resync: false }, { kind: "complete", revision: 3, storeId: "store-1" }), foreign(), new Feed(), new Feed());
    const { agent, metrics } = setup(api);
    await agent.start();
    await until("ready", () => agent.view().status().ready);
    const renewed = api.renews.length;
    api.feed!.push(broken());
    await until("store mismatch reported", () => !agent.view().status().ready);
    const n = api.renews.length;
    await sleep(1500); // TTL 600 ms: three renews or more otherwise
    expect(api.renews.length).toBe(n);
    expect(n - renewed).toBeLessThanOrEqual(1);
    expect(await metricValue(metrics, "weft_agent_lease_renewals_total", { result: "store_mismatch" })).toBeGreaterThanOrEqual(1);
    expect(api.acquires.length).toBe(1);
    await agent.stop();
  });
});

describe("Agent data plane health", () => {
  async function started(extra: string[] = [], dp = new FakeDataplane()) {
    const api = new ScriptedApi();
    const s = setup(api, dp, undefined, extra);
    await s.agent.start();
    await until("ready", () => s.agent.view().status().ready);
    return { ...s, api };
  }

  it("puts back what a kernel notification says was removed, without waiting for the timer", async () => {
    const { agent, dp, metrics } = await started(["--resync-interval", "1h"]);
    const route = dp.routeMap.get("10.244.2.0/24")!;
    dp.routeMap.delete(route.dst);
    const t0 = Date.now();
    dp.emit({ kind: "route", deleted: true, value: route, ours: true });
    await until("route back", () => dp.routeMap.has(route.dst), 1000);
    expect(Date.now() - t0).toBeLessThan(500);
    expect(await metricValue(metrics, "weft_agent_drift_repairs_total", { kind: "route" })).toBe(1);
    // Our own changes echo back as notifications; they start no pass.
    dp.calls.length = 0;
    dp.emit({ kind: "route", deleted: false, value: route, ours: true });
    await sleep(100);
    expect(dp.calls).toEqual([]);
    // The kernel drops routes via an address that goes away without announcing them: the address change starts a pass.
    dp.routeMap.delete(route.dst);
    dp.emit({ kind: "address", deleted: true, address: { index: 2, ip: "198.18.0.1", prefix: 24 } });
    await until("route back after the underlay's address changed", () => dp.routeMap.has(route.dst), 1000);
    await agent.stop();
  });

  it("repairs its device on a notification and after lost notifications", async () => {
    const { agent, dp, metrics } = await started(["--resync-interval", "1h"]);
    const dev = dp.links.get("weft.1")!;
    await dp.deleteLink(dev.index);
    dp.emit({ kind: "link", deleted: true, link: dev });
    await until("device and routes back", () => dp.links.has("weft.1") && dp.routeMap.size === 2, 1000);
    expect(dp.links.get("weft.1")!.mac).toBe(dev.mac);
    expect(await metricValue(metrics, "weft_agent_drift_repairs_total", { kind: "device" })).toBe(1);
    dp.addresses.splice(dp.addresses.findIndex((a) => a.ip === "10.244.1.0"), 1);
    dp.emit({ kind: "lost", why: "overflow" });
    await until("address back", () => dp.addresses.some((a) => a.ip === "10.244.1.0"), 1000);
    await agent.stop();
  });

  it("turns not ready, saying why, while the data plane cannot be programmed, and ready again after", async () => {
    const { agent, dp, metrics } = await started();
    dp.failing.add("putRoute");
    dp.routeMap.clear();
    dp.emit({ kind: "route", deleted: true, value: { dst: "10.244.2.0/24", gateway: "10.244.2.0", oif: dp.links.get("weft.1")!.index, onlink: true }, ours: true });
    await until("not ready", () => !agent.view().status().ready, 1000);
    expect(agent.view().status().reasons).toEqual([expect.stringMatching(/^dataplane: 2 of 2 peers not programmed \(2 failed operations\): putRoute .*injected failure/)]);
    expect((await agent.view().peers()).map((p) => p.state)).toEqual(["failed", "failed"]);
    expect((await agent.view().peers())[0]!.reason).toMatch(/injected failure/);
    expect(await metricValue(metrics, "weft_agent_ready")).toBe(0);
    expect(await metricValue(metrics, "weft_agent_peers_failed")).toBe(2);
    dp.failing.clear();
    await until("ready again (timer pass)", () => agent.view().status().ready, 3000);
    expect(await metricValue(metrics, "weft_agent_peers_failed")).toBe(0);
    await agent.stop();
  });

  it("removes weft devices of another backend at start-up, and leaves foreign ones", async () => {
    const dp = new FakeDataplane();
    dp.links.set("weft.9", { index: 40, name: "weft.9", mac: "0e:00:00:00:09:09", mtu: 1450, up: true, kind: "vxlan", alias: "weft:vxlan" });
    dp.links.set("flannel.1", { index: 41, name: "flannel.1", mac: "0e:00:00:00:09:0a", mtu: 1450, up: true, kind: "vxlan" });
    const { agent } = await started([], dp);
    expect([...dp.links.keys()].sort()).toEqual(["eth0", "flannel.1", "weft.1"]);
    await agent.stop();
  });

  it("installs the firewall rules before writing FLANNEL_IPMASQ=true, checks them on the timer, and reports a failure", async () => {
    const { agent, fw, config, metrics } = await started(["--ip-masq"]);
    expect(fw.opts).toMatchObject({ masquerade: true, forward: true, subnet: { prefix: 24 } });
    expect(readFileSync(config.subnetFile, "utf8")).toContain("FLANNEL_IPMASQ=true");
    const before = fw.ensures;
    await until("timer re-checks the rules", () => fw.ensures > before, 2500);
    fw.repaired = ["nftables"];
    await until("the timer pass reports a repair", () => fw.repaired.length === 0, 2500);
    expect(await metricValue(metrics, "weft_agent_drift_repairs_total", { kind: "nftables" })).toBe(1);
    fw.ensureError = new WeftError("DATAPLANE_OP_FAILED", "nft could not install table ip weft: boom");
    await until("not ready", () => !agent.view().status().ready, 2500);
    expect(agent.view().status().reasons).toEqual(["firewall: nft could not install table ip weft: boom"]);
    await agent.stop();
  });

  it("fails start-up with the fix when --ip-masq cannot be honoured, before writing subnet.env", async () => {
    const api = new ScriptedApi();
    const s = setup(api, undefined, undefined, ["--ip-masq"]);
    s.fw.checkError = new WeftError("CONFIG_INVALID", "--ip-masq needs the nft command");
    await expect(s.agent.start()).rejects.toThrow(/--ip-masq needs the nft command/);
    expect(() => readFileSync(s.config.subnetFile)).toThrow();
    await s.agent.stop();
  });
});

/** A logger whose JSON lines the test reads. */
function capturedLog() {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: "debug" }, { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
  return { log, lines };
}

describe("Agent lease integrity", () => {
  it("keeps a random instance id in its state dir (0600), sends it on every acquire and renew, and again after a restart", async () => {
    const api = new ScriptedApi();
    const first = setup(api);
    await first.agent.start();
    await until("a renew", () => api.renews.length > 0);
    await first.agent.stop();
    const path = join(first.dir, "state", "instance-id");
    const id = readFileSync(path, "utf8").trim();
    expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(api.acquires[0]!.instanceId).toBe(id);
    expect(api.renewIds[0]).toBe(id);
    const again = setup(api, new FakeDataplane(), first.dir);
    await again.agent.start();
    await again.agent.stop();
    expect(api.acquires[1]!.instanceId).toBe(id);
    // Another state dir is another instance.
    const other = setup(api);
    await other.agent.start();
    await other.agent.stop();
    expect(api.acquires[2]!.instanceId).not.toBe(id);
  });

  it("fails start-up at once on ALREADY_EXISTS (another instance holds the node name), with the server's message, programming nothing", async () => {
    const api = new ScriptedApi();
    const msg = `acquire lease (lease server 198.18.0.254:7600): node "node-1" already holds 10.244.1.0/24 from another agent instance (instance 0a1b2c..., expires 2026-11-29T06:00:00.000Z); not acquired: stop the other agent or give this node another --node-name`;
    api.acquireError = new WeftError("ALREADY_EXISTS", msg);
    const { agent, dp, fw } = setup(api);
    await expect(agent.start()).rejects.toMatchObject({ code: "ALREADY_EXISTS", message: msg });
    expect(api.acquires).toHaveLength(1);
    expect(dp.calls.filter((c) => /^(addAddress|replaceRoute|addRoute|replaceNeighbour|replaceFdb)/.test(c))).toEqual([]);
    expect(dp.routeMap.size).toBe(0);
    expect(fw.ensures).toBe(0);
    await agent.stop();
  });

  it("fails before touching the device when subnet.env names a lease another instance holds (a second agent on this host)", async () => {
    const api = new ScriptedApi();
    const first = setup(api);
    await first.agent.start();
    await first.agent.stop();
    // The same host and subnet.env, a fresh state dir: another instance.
    api.renewScript = ["already_exists"];
    api.acquireError = new WeftError("ALREADY_EXISTS", "node \"node-1\" already holds 10.244.1.0/24 from another agent instance");
    const dp = new FakeDataplane();
    const second = setup(api, dp, first.dir, ["--state-dir", join(first.dir, "state-2")]);
    await expect(second.agent.start()).rejects.toMatchObject({ code: "ALREADY_EXISTS" });
    expect(dp.calls.filter((c) => !/^(list|get|watch)/.test(c))).toEqual([]);
    expect(api.acquires).toHaveLength(1);
    await second.agent.stop();
  });

  it.each([["an hour behind", -3_600_000], ["an hour ahead", 3_600_000]])("renews on time from the granted TTL with a wall clock %s", async (_, skew) => {
    const api = new ScriptedApi();
    api.grantTtl = true;
    const clock = { now: () => Date.now() + skew, monotonic: () => performance.now() };
    const { agent } = setup(api, undefined, undefined, [], { clock });
    await agent.start();
    const started = Date.now();
    await sleep(1600);
    await agent.stop();
    // TTL 600 ms: a renewal every ~300 ms, never so late the lease lapses, never in a hurry.
    const at = [started, ...api.renews];
    const gaps = at.slice(1).map((t, i) => t - at[i]!);
    expect(api.renews.length).toBeGreaterThanOrEqual(4);
    expect(api.renews.length).toBeLessThanOrEqual(6);
    expect(Math.max(...gaps)).toBeLessThan(TTL);
    expect(Math.min(...gaps.slice(1))).toBeGreaterThanOrEqual(280);
    expect(agent.view().lease()?.subnet).toBe("10.244.1.0/24");
  });

  it("after a revocation logs the reason, reports not ready, keeps the data plane, and re-acquires only after the back-off", async () => {
    const api = new ScriptedApi();
    api.grantTtl = true;
    const { log, lines } = capturedLog();
    const { agent, dp } = setup(api, undefined, undefined, [], { log, revokeBackoff: { baseMs: 700, maxMs: 2000 } });
    await agent.start();
    await until("ready", () => agent.view().status().ready);
    const routes = routeDsts(dp);
    // The server answers NOT_FOUND from now until the re-acquire.
    api.renewDefault = "not_found";
    const revokedAt = Date.now();
    api.feed!.push({ kind: "events", revision: 10, events: [{ type: "removed", lease: { ...api.mine(), revision: 1 }, revision: 10, reason: "revoked: disk replaced" }] });
    await until("the revocation", () => !agent.view().status().ready);
    expect(agent.view().status().reasons).toEqual([expect.stringMatching(/^lease 10\.244\.1\.0\/24 was revoked: disk replaced; acquiring it again in \d+s$/)]);
    expect(lines.find((l) => l.level === 40 && l.reason === "revoked: disk replaced")).toMatchObject({ subnet: "10.244.1.0/24", revokes: 1 });
    await sleep(450);
    expect(api.acquires).toHaveLength(1); // 700 ms ±20 %: not before 560 ms
    api.renewDefault = "ok";
    await until("the re-acquire", () => api.acquires.length === 2, 3000);
    expect(Date.now() - revokedAt).toBeGreaterThanOrEqual(540);
    await until("ready again", () => agent.view().status().ready);
    expect(routeDsts(dp)).toEqual(routes);
    expect(api.acquires[1]).toMatchObject({ previousSubnet: "10.244.1.0/24", instanceId: api.acquires[0]!.instanceId });
    await agent.stop();
  });

  it("re-acquires at once when its lease merely expired", async () => {
    const api = new ScriptedApi();
    api.ttl = 60_000;
    const { agent } = setup(api);
    await agent.start();
    await until("watching", () => api.feed !== undefined);
    api.renewScript = ["not_found"];
    api.feed!.push({ kind: "events", revision: 10, events: [{ type: "removed", lease: { ...api.mine(), revision: 1 }, revision: 10, reason: "expired" }] });
    await until("the re-acquire", () => api.acquires.length === 2, 1000);
    await agent.stop();
  });

  it("renews at once when the server is back (a new watch stream), not at the end of its back-off", async () => {
    const api = new ScriptedApi();
    api.grantTtl = true;
    api.renewDefault = "unavailable";
    const { agent } = setup(api);
    await agent.start();
    // TTL 600 ms: the lease runs out at ~600 ms; the next retry after that is 2 s or more away.
    await sleep(1000);
    const okFrom = api.renews.length;
    api.renewDefault = "ok";
    const back = Date.now();
    api.feed!.push(broken());
    await until("a renew soon after the watch is back", () => api.renews.length > okFrom, 1200);
    expect(Date.now() - back).toBeLessThan(1200);
    await agent.stop();
  });

  it("warns why renewals fail at most every 30 s, and keeps the data plane and readiness", async () => {
    const api = new ScriptedApi();
    api.grantTtl = true;
    api.renewDefault = "unavailable";
    const { log, lines } = capturedLog();
    const { agent, dp } = setup(api, undefined, undefined, [], { log });
    await agent.start();
    await until("ready", () => agent.view().status().ready);
    const routes = routeDsts(dp);
    await sleep(1500);
    const warns = lines.filter((l) => l.level === 40 && String(l.msg).startsWith("lease renew failed"));
    expect(api.renews.length).toBeGreaterThanOrEqual(3);
    expect(warns).toHaveLength(1);
    expect(warns[0]).toMatchObject({ err: "lease server down", failures: 1 });
    expect(routeDsts(dp)).toEqual(routes);
    expect(agent.view().status().ready).toBe(true);
    await agent.stop();
  });
});

