import { describe, expect, it, vi } from "vitest";
import { WeftError } from "../../lib/src/errors.js";
import { buildApi, type AgentView, type PeerView } from "../src/api.js";
import { createAgentMetrics } from "../src/metrics.js";
import { silentLog } from "./helpers/fixtures.js";

describe("agent REST API", () => {
  it("reports readiness, lease, peers and metrics", async () => {
    let ready = false;
    const view: AgentView = {
      status: () => (ready ? { ready, reasons: [] } : { ready, reasons: ["dataplane: 1 of 1 peers not programmed (1 failed operations): replace route 10.244.2.0/24 via 198.18.0.2 dev 2: ENETUNREACH"] }),
      lease: () => ({ subnet: "10.244.3.0/24", publicIP: "198.18.0.3", backendType: "vxlan", expiresAt: "2030-01-01T00:00:00.000Z" }),
      peers: async () => [
        { nodeName: "node-2", subnet: "10.244.2.0/24", publicIP: "198.18.0.2", programmed: true, state: "programmed", path: "host-gw" },
        { nodeName: "node-3", subnet: "10.244.3.0/24", publicIP: "198.18.1.3", programmed: false, state: "rejected", reason: "public IP 198.18.1.3 is not on eth0's subnet 198.18.0.0/24" },
      ],
      rotateKey: async () => { throw new WeftError("NOT_SUPPORTED", "the vxlan backend has no WireGuard key"); },
    };
    const metrics = createAgentMetrics();
    metrics.peers.set(1);
    const app = buildApi({ view, registry: metrics.registry, log: silentLog });
    expect((await app.inject("/healthz")).statusCode).toBe(200);
    const notReady = await app.inject("/readyz");
    expect(notReady.statusCode).toBe(503);
    expect(notReady.body).toBe("not ready: dataplane: 1 of 1 peers not programmed (1 failed operations): replace route 10.244.2.0/24 via 198.18.0.2 dev 2: ENETUNREACH");
    ready = true;
    expect((await app.inject("/readyz")).statusCode).toBe(200);
    expect((await app.inject("/v1/lease")).json()).toEqual(view.lease());
    expect((await app.inject("/v1/peers")).json()).toEqual(await view.peers());
    const m = await app.inject("/metrics");
    expect(m.body).toMatch(/^weft_agent_peers 1$/m);
    for (const name of ["weft_agent_reconcile_duration_seconds", "weft_agent_reconcile_errors_total", "weft_agent_lease_expiry_timestamp_seconds", "weft_agent_server_connected"]) {
      expect(m.body).toContain(`# TYPE ${name}`);
    }
    await app.close();
  });
});

describe("agent REST API: WireGuard", () => {
  const lease = { subnet: "10.244.3.0/24", publicIP: "198.18.0.3", backendType: "wireguard", expiresAt: "2030-01-01T00:00:00.000Z" };
  const NEW_KEY = "4gWfAxuBB2AecKbmbl1MM43Eyka2iRj0xeV0PkkLr3Q=";
  const OLD_KEY = Buffer.alloc(32, 1).toString("base64");
  const makeView = (over: Partial<AgentView> = {}): AgentView => ({
    status: () => ({ ready: true, reasons: [] }),
    lease: () => lease,
    peers: async () => [],
    rotateKey: vi.fn(async () => ({ publicKey: NEW_KEY, previousPublicKey: OLD_KEY })),
    ...over,
  });
  const api = (view: AgentView) => buildApi({ view, registry: createAgentMetrics().registry, log: silentLog });

  it("POST /v1/wireguard/rotate-key answers 200 with the view's new and previous public keys", async () => {
    const view = makeView();
    const app = api(view);
    const r = await app.inject({ method: "POST", url: "/v1/wireguard/rotate-key" });
    expect(r.statusCode).toBe(200);
    expect(r.headers["content-type"]).toBe("application/json; charset=utf-8");
    expect(r.json()).toStrictEqual({ publicKey: NEW_KEY, previousPublicKey: OLD_KEY });
    expect(view.rotateKey).toHaveBeenCalledTimes(1);
    // Lower-case method and a query string are the same route.
    expect((await app.inject({ method: "post", url: "/v1/wireguard/rotate-key?now=1" })).statusCode).toBe(200);
    expect(view.rotateKey).toHaveBeenCalledTimes(2);
  });

  it("POST /v1/wireguard/rotate-key over a real socket", async () => {
    const view = makeView();
    const app = api(view);
    const base = await app.listen({ host: "127.0.0.1", port: 0 });
    try {
      const r = await fetch(`${base}/v1/wireguard/rotate-key`, { method: "POST" });
      expect(r.status).toBe(200);
      expect(await r.json()).toStrictEqual({ publicKey: NEW_KEY, previousPublicKey: OLD_KEY });
      const g = await fetch(`${base}/v1/wireguard/rotate-key`);
      expect(g.status).toBe(404);
      await g.text();
      expect(view.rotateKey).toHaveBeenCalledTimes(1);
    } finally {
      await app.close();
    }
  });

  it("a view that cannot rotate (NOT_SUPPORTED) gives 501 with the code and message", async () => {
    const message = "key rotation needs the wireguard backend; this node runs vxlan";
    const app = api(makeView({ rotateKey: async () => { throw new WeftError("NOT_SUPPORTED", message); } }));
    const r = await app.inject({ method: "POST", url: "/v1/wireguard/rotate-key" });
    expect(r.statusCode).toBe(501);
    expect(r.json()).toStrictEqual({ code: "NOT_SUPPORTED", message });
  });

  it("a rotation that fails unexpectedly is a 500 INTERNAL without the details", async () => {
    const app = api(makeView({ rotateKey: async () => { throw new Error("EACCES: /var/lib/weft/secret"); } }));
    const r = await app.inject({ method: "POST", url: "/v1/wireguard/rotate-key" });
    expect(r.statusCode).toBe(500);
    expect(r.json()).toStrictEqual({ code: "INTERNAL", message: "internal error" });
  });

  it("rotate-key is POST only, and the GET routes are not POST routes", async () => {
    const view = makeView();
    const app = api(view);
    for (const method of ["GET", "HEAD", "PUT", "DELETE"]) {
      expect((await app.inject({ method, url: "/v1/wireguard/rotate-key" })).statusCode, method).toBe(404);
    }
    const g = await app.inject("/v1/wireguard/rotate-key");
    expect(g.json()).toMatchObject({ statusCode: 404, error: "Not Found", message: "Route GET:/v1/wireguard/rotate-key not found" });
    expect(view.rotateKey).not.toHaveBeenCalled();
    for (const url of ["/v1/peers", "/v1/lease", "/healthz"]) {
      expect((await app.inject({ method: "POST", url })).statusCode, url).toBe(404);
    }
  });

  it("/v1/peers includes the wireguard object and the reason the view gives", async () => {
    const peers: PeerView[] = [
      {
        nodeName: "node-2", subnet: "10.244.2.0/24", publicIP: "198.18.0.2", programmed: true, state: "programmed", path: "wireguard",
        wireguard: { publicKey: NEW_KEY, endpoint: "198.18.0.2:51820", lastHandshake: "2030-01-01T00:00:00.000Z", rxBytes: 1234, txBytes: 5678 },
      },
      {
        nodeName: "node-4", subnet: "10.244.4.0/24", publicIP: "198.18.0.4", programmed: true, state: "programmed", path: "wireguard",
        reason: "no WireGuard handshake with 198.18.0.4:51820 yet",
        wireguard: { publicKey: OLD_KEY, endpoint: "198.18.0.4:51820", lastHandshake: null, rxBytes: 0, txBytes: 92 },
      },
      { nodeName: "node-5", subnet: "10.244.5.0/24", publicIP: "198.18.0.5", programmed: false, state: "rejected", reason: "the lease has no WireGuard public key" },
    ];
    const app = api(makeView({ peers: async () => peers }));
    const r = await app.inject("/v1/peers");
    expect(r.statusCode).toBe(200);
    expect(r.json()).toStrictEqual([
      {
        nodeName: "node-2", subnet: "10.244.2.0/24", publicIP: "198.18.0.2", programmed: true, state: "programmed", path: "wireguard",
        wireguard: { publicKey: NEW_KEY, endpoint: "198.18.0.2:51820", lastHandshake: "2030-01-01T00:00:00.000Z", rxBytes: 1234, txBytes: 5678 },
      },
      {
        nodeName: "node-4", subnet: "10.244.4.0/24", publicIP: "198.18.0.4", programmed: true, state: "programmed", path: "wireguard",
        reason: "no WireGuard handshake with 198.18.0.4:51820 yet",
        wireguard: { publicKey: OLD_KEY, endpoint: "198.18.0.4:51820", lastHandshake: null, rxBytes: 0, txBytes: 92 },
      },
      { nodeName: "node-5", subnet: "10.244.5.0/24", publicIP: "198.18.0.5", programmed: false, state: "rejected", reason: "the lease has no WireGuard public key" },
    ]);
  });

  it("/v1/peers: a view that fails with a WeftError maps to its HTTP status", async () => {
    const app = api(makeView({ peers: async () => { throw new WeftError("DATAPLANE_OP_FAILED", "wireguard weft-wg: get: answer cut short"); } }));
    const r = await app.inject("/v1/peers");
    expect(r.statusCode).toBe(500);
    expect(r.json()).toStrictEqual({ code: "DATAPLANE_OP_FAILED", message: "wireguard weft-wg: get: answer cut short" });
  });
});
