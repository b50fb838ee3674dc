// The agent's local REST API, fuzzed with a fake AgentView: arbitrary
// methods and paths through inject(), and arbitrary headers and bodies over a
// real socket on 127.0.0.1 (Node's HTTP parser is part of the surface). Every
// answer is non-5xx (503 aside) with a JSON error body, and the one
// state-changing route (key rotation) runs only for a successful POST to it.
import { request as httpRequest } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import fc from "fast-check";
import { buildApi, type AgentApi, type AgentView } from "../../node-agent/src/api.js";
import { createAgentMetrics } from "../../node-agent/src/metrics.js";
import { silentLog } from "../../node-agent/test/helpers/fixtures.js";
import { FUZZ_TIMEOUT_MS, fuzzParams, inputCounter, nastyString } from "./fuzz.js";

let rotations = 0;
const view: AgentView = {
  status: () => ({ ready: true, reasons: [] }),
  lease: () => ({ subnet: "10.244.3.0/24", publicIP: "198.18.0.3", backendType: "wireguard", expiresAt: "2030-01-01T00:00:00.000Z" }),
  peers: async () => [{ nodeName: "node-2", subnet: "10.244.2.0/24", publicIP: "198.18.0.2", programmed: true, state: "programmed", path: "wireguard" }],
  rotateKey: async () => {
    rotations++;
    return { publicKey: Buffer.alloc(32, 2).toString("base64"), previousPublicKey: Buffer.alloc(32, 1).toString("base64") };
  },
};
const ROTATE = "/v1/wireguard/rotate-key";
let api: AgentApi;
let base: URL;

beforeAll(async () => {
  api = buildApi({ view, registry: createAgentMetrics().registry, log: silentLog });
  base = new URL(await api.listen({ host: "127.0.0.1", port: 0, flag: "--http-listen" }));
});
afterAll(async () => {
  await api?.close();
});

const METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "get", "post", "Post", "", "G\u00e9T", "POST\n", "X".repeat(300)];
const path = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom("/healthz", "/readyz", "/v1/lease", "/v1/peers", "/metrics", ROTATE) },
  fc.constantFrom("/", "", "*", "//v1/peers", "/v1/peers/", "/V1/PEERS", "/v1/wireguard/rotate-key/", "/v1/wireguard/rotate%2Dkey", "/v1/wireguard/%72otate-key",
    "/v1/wireguard/../wireguard/rotate-key", "/%", "/%zz", "/%E0%A4%A", "/%00", "/%C0%AE%C0%AE/", "http://evil/v1/peers", `/${"a".repeat(70_000)}`, "/v1/peers#x", "/v1/peers?x#y", "?", "#"),
  fc.array(nastyString(), { maxLength: 3 }).map((segs) => `/${segs.join("/")}`),
  nastyString(),
);
const query = fc.oneof(fc.constant(""), nastyString().map((s) => `?${s}`));

/** What a successful rotation request looks like: POST to exactly the route (after %-decoding). */
function isRotation(method: string, url: string): boolean {
  const p = url.split(/[?#]/)[0]!;
  let decoded = p;
  try { decoded = decodeURI(p); } catch { return false; }
  return method.toUpperCase() === "POST" && (decoded === ROTATE);
}

function checkAnswer(where: string, status: number, contentType: string, body: string, head: boolean): void {
  expect(status >= 500 && status !== 503, `5xx: ${where}`).toBe(false);
  if (status >= 400 && !head) {
    expect(contentType, `error content type: ${where}`).toMatch(/json/);
    expect(() => JSON.parse(body), `error body is JSON: ${where}`).not.toThrow();
  }
}

describe("agent REST (fuzz)", () => {
  const inputs = inputCounter("agent REST");

  it("methods and paths: non-5xx JSON errors, and a key rotation only for POST to its route", async () => {
    await fc.assert(fc.asyncProperty(fc.constantFrom(...METHODS), path, query, async (method, p, q) => {
      inputs.add();
      const before = rotations;
      const url = p + q;
      const r = await api.inject({ method, url });
      const where = `${JSON.stringify(method)} ${url.slice(0, 200)} -> ${r.statusCode} ${r.body.slice(0, 200)}`;
      checkAnswer(where, r.statusCode, r.headers["content-type"] ?? "", r.body, method.toUpperCase() === "HEAD");
      const rotated = rotations - before;
      expect(rotated, `rotations: ${where}`).toBe(isRotation(method, url) && r.statusCode === 200 ? 1 : 0);
    }), fuzzParams(1500));
  }, FUZZ_TIMEOUT_MS);

  it("headers and bodies over a real socket: the same answers, and the server keeps serving", async () => {
    const printable = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 40 });
    const headers = fc.dictionary(fc.oneof(fc.constantFrom("content-type", "authorization", "accept", "x-forwarded-for", "host", "expect", "cookie", "origin"), fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/)), printable, { maxKeys: 5 });
    const body = fc.oneof(fc.constant(undefined), fc.json({ maxDepth: 2 }), fc.uint8Array({ maxLength: 4096 }).map((b) => Buffer.from(b)), fc.constant(Buffer.alloc(1_000_000, 0x7b)));
    await fc.assert(fc.asyncProperty(fc.constantFrom("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"), path.filter((p) => p.startsWith("/") && p.length < 8000 && !/[^\x21-\x7e]/.test(p)), headers, body, async (method, p, h, b) => {
      inputs.add();
      const before = rotations;
      const res = await new Promise<{ status: number; type: string; body: string }>((resolve, reject) => {
        // The path goes on the wire as it is ("..", "//" included), not resolved as a URL would.
        const req = httpRequest({ host: base.hostname, port: base.port, path: p, method, headers: { ...h, connection: "close", ...(b !== undefined ? { "content-length": Buffer.byteLength(b) } : {}) }, timeout: 10_000 }, (r) => {
          const chunks: Buffer[] = [];
          r.on("data", (c: Buffer) => chunks.push(c));
          r.on("end", () => resolve({ status: r.statusCode ?? 0, type: String(r.headers["content-type"] ?? ""), body: Buffer.concat(chunks).toString("utf8") }));
        });
        req.on("timeout", () => req.destroy(new Error("timed out")));
        req.on("error", (err: NodeJS.ErrnoException) => {
          // The server may answer (413 or the like) and close before the client has sent the whole body.
          if (err.code === "EPIPE" || err.code === "ECONNRESET") resolve({ status: 0, type: "", body: "" });
          else reject(err);
        });
        req.end(b);
      });
      const where = `${method} ${p.slice(0, 200)} ${JSON.stringify(h)} -> ${res.status} ${res.body.slice(0, 200)}`;
      if (res.status !== 0) checkAnswer(where, res.status, res.type, res.body, method === "HEAD");
      expect(rotations - before, `rotations: ${where}`).toBe(isRotation(method, p) && res.status === 200 ? 1 : 0);
      // Still serving after every request.
      expect((await api.inject("/healthz")).statusCode).toBe(200);
    }), fuzzParams(300));
    const alive = await fetch(new URL("/healthz", base));
    expect(alive.status).toBe(200);
  }, FUZZ_TIMEOUT_MS);
});
