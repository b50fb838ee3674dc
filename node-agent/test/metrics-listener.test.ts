// --metrics-listen over a real socket: /metrics, /healthz and /readyz by GET
// or HEAD, and nothing else, in particular none of the admin API's routes.
import { createServer, connect, type AddressInfo, type Server } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PROBLEM_CONTENT_TYPE } from "../../lib/src/problem.js";
import { WEFT_VERSION } from "../../lib/src/build-info.js";
import type { AgentStatus } from "../src/api.js";
import { buildMetricsListener, type MetricsListener } from "../src/metrics-listener.js";
import { createAgentMetrics } from "../src/metrics.js";
import { silentLog } from "./helpers/fixtures.js";

describe("agent metrics listener", () => {
  let status: AgentStatus = { ready: false, reasons: ["no lease yet"] };
  const metrics = createAgentMetrics();
  metrics.peers.set(3);
  metrics.buildInfo.setBackend("vxlan");
  const listener: MetricsListener = buildMetricsListener({ registry: metrics.registry, status: () => status, log: silentLog });
  let base = "";
  beforeAll(async () => {
    base = await listener.listen({ host: "127.0.0.1", port: 0, flag: "--metrics-listen" });
  });
  afterAll(() => listener.close());

  const req = (path: string, method = "GET") => fetch(base + path, { method });

  it("serves /metrics with the agent's registry, weft_build_info included", async () => {
    const r = await req("/metrics");
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toBe(metrics.registry.contentType);
    const body = await r.text();
    expect(body).toMatch(/^weft_agent_peers 3$/m);
    expect(body).toContain(`weft_build_info{version="${WEFT_VERSION}",backend="vxlan"} 1`);
    expect((await req("/metrics?name=x")).status).toBe(200);
  });

  it("serves /healthz and /readyz as the API does", async () => {
    const h = await req("/healthz");
    expect([h.status, await h.text()]).toEqual([200, "ok"]);
    const notReady = await req("/readyz");
    expect([notReady.status, await notReady.text()]).toEqual([503, "not ready: no lease yet"]);
    status = { ready: true, reasons: [] };
    const ready = await req("/readyz");
    expect([ready.status, await ready.text()]).toEqual([200, "ready"]);
  });

  it("answers HEAD with the headers and no body", async () => {
    const r = await req("/metrics", "HEAD");
    expect(r.status).toBe(200);
    expect(Number(r.headers.get("content-length"))).toBeGreaterThan(100);
    expect(await r.text()).toBe("");
    expect((await req("/healthz", "HEAD")).status).toBe(200);
  });

  it.each([
    ["GET", "/v1/lease"], ["GET", "/v1/peers"], ["POST", "/v1/wireguard/rotate-key"], ["GET", "/v1/wireguard/rotate-key"],
    ["GET", "/"], ["GET", "/metrics/"], ["GET", "/METRICS"], ["GET", "/openapi.json"], ["GET", "/healthz/../v1/peers"],
  ])("refuses %s %s with a 404 problem", async (method, path) => {
    const r = await req(path, method);
    expect(r.status).toBe(404);
    expect(r.headers.get("content-type")).toBe(`${PROBLEM_CONTENT_TYPE}; charset=utf-8`);
    const p = await r.json() as { code: string; status: number; detail: string };
    expect(p).toMatchObject({ code: "NOT_FOUND", status: 404 });
    expect(p.detail).toContain("this listener (--metrics-listen) is read-only and serves GET /metrics, /healthz and /readyz");
  });

  it.each(["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])("refuses %s on its own paths", async (method) => {
    const r = await req("/metrics", method);
    expect(r.status).toBe(404);
    expect((await r.json() as { detail: string }).detail).toMatch(new RegExp(`^/metrics takes GET or HEAD, not ${method}`));
  });

  it("answers a malformed request in the problem shape", async () => {
    const a = listener.address()!;
    const raw = await new Promise<string>((resolve, reject) => {
      const s = connect(a.port, "127.0.0.1", () => s.write("GARBAGE\r\n\r\n"));
      let out = "";
      s.on("data", (d) => (out += d));
      s.on("end", () => resolve(out));
      s.on("error", reject);
    });
    expect(raw).toMatch(/^HTTP\/1\.1 400 /);
    expect(raw).toContain(`Content-Type: ${PROBLEM_CONTENT_TYPE}`);
  });
});

describe("agent metrics listener: binding", () => {
  let taken: Server;
  let port = 0;
  beforeAll(async () => {
    taken = createServer();
    await new Promise<void>((r) => taken.listen(0, "127.0.0.1", r));
    port = (taken.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((r) => taken.close(() => r())));

  it.each(["--metrics-listen", "WEFT_METRICS_LISTEN"])("a port in use is CONFIG_INVALID naming %s", async (flag) => {
    const l = buildMetricsListener({ registry: createAgentMetrics().registry, status: () => ({ ready: true, reasons: [] }), log: silentLog });
    const err = await l.listen({ host: "127.0.0.1", port, flag }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "CONFIG_INVALID" });
    expect((err as Error).message).toBe(`${flag} 127.0.0.1:${port}: cannot listen (EADDRINUSE): the port is in use; pick another`);
    await l.close();
  });
});
