import { connect } from "node:net";
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
    const base = await app.listen({ host: "127.0.0.1", port: 0, flag: "--http-listen" });
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
    expect(r.headers["content-type"]).toBe("application/problem+json; charset=utf-8");
    expect(r.json()).toStrictEqual({ type: "https://weft.dev/problems/not-supported", title: "Not supported", status: 501, code: "NOT_SUPPORTED", detail: message, instance: "/v1/wireguard/rotate-key" });
  });

  it("a rotation that fails unexpectedly is a 500 INTERNAL without the details", async () => {
    const app = api(makeView({ rotateKey: async () => { throw new Error("EACCES: /var/lib/weft/secret"); } }));
    const r = await app.inject({ method: "POST", url: "/v1/wireguard/rotate-key" });
    expect(r.statusCode).toBe(500);
    expect(r.json()).toMatchObject({ type: "https://weft.dev/problems/internal", status: 500, code: "INTERNAL", detail: expect.stringMatching(/^internal error/) });
    expect(r.body).not.toContain("EACCES");
  });

  it("rotate-key is POST only, and the GET routes are not POST routes", async () => {
    const view = makeView();
    const app = api(view);
    for (const method of ["GET", "HEAD", "PUT", "DELETE"]) {
      expect((await app.inject({ method, url: "/v1/wireguard/rotate-key" })).statusCode, method).toBe(404);
    }
    const g = await app.inject("/v1/wireguard/rotate-key");
    expect(g.headers["content-type"]).toBe("application/problem+json; charset=utf-8");
    expect(g.json()).toMatchObject({ status: 404, code: "NOT_FOUND", detail: expect.stringMatching(/^no route GET \/v1\/wireguard\/rotate-key \(it takes POST\)/), instance: "/v1/wireguard/rotate-key" });
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
    expect(r.json()).toStrictEqual({
      type: "https://weft.dev/problems/dataplane-op-failed", title: "Dataplane operation failed", status: 500, code: "DATAPLANE_OP_FAILED",
      detail: "wireguard weft-wg: get: answer cut short", instance: "/v1/peers",
    });
  });
});

describe("agent REST API: errors and the admin token", () => {
  const TOKEN = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  const PROBLEM = "application/problem+json; charset=utf-8";
  const KEYS = { publicKey: "4gWfAxuBB2AecKbmbl1MM43Eyka2iRj0xeV0PkkLr3Q=", previousPublicKey: Buffer.alloc(32, 1).toString("base64") };
  const view = (over: Partial<AgentView> = {}): AgentView => ({
    status: () => ({ ready: false, reasons: ["no lease yet"] }),
    lease: () => undefined,
    peers: async () => [],
    rotateKey: vi.fn(async () => KEYS),
    ...over,
  });

  it("unknown routes, bad URLs and a missing lease are problems with the right status", async () => {
    const app = buildApi({ view: view(), registry: createAgentMetrics().registry, log: silentLog });
    const nope = await app.inject("/v1/nope?x=1");
    expect(nope.statusCode).toBe(404);
    expect(nope.headers["content-type"]).toBe(PROBLEM);
    expect(nope.json()).toStrictEqual({ type: "https://weft.dev/problems/not-found", title: "Not found", status: 404, code: "NOT_FOUND", detail: expect.stringMatching(/^no route GET \/v1\/nope; the agent serves GET \/healthz/), instance: "/v1/nope" });
    const badUrl = await app.inject("/v1/%E0%A4%A");
    expect(badUrl.statusCode).toBe(400);
    expect(badUrl.json()).toMatchObject({ status: 400, code: "INVALID_ARGUMENT", detail: expect.stringMatching(/malformed %-escape/) });
    const noLease = await app.inject("/v1/lease");
    expect(noLease.statusCode).toBe(503);
    expect(noLease.headers["content-type"]).toBe(PROBLEM);
    expect(noLease.json()).toMatchObject({ status: 503, code: "NOT_READY", type: "https://weft.dev/problems/not-ready", detail: expect.stringMatching(/no lease yet/) });
    // HEAD keeps the status and drops the body.
    const head = await app.inject({ method: "HEAD", url: "/v1/nope" });
    expect([head.statusCode, head.body]).toEqual([404, ""]);
  });

  it("with --admin-token-file, rotate-key needs the bearer token: 401 without, 403 wrong, 200 right; GET routes stay open", async () => {
    const v = view({ lease: () => ({ subnet: "10.244.3.0/24", publicIP: "198.18.0.3", backendType: "wireguard", expiresAt: "2030-01-01T00:00:00.000Z" }) });
    const lines: Record<string, unknown>[] = [];
    const { createLogger } = await import("../../lib/src/logger.js");
    const { Writable } = await import("node:stream");
    const log = createLogger("test", "debug", new Writable({ write: (c, _e, cb) => { for (const l of String(c).split("\n")) if (l) lines.push(JSON.parse(l)); cb(); } }));
    const app = buildApi({ view: v, registry: createAgentMetrics().registry, log, adminToken: TOKEN });
    const url = "/v1/wireguard/rotate-key";
    const none = await app.inject({ method: "POST", url });
    expect(none.statusCode).toBe(401);
    expect(none.headers["www-authenticate"]).toMatch(/^Bearer/);
    expect(none.json()).toMatchObject({ status: 401, code: "UNAUTHENTICATED", detail: expect.stringMatching(/Authorization: Bearer/) });
    const wrong = await app.inject({ method: "POST", url, headers: { authorization: `Bearer ${TOKEN.slice(1)}` } });
    expect(wrong.statusCode).toBe(403);
    expect(wrong.json()).toMatchObject({ status: 403, code: "PERMISSION_DENIED" });
    expect(v.rotateKey).not.toHaveBeenCalled();
    const ok = await app.inject({ method: "POST", url, headers: { authorization: `Bearer ${TOKEN}` } });
    expect(ok.statusCode).toBe(200);
    expect(ok.json()).toStrictEqual(KEYS);
    expect(v.rotateKey).toHaveBeenCalledTimes(1);
    for (const u of ["/healthz", "/v1/lease", "/v1/peers", "/metrics"]) expect((await app.inject(u)).statusCode, u).toBe(200);
    const refused = lines.filter((l) => l.msg === "admin request refused");
    expect(refused.map((l) => l.code)).toEqual(["UNAUTHENTICATED", "PERMISSION_DENIED"]);
    expect(refused[0]).toMatchObject({ level: 40, route: "POST /v1/wireguard/rotate-key" });
    expect(JSON.stringify(lines)).not.toContain(TOKEN.slice(1, 20));
  });

  it("without a token configured, rotate-key works (loopback only, see config) and a token sent anyway is 403", async () => {
    const v = view();
    const app = buildApi({ view: v, registry: createAgentMetrics().registry, log: silentLog });
    expect((await app.inject({ method: "POST", url: "/v1/wireguard/rotate-key" })).statusCode).toBe(200);
    const t = await app.inject({ method: "POST", url: "/v1/wireguard/rotate-key", headers: { authorization: `Bearer ${TOKEN}` } });
    expect(t.statusCode).toBe(403);
    expect(t.json()).toMatchObject({ code: "PERMISSION_DENIED", detail: expect.stringMatching(/no --admin-token-file/) });
    expect(v.rotateKey).toHaveBeenCalledTimes(1);
  });

  it("over a socket: the token is checked, headers over 16 KiB get a 431 problem, a malformed request a 400 problem", async () => {
    const v = view();
    const app = buildApi({ view: v, registry: createAgentMetrics().registry, log: silentLog, adminToken: TOKEN });
    const base = await app.listen({ host: "127.0.0.1", port: 0, flag: "--http-listen" });
    try {
      const none = await fetch(`${base}/v1/wireguard/rotate-key`, { method: "POST" });
      expect(none.status).toBe(401);
      expect(none.headers.get("www-authenticate")).toMatch(/^Bearer/);
      expect(none.headers.get("content-type")).toBe(PROBLEM);
      await none.text();
      const ok = await fetch(`${base}/v1/wireguard/rotate-key`, { method: "POST", headers: { authorization: `Bearer ${TOKEN}` } });
      expect(ok.status).toBe(200);
      expect(await ok.json()).toStrictEqual(KEYS);

      const { port } = app.address()!;
      const raw = (req: string) => new Promise<string>((resolve, reject) => {
        const s = connect(port, "127.0.0.1");
        let data = "";
        const t = setTimeout(() => { s.destroy(); reject(new Error(`no answer: ${data}`)); }, 10_000);
        s.on("data", (d) => (data += d));
        s.on("error", () => undefined);
        s.on("close", () => { clearTimeout(t); resolve(data); });
        s.end(req);
      });
      const big = await raw(`GET /v1/peers HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20 * 1024)}\r\n\r\n`);
      expect(big).toMatch(/^HTTP\/1\.1 431 /);
      expect(big).toMatch(/content-type: application\/problem\+json/i);
      expect(JSON.parse(big.split("\r\n\r\n")[1]!)).toMatchObject({ status: 431, code: "HEADERS_TOO_LARGE", type: "https://weft.dev/problems/headers-too-large" });
      const garbage = await raw("NOT HTTP\r\n\r\n");
      expect(garbage).toMatch(/^HTTP\/1\.1 400 /);
      expect(JSON.parse(garbage.split("\r\n\r\n")[1]!)).toMatchObject({ status: 400, code: "INVALID_ARGUMENT" });
      const expectation = await raw("GET /v1/peers HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nConnection: close\r\n\r\n");
      expect(expectation).toMatch(/^HTTP\/1\.1 417 /);
      expect(JSON.parse(expectation.split("\r\n\r\n")[1]!)).toMatchObject({ status: 417, code: "EXPECTATION_FAILED", instance: "/v1/peers" });
    } finally {
      await app.close();
    }
  });
});
