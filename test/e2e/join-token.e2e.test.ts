// A node joins an mTLS cluster with nothing but a join token and the CA of
// the lease server's certificate: it gets its own client certificate from the
// server, programs the overlay, and keeps working across a restart without the
// token. The same token after its one use, and an expired token, are refused
// with a clear log line and exit 1.
import { X509Certificate } from "node:crypto";
import { readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster } from "./cluster.js";
import { kernelTestEnv, newRunId, waitFor } from "./netns.js";

const env = kernelTestEnv({ cni: true, openssl: true });

describe.skipIf(!env.ok)("joining with a join token (nodes in namespaces)", () => {
  const c = new Cluster({ runId: newRunId(), nodes: 4, mtls: true, resyncInterval: "1s" });
  let expiring: { token: string; id: string; file: string };
  let expiresAt = 0;

  beforeAll(async () => {
    await Cluster.cleanupStale();
    await c.setup();
    await c.makeCerts();
    await c.startServer();
    // Made first, so that it has run out by the last test without a long wait.
    expiring = await c.makeJoinToken({ ttl: "1m", uses: 5 });
    expiresAt = Date.now() + 60_000;
  }, 60_000);

  afterAll(async () => {
    await c.destroy();
  }, 60_000);

  const exitCode = (i: number) => new Promise<number | null>((resolve) => c.nodes[i]!.agent!.once("exit", resolve));

  it("brings a node with only a token into the cluster, beside a node with a hand-made certificate, and pods ping across", async () => {
    const once = await c.makeJoinToken({ ttl: "10m", uses: 1 });
    c.startAgent(0);
    c.startAgent(1, [], undefined, { joinTokenFile: once.file });
    for (const i of [0, 1]) await c.waitReady(i, 40_000);
    for (const i of [0, 1]) await c.waitPeers(i, 1);
    const a = await c.addPod(0, 0);
    const b = await c.addPod(1, 0);
    expect(await c.ping(a, b.ip, 2)).toBe(true);
    expect(await c.ping(b, a.ip, 2)).toBe(true);

    const state = c.nodes[1]!.stateDir;
    for (const f of ["node.crt", "node.key"]) expect(statSync(join(state, f)).mode & 0o777, f).toBe(0o600);
    const cert = new X509Certificate(readFileSync(join(state, "node.crt")));
    expect(cert.subject).toBe("CN=node-1");
    // Signed by the server's own node CA (made in its state dir), not the hand-made CA.
    const nodeCa = new X509Certificate(readFileSync(join(c.workDir, "server-state", "ca.crt")));
    expect(cert.verify(nodeCa.publicKey)).toBe(true);
    expect(cert.verify(new X509Certificate(readFileSync(c.cert("ca.crt"))).publicKey)).toBe(false);
    expect(readFileSync(c.logPath("lease-server"), "utf8")).toMatch(new RegExp(`"nodeId":"node-1".*"via":"join token ${once.id}".*"msg":"issued node certificate"`));

    // A restart without the token file uses the certificate it has.
    await c.stopAgent(1);
    rmSync(once.file);
    c.startAgent(1, [], undefined, { joinTokenFile: once.file });
    await c.waitReady(1, 40_000);
    expect(readFileSync(c.logPath("node-1"), "utf8")).toMatch(/using the node certificate from the state dir/);

    // The used token is refused for the next node, which stays out.
    const reused = join(c.workDir, "reused-token");
    const { writeFileSync } = await import("node:fs");
    writeFileSync(reused, `${once.token}\n`, { mode: 0o600 });
    c.startAgent(2, [], undefined, { joinTokenFile: reused });
    expect(await exitCode(2)).toBe(1);
    expect(readFileSync(c.logPath("node-2"), "utf8")).toMatch(new RegExp(`join token ${once.id} is used up \\(all 1 use taken\\); make a new one with POST /v1/join-tokens`));
    await waitFor("node 2 never appears as a peer", async () => (await c.agentApi<unknown[]>(0, "/v1/peers")).json.length === 1, 2000);
  }, 120_000);

  it("answers /healthz while it waits for its certificate, and /readyz says it is not ready", async () => {
    // 198.18.0.250 is on the underlay but nothing answers there: the join retries until stopped.
    c.startAgent(3, ["--server", "198.18.0.250:7600"], undefined, { joinTokenFile: expiring.file });
    await waitFor("node-3's /healthz answers while it joins", async () => (await c.agentApi(3, "/healthz")).code === 200, 15_000);
    const ready = await c.agentApi(3, "/readyz");
    expect(ready.code).toBe(503);
    expect(ready.body).toMatch(/no lease yet/);
    expect(readFileSync(c.logPath("node-3"), "utf8")).not.toMatch(/issued node certificate|lease acquired/);
    await c.stopAgent(3);
  }, 30_000);

  it("refuses an expired token with a clear log line", async () => {
    await new Promise((r) => setTimeout(r, Math.max(0, expiresAt - Date.now() + 1500)));
    c.startAgent(3, [], undefined, { joinTokenFile: expiring.file });
    expect(await exitCode(3)).toBe(1);
    const log = readFileSync(c.logPath("node-3"), "utf8");
    expect(log).toMatch(new RegExp(`join token ${expiring.id} expired at \\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z; make a new one with POST /v1/join-tokens`));
    expect(log).not.toMatch(/\n\s+at /);
  }, 120_000);
});
