// Agents talking to the lease server over mutual TLS: each presents its own
// client certificate (CN = node name); a certificate for another node is refused.
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster } from "./cluster.js";
import { kernelTestEnv, newRunId, waitFor } from "./netns.js";

const env = kernelTestEnv({ cni: true, openssl: true });

describe.skipIf(!env.ok)("weft over mTLS (nodes in namespaces)", () => {
  const c = new Cluster({ runId: newRunId(), nodes: 3, mtls: true, resyncInterval: "1s" });

  beforeAll(async () => {
    await Cluster.cleanupStale();
    await c.setup();
    await c.makeCerts();
    await c.startServer();
  }, 60_000);

  afterAll(async () => {
    await c.destroy();
  }, 60_000);

  it("programs the overlay when each agent presents its own certificate", async () => {
    c.startAgent(0);
    c.startAgent(1);
    for (const i of [0, 1]) await c.waitReady(i, 40_000);
    for (const i of [0, 1]) await c.waitPeers(i, 1);
    const a = await c.addPod(0, 0);
    const b = await c.addPod(1, 0);
    expect(await c.ping(a, b.ip, 2)).toBe(true);
  }, 60_000);

  it("fails with a clear error when the certificate names another node", async () => {
    const agent = c.startAgent(2, [], undefined, "node-0");
    const code = await new Promise<number | null>((resolve) => agent.once("exit", resolve));
    expect(code).toBe(1);
    const log = readFileSync(c.logPath("node-2"), "utf8");
    expect(log).toMatch(/certificate is for node-0, not node "node-2"/);
    await waitFor("node 2 never appears as a peer", async () => (await c.agentApi<unknown[]>(0, "/v1/peers")).json.length === 1, 2000);
  }, 30_000);
});
