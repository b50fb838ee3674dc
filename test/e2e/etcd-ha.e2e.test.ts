// Highly available lease servers end to end: etcd and two weft lease servers
// in the server namespace, agents given both (--server a,b). Killing the
// server the agents use (kill -9) changes nothing in the data plane: pods keep
// pinging, agents resume their watch on the other server from their revision
// (no new snapshot), and a new node joins through the survivor. A lease
// written by hand in Flannel's format (as flanneld writes it) is a VXLAN peer
// for every agent: the migration path from Flannel.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, ETCD_URL, type Pod } from "./cluster.js";
import { bridgeFdbJson, findBin, ipJson, kernelTestEnv, newRunId, nsExec, waitFor } from "./netns.js";
import { requireOrSkip } from "../tools.js";

const env = kernelTestEnv({ cni: true });
const etcdOk = env.ok && requireOrSkip([...(findBin("etcd") ? [] : ["etcd (apt-get install etcd-server)"]), ...(findBin("etcdctl") ? [] : ["etcdctl (apt-get install etcd-client)"])], "the etcd HA test");

function pingLoss(out: string): { sent: number; lost: number } {
  const m = /(\d+) packets transmitted, (\d+) received/.exec(out);
  if (!m) throw new Error(`no ping summary in: ${out.slice(-300)}`);
  return { sent: Number(m[1]), lost: Number(m[1]) - Number(m[2]) };
}

describe.skipIf(!etcdOk)("lease servers on etcd: failover and Flannel's layout (3+1 nodes, 2 servers)", () => {
  const c = new Cluster({ runId: newRunId(), nodes: 4, etcd: true, servers: 2, leaseTtl: "1h", resyncInterval: "2s" });
  const pods: Pod[] = [];
  const snapshots = (i: number) => readFileSync(c.logPath(c.nodes[i]!.name), "utf8").split("\n").filter((l) => l.includes('"lease snapshot complete"')).length;

  beforeAll(async () => {
    await Cluster.cleanupStale();
    await c.setup();
    await c.startServer();
    for (let i = 0; i < 3; i++) c.startAgent(i);
    for (let i = 0; i < 3; i++) await c.waitReady(i, 40_000);
    for (let i = 0; i < 3; i++) await c.waitPeers(i, 2);
    for (let i = 0; i < 3; i++) pods.push(await c.addPod(i, 0));
  }, 120_000);

  afterAll(async () => {
    await c.destroy();
  }, 60_000);

  it("keeps the data plane and every packet when the agents' lease server is killed with -9; they resume on the other without a snapshot", async () => {
    const before = [0, 1, 2].map(snapshots);
    const routes = await ipJson(c.nodes[0]!.ns, "route", "show", "proto", "87");
    const ping = new Promise<{ sent: number; lost: number }>((resolve, reject) => {
      const p = spawn("ip", ["netns", "exec", pods[0]!.ns, "ping", "-n", "-i", "0.1", "-c", "60", "-W", "2", pods[1]!.ip], { stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      p.stdout.on("data", (d) => (out += d));
      p.on("close", () => { try { resolve(pingLoss(out)); } catch (err) { reject(err); } });
    });
    await new Promise((r) => setTimeout(r, 1000));
    await c.stopServer("SIGKILL", 0);
    // Every agent's watch moves to the survivor and hears a change made there.
    const { stdout } = await nsExec(c.srv, "curl", "-s", "-XPOST", "-H", "content-type: application/json", "-H", `authorization: Bearer ${c.adminToken}`, "-d", '{"subnet":"10.244.200.0/24","nodeName":"reserved-node"}', "http://127.0.0.1:7611/v1/reservations");
    expect(stdout).toMatch(/10\.244\.200\.0\/24|reserved-node/);
    const loss = await ping;
    console.log(`lease server killed under a 10/s ping between pods: ${loss.sent} sent, ${loss.lost} lost`);
    expect(loss.lost).toBe(0);
    expect(await ipJson(c.nodes[0]!.ns, "route", "show", "proto", "87")).toEqual(routes);
    await waitFor("agents connected again", async () => {
      for (let i = 0; i < 3; i++) if (!/weft_agent_server_connected 1/.test((await c.agentApi(i, "/metrics")).body)) return false;
      return true;
    }, 30_000, 500);
    expect([0, 1, 2].map(snapshots)).toEqual(before);
    for (let i = 0; i < 3; i++) expect((await c.agentApi(i, "/readyz")).code).toBe(200);
  }, 90_000);

  it("lets a new node join through the surviving server", async () => {
    c.startAgent(3);
    await c.waitReady(3, 40_000);
    for (let i = 0; i < 4; i++) await c.waitPeers(i, 3, 30_000);
    pods.push(await c.addPod(3, 0));
    expect(await c.ping(pods[3]!, pods[0]!.ip, 2)).toBe(true);
    expect(await c.ping(pods[1]!, pods[3]!.ip, 2)).toBe(true);
  }, 90_000);

  it("treats a lease written by hand in Flannel's format as a VXLAN peer, with its MAC and address", async () => {
    const lease = '{"PublicIP":"198.18.0.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}';
    const { stdout: grant } = await nsExec(c.srv, "etcdctl", "--endpoints", ETCD_URL, "lease", "grant", "600");
    const id = /lease ([0-9a-f]+) granted/.exec(grant)![1]!;
    await nsExec(c.srv, "etcdctl", "--endpoints", ETCD_URL, "put", "--lease", id, "/weft/network/subnets/10.244.77.0-24", lease);
    await waitFor("flanneld's lease programmed on node 0", async () => {
      const peers = (await c.agentApi<Array<{ subnet: string; publicIP: string; state: string; nodeName: string }>>(0, "/v1/peers")).json;
      return peers.some((p) => p.subnet === "10.244.77.0/24" && p.publicIP === "198.18.0.77" && p.state === "programmed");
    }, 20_000, 200);
    const fdb = await bridgeFdbJson(c.nodes[0]!.ns, "weft.1");
    expect(fdb).toContainEqual(expect.objectContaining({ mac: "c6:d2:32:6f:8f:44", dst: "198.18.0.77" }));
    const neigh = await ipJson<Array<{ dst: string; lladdr: string }>>(c.nodes[0]!.ns, "neigh", "show", "dev", "weft.1");
    expect(neigh).toContainEqual(expect.objectContaining({ dst: "10.244.77.0", lladdr: "c6:d2:32:6f:8f:44" }));
    // And weft never hands that subnet out: its key is taken.
    await nsExec(c.srv, "etcdctl", "--endpoints", ETCD_URL, "lease", "revoke", id);
    await waitFor("flanneld's lease gone", async () => !(await c.agentApi<Array<{ subnet: string }>>(0, "/v1/peers")).json.some((p) => p.subnet === "10.244.77.0/24"), 20_000, 200);
  }, 60_000);
});
