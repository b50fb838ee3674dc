// Several bin/weft-lease-server processes on one real etcd: one system. One
// store id and one revision sequence, every change streamed by every server,
// concurrent acquisitions spread over both never share a subnet, the network
// config kept in etcd for all of them, and a server killed with -9 leaves the
// other serving.
import { randomBytes } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WatchLeasesResponse_Kind, type WatchLeasesResponse } from "../../gen/weft/v1/lease.js";
import { etcdAvailable, startEtcd, startEtcdCluster, type EtcdProcess } from "../../test/etcd.js";
import { tempDir } from "./helpers.js";
import { connect, runBin, startServer, writeNetConf, type ServerProcess } from "./server-process.js";

const ok = etcdAvailable();

describe.skipIf(!ok)("lease servers sharing etcd", () => {
  let etcd: EtcdProcess;
  const dir = tempDir("weft-etcd-servers-");
  const servers: ServerProcess[] = [];
  const start = async (prefix: string, extra: string[] = []) => {
    const s = await startServer(["--insecure", "--store", `etcd:${etcd.endpoints[0]}`, "--etcd-prefix", prefix, "--lease-ttl", "1h", ...extra]);
    servers.push(s);
    return s;
  };
  const newPrefix = () => `/weft-it/${randomBytes(4).toString("hex")}/network`;

  beforeAll(async () => {
    etcd = await startEtcd();
  }, 30_000);
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.stop("SIGKILL")));
    await etcd?.stop();
    dir.cleanup();
  });

  it("keeps the network config in etcd: a second server starts without a file, one with another config refuses", async () => {
    const prefix = newPrefix();
    const a = await start(prefix, ["--network-config", writeNetConf(dir.path, { Network: "10.250.0.0/16" })]);
    const b = await start(prefix);
    const cfg = await connect(b.grpcAddr).call<{ network: string }>("getNetworkConfig", {});
    expect(cfg.network).toBe("10.250.0.0/16");
    const r = await runBin(["--insecure", "--store", `etcd:${etcd.endpoints[0]}`, "--etcd-prefix", prefix, "--network-config", writeNetConf(dir.path, { Network: "10.99.0.0/16" }), "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--network-config .* differs from the network config the other lease servers use \(etcd key .*\/config: .*10\.250\.0\.0\/16/);
    const none = await runBin(["--insecure", "--store", `etcd:${etcd.endpoints[0]}`, "--etcd-prefix", newPrefix(), "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--network-config", "/nonexistent.json"]);
    expect(none.stderr).toMatch(/--network-config: cannot read \/nonexistent.json/);
    await a.stop();
    await b.stop();
  }, 60_000);

  it("300 acquisitions spread over two servers: 255 distinct subnets, 45 RESOURCE_EXHAUSTED, and both stream every lease with the same revisions and store id", async () => {
    const prefix = newPrefix();
    const a = await start(prefix, ["--network-config", writeNetConf(dir.path, { Network: "10.244.0.0/16" })]);
    const b = await start(prefix);
    const ca = connect(a.grpcAddr);
    const cb = connect(b.grpcAddr);
    const results = await Promise.allSettled(Array.from({ length: 300 }, (_, i) =>
      (i % 2 ? cb : ca).call<{ subnet: string }>("acquireLease", { nodeName: `node-${i}`, publicIp: `198.18.${i >> 7}.${(i & 127) + 1}`, vxlan: { vni: 1, vtepMac: `0e:00:00:00:${(i >> 8).toString(16).padStart(2, "0")}:${(i & 255).toString(16).padStart(2, "0")}` } })));
    const granted = results.filter((r): r is PromiseFulfilledResult<{ subnet: string }> => r.status === "fulfilled").map((r) => r.value.subnet);
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    expect(new Set(granted).size).toBe(granted.length);
    expect(granted).toHaveLength(255);
    expect(refused).toHaveLength(45);
    for (const r of refused) expect((r.reason as grpc.ServiceError).code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    const snapshot = async (addr: string) => {
      const { client } = connect(addr);
      const stream = client.watchLeases({ fromRevision: 0, storeId: "" });
      const leases: string[] = [];
      for await (const m of stream as AsyncIterable<WatchLeasesResponse>) {
        if (m.kind === WatchLeasesResponse_Kind.KIND_SNAPSHOT) leases.push(...m.leases.map((l) => `${l.subnet}@${l.revision}`));
        if (m.kind === WatchLeasesResponse_Kind.KIND_SNAPSHOT_COMPLETE) {
          stream.cancel();
          return { leases: leases.sort(), revision: m.revision, storeId: m.storeId };
        }
      }
      throw new Error("stream ended before the snapshot completed");
    };
    const [sa, sb] = await Promise.all([snapshot(a.grpcAddr), snapshot(b.grpcAddr)]);
    expect(sa.leases).toHaveLength(255);
    expect(sb).toEqual(sa);
    ca.client.close();
    cb.client.close();
  }, 120_000);

  it("a server killed with -9 leaves the other serving, and it hands out no subnet twice", async () => {
    const prefix = newPrefix();
    const a = await start(prefix, ["--network-config", writeNetConf(dir.path, { Network: "10.244.0.0/16" })]);
    const b = await start(prefix);
    const first = await connect(a.grpcAddr).call<{ subnet: string; revision: string }>("acquireLease", { nodeName: "node-a", publicIp: "198.18.0.1", vxlan: { vni: 1, vtepMac: "0e:00:00:00:00:01" } });
    await a.stop("SIGKILL");
    const cb = connect(b.grpcAddr);
    const again = await cb.call<{ subnet: string }>("acquireLease", { nodeName: "node-a", publicIp: "198.18.0.1", vxlan: { vni: 1, vtepMac: "0e:00:00:00:00:01" } });
    expect(again.subnet).toBe(first.subnet);
    const other = await cb.call<{ subnet: string }>("acquireLease", { nodeName: "node-b", publicIp: "198.18.0.2", vxlan: { vni: 1, vtepMac: "0e:00:00:00:00:02" } });
    expect(other.subnet).not.toBe(first.subnet);
    cb.client.close();
  }, 60_000);

  it("keeps serving on a 3-member etcd cluster when the leader member is killed with -9", async () => {
    const cluster = await startEtcdCluster(3);
    try {
      const s = await startServer(["--insecure", "--store", `etcd:${cluster.endpoints.join(",")}`, "--lease-ttl", "1h", "--network-config", writeNetConf(dir.path, { Network: "10.244.0.0/16" })]);
      servers.push(s);
      const c = connect(s.grpcAddr);
      const acquire = (n: number) => c.call<{ subnet: string }>("acquireLease", { nodeName: `node-${n}`, publicIp: `198.18.0.${n}`, vxlan: { vni: 1, vtepMac: `0e:00:00:00:00:0${n}` } });
      const a = await acquire(1);
      const leader = await cluster.leader();
      expect(leader).toBeDefined();
      await leader!.kill("SIGKILL");
      // A new leader is elected within an election timeout or two; the server retries on the other members.
      let b: { subnet: string } | undefined;
      for (let i = 0; i < 40 && !b; i++) b = await acquire(2).catch(() => (new Promise((r) => setTimeout(r, 250)).then(() => undefined)));
      expect(b).toBeDefined();
      expect(b!.subnet).not.toBe(a.subnet);
      const health = await fetch(`${s.httpUrl}/readyz`);
      expect(health.status).toBe(200);
      c.client.close();
      await s.stop();
    } finally {
      await cluster.stop();
    }
  }, 90_000);
});
