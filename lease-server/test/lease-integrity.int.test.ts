// The integrity fields over real gRPC (a lease server in this process on
// 127.0.0.1:0, the agent's LeaseClient): instance ids reach the manager,
// ALREADY_EXISTS reaches the agent as such, replies state the TTL and store
// id, and a revocation's reason reaches watchers.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LeaseEvent } from "../../lib/src/lease.js";
import { LeaseClient } from "../../node-agent/src/lease-client.js";
import { loadServerConfig } from "../src/config.js";
import { startLeaseServer, type RunningServer } from "../src/server.js";
import { memoryLogger, tempDir } from "./helpers.js";

const ADMIN = "integrity-admin-token-0123456789abcdefghij";
const attrs = (n: number) => ({ type: "vxlan" as const, vni: 1, vtepMac: `0e:00:00:00:02:0${n}` });

describe("lease integrity over gRPC", () => {
  const dir = tempDir("weft-integrity-int-");
  let server: RunningServer;
  let client: LeaseClient;

  beforeAll(async () => {
    const netconf = join(dir.path, "net-conf.json");
    writeFileSync(netconf, '{"Network":"10.244.0.0/16"}');
    const tokenFile = join(dir.path, "admin-token");
    writeFileSync(tokenFile, ADMIN, { mode: 0o600 });
    const cfg = loadServerConfig(["--insecure", "--admin-token-file", tokenFile, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--store", `sqlite:${join(dir.path, "l.db")}`, "--network-config", netconf, "--lease-ttl", "90s"])!;
    server = await startLeaseServer(cfg, { log: memoryLogger().log });
    client = new LeaseClient({ servers: [`127.0.0.1:${server.grpcPort}`] });
  });
  afterAll(async () => {
    client?.close();
    await server?.close();
    dir.cleanup();
  });

  it("states the granted TTL and the store id on acquire and renew replies", async () => {
    const storeId = await server.store.storeId();
    const a = await client.acquire({ nodeName: "node-1", publicIP: "198.18.0.1", attrs: attrs(1), instanceId: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" });
    expect(a).toMatchObject({ subnet: expect.any(String), ttlMs: 90_000, storeId });
    expect(await client.renew("node-1", a.subnet, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")).toMatchObject({ ttlMs: 90_000, storeId });
    // The instance id never leaves the server: not in replies, not in the REST listing.
    expect(JSON.stringify(a)).not.toContain("aaaaaaaa");
    expect((await server.http.inject({ method: "GET", url: "/v1/leases" })).body).not.toContain("aaaaaaaa");
  });

  it("answers another instance with ALREADY_EXISTS naming the node", async () => {
    const a = await client.acquire({ nodeName: "node-2", publicIP: "198.18.0.2", attrs: attrs(2), instanceId: "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb" });
    await expect(client.acquire({ nodeName: "node-2", publicIP: "198.18.0.22", attrs: attrs(3), instanceId: "cccccccccccccccccccccccccccccccc" }))
      .rejects.toMatchObject({ code: "ALREADY_EXISTS", message: expect.stringContaining(`node "node-2" already holds ${a.subnet} from another agent instance`) });
    await expect(client.renew("node-2", a.subnet, "cccccccccccccccccccccccccccccccc")).rejects.toMatchObject({ code: "ALREADY_EXISTS" });
    await expect(client.release("node-2", a.subnet, "cccccccccccccccccccccccccccccccc")).rejects.toMatchObject({ code: "ALREADY_EXISTS" });
    expect((await server.store.getLeaseByNode("node-2"))?.publicIP).toBe("198.18.0.2");
  });

  it("streams a revocation with its reason", async () => {
    const a = await client.acquire({ nodeName: "node-4", publicIP: "198.18.0.4", attrs: attrs(4), instanceId: "dddddddddddddddddddddddddddddddd" });
    const ac = new AbortController();
    const seen: LeaseEvent[] = [];
    const watching = (async () => {
      for await (const m of client.watch(0, ac.signal)) {
        if (m.kind === "complete") void server.manager.revoke(a.subnet, "rack 4 drained");
        if (m.kind === "events") seen.push(...m.events);
        if (seen.some((e) => e.type === "removed")) ac.abort();
      }
    })();
    await watching;
    expect(seen.filter((e) => e.type === "removed")).toEqual([expect.objectContaining({ reason: "revoked: rack 4 drained", lease: expect.objectContaining({ nodeName: "node-4" }) })]);
  });

  it("takes the revocation's reason from DELETE /v1/leases/{subnet}?reason=, and refuses one too long", async () => {
    const a = await client.acquire({ nodeName: "node-5", publicIP: "198.18.0.5", attrs: attrs(5), instanceId: "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee" });
    const url = `/v1/leases/${a.subnet.replace("/", "-")}`;
    const long = await server.http.inject({ method: "DELETE", url: `${url}?reason=${"x".repeat(201)}`, headers: { authorization: `Bearer ${ADMIN}` } });
    expect(long.statusCode).toBe(400);
    expect(long.body).toContain("reason");
    expect(await server.store.getLeaseByNode("node-5")).toBeDefined();
    const from = (await server.store.listLeases()).revision;
    const ok = await server.http.inject({ method: "DELETE", url: `${url}?reason=${encodeURIComponent("moved to rack 7")}`, headers: { authorization: `Bearer ${ADMIN}` } });
    expect(ok.statusCode).toBe(200);
    expect((await server.store.eventsSince(from)).map((e) => e.reason)).toEqual(["revoked: moved to rack 7"]);
  });
});

