// The lease server's REST API, fuzzed through inject() on a real server (real
// SQLite file in a temp dir, admin token configured): arbitrary methods,
// paths (encoded, overlong, "..", unicode), query strings, headers, bodies
// (JSON, bytes, wrong content types) and credentials. Every answer is a
// non-5xx status (503 aside, by design) with a JSON error body, and leases and
// reservations change only through an authorized, successful state change.
import { writeFileSync, chmodSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import fc from "fast-check";
import { loadServerConfig } from "../../lease-server/src/config.js";
import { startLeaseServer, type RunningServer } from "../../lease-server/src/server.js";
import { memoryLogger, tempDir } from "../../lease-server/test/helpers.js";
import { FUZZ_TIMEOUT_MS, fuzzParams, inputCounter, nastyString } from "./fuzz.js";

const TOKEN = "fuzz-admin-token-0123456789abcdefghijklmnopqrstuv";
const dir = tempDir("weft-fuzz-rest-");
let server: RunningServer;
const { log, lines } = memoryLogger();

beforeAll(async () => {
  const netconf = join(dir.path, "net-conf.json");
  writeFileSync(netconf, '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}');
  const tokenFile = join(dir.path, "admin.token");
  writeFileSync(tokenFile, TOKEN);
  chmodSync(tokenFile, 0o600);
  const cfg = loadServerConfig(["--insecure", "--store", `sqlite:${join(dir.path, "leases.db")}`, "--network-config", netconf, "--listen", "127.0.0.1:0",
    "--http-listen", "127.0.0.1:0", "--admin-token-file", tokenFile, "--state-dir", dir.path, "--log-level", "silent"])!;
  server = await startLeaseServer(cfg, { log });
  for (let i = 1; i <= 40; i++) {
    await server.manager.acquire({ nodeName: `node-${i}`, publicIP: `198.18.0.${i}`, attrs: { type: "vxlan", vni: 1, vtepMac: `0e:00:00:00:00:${i.toString(16).padStart(2, "0")}` } });
  }
  await server.manager.reserve({ subnet: "10.244.200.0/24", nodeName: "reserved-1" });
}, FUZZ_TIMEOUT_MS);
afterAll(async () => {
  await server?.close();
  dir.cleanup();
});

async function snapshot(): Promise<{ leases: Set<string>; reservations: Set<string> }> {
  const { leases } = await server.store.listLeases();
  return {
    leases: new Set(leases.map((l) => `${l.subnet} ${l.nodeName} ${l.publicIP} ${JSON.stringify(l.attrs)}`)),
    reservations: new Set((await server.store.listReservations()).map((r) => `${r.subnet} ${r.nodeName}`)),
  };
}

// inject() takes only the methods Node's HTTP parser knows, as a real request must.
const METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "SEARCH", "CONNECT"];
const subnetParam = fc.oneof(
  fc.integer({ min: 0, max: 50 }).map((i) => `10.244.${i}.0-24`),
  fc.integer({ min: 0, max: 255 }).map((i) => `10.244.${i}.0%2F24`),
  fc.constantFrom("10.244.200.0-24", "0.0.0.0-0", "10.244.0.0-16", "10.244.1.0-33", "10.244.1.0-", "-24", "10.244.1.0/24", "%", "%zz", "%2e%2e", "..", "%00", "%C0%AE", "%F0%9F%A6%84"),
  nastyString().map(encodeURIComponent),
  nastyString(),
);
const path = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom("/v1/leases", "/v1/reservations", "/v1/network", "/v1/join-tokens") },
  fc.constantFrom("/healthz", "/readyz", "/v1/leases", "/v1/network", "/v1/reservations", "/metrics", "/v1/join-tokens", "/", "//v1/leases", "/v1//leases", "/v1/leases/", "/V1/LEASES",
    "/documentation/json", "/v1/leases/../network", "/v1/./leases", "/%2e%2e/%2e%2e/etc/passwd", `/${"a".repeat(10_000)}`, "/v1/leases?", "*", "/v1/leases#x"),
  { weight: 3, arbitrary: subnetParam.map((s) => `/v1/leases/${s}`) },
  { weight: 2, arbitrary: subnetParam.map((s) => `/v1/reservations/${s}`) },
  fc.array(nastyString().map(encodeURIComponent), { maxLength: 4 }).map((segs) => `/${segs.join("/")}`),
);
const query = fc.oneof(fc.constant(""), fc.dictionary(fc.string({ maxLength: 6 }), fc.string({ maxLength: 10 }), { maxKeys: 3 }).map((q) => `?${new URLSearchParams(q)}`), nastyString().map((s) => `?${s}`));
const printable = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 60 });
const reservation = fc.record({ subnet: fc.oneof(fc.integer({ min: 0, max: 255 }).map((i) => `10.244.${i}.0/24`), nastyString(["0.0.0.0/0", "10.244.0.0/16", "10.244.1.0/25"])), nodeName: fc.oneof(fc.constantFrom("node-1", "node-99", "reserved-2"), nastyString()) }, { requiredKeys: [] });
const body = fc.oneof(
  fc.constant(undefined),
  { weight: 3, arbitrary: reservation.map((r) => JSON.stringify(r)) },
  fc.tuple(reservation, fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 2 })).map(([r, extra]) => JSON.stringify({ ...r, ...extra })),
  fc.json({ maxDepth: 3 }),
  fc.string({ unit: "binary", maxLength: 200 }),
  fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
  fc.constantFrom("{", "[]", "null", '{"__proto__": {"admin": true}}', '{"constructor": {"prototype": {"x": 1}}}', "9".repeat(400), "x".repeat(2_000_000)),
);
const headers = fc.record({
  "content-type": fc.constantFrom("application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/problem+json", "", "application/json; charset=latin1", "*/*", "application/json, text/plain"),
  authorization: fc.oneof({ weight: 3, arbitrary: fc.constant(`Bearer ${TOKEN}`) }, fc.constantFrom("Bearer", "Bearer ", `bearer ${TOKEN}`, `Bearer ${TOKEN}x`, `Bearer ${TOKEN.slice(1)}`, "Basic YWRtaW46YWRtaW4=", `Bearer  ${TOKEN} `), printable.map((s) => `Bearer ${s}`)),
  accept: fc.constantFrom("application/json", "text/html", "*/*", "application/xml"),
  "x-forwarded-for": fc.constantFrom("127.0.0.1", "10.0.0.1, 127.0.0.1", "::1"),
  "content-length": printable,
  "transfer-encoding": fc.constantFrom("chunked", "gzip", "identity"),
  "x-junk": printable,
}, { requiredKeys: [] });
const request = fc.record({ method: fc.oneof({ weight: 3, arbitrary: fc.constantFrom("GET", "POST", "DELETE") }, fc.constantFrom(...METHODS)), path, query, headers, body });

describe("lease server REST (fuzz)", () => {
  const inputs = inputCounter("lease-server REST");

  it("answers every request with a non-5xx JSON error or success, and changes state only on an authorized success", async () => {
    let changes = 0;
    await fc.assert(fc.asyncProperty(request, async (r) => {
      inputs.add();
      const before = await snapshot();
      const res = await server.http.inject({
        method: r.method as "GET", url: r.path + r.query, headers: r.headers as Record<string, string>, ...(r.body !== undefined ? { payload: r.body } : {}),
      });
      const where = `${r.method} ${r.path.slice(0, 200)}${r.query.slice(0, 100)} -> ${res.statusCode} ${res.body.slice(0, 300)}`;
      expect(res.statusCode >= 500 && res.statusCode !== 503, `5xx: ${where}`).toBe(false);
      if (res.statusCode >= 400 && r.method.toUpperCase() !== "HEAD") {
        expect(String(res.headers["content-type"]), `error content type: ${where}`).toMatch(/json/);
        expect(() => JSON.parse(res.body), `error body is JSON: ${where}`).not.toThrow();
      }
      const after = await snapshot();
      const method = r.method.toUpperCase();
      const ok = res.statusCode >= 200 && res.statusCode < 300;
      const authorized = r.headers.authorization !== undefined && /^Bearer[ \t]+\S+[ \t]*$/i.test(r.headers.authorization) && r.headers.authorization.trim().split(/\s+/)[1] === TOKEN;
      const leaseChange = ok && authorized && method === "DELETE" && r.path.startsWith("/v1/leases/");
      const reservationChange = ok && authorized && (method === "POST" || method === "DELETE") && r.path.startsWith("/v1/reservations");
      if (!leaseChange) expect(after.leases, `leases changed: ${where}`).toEqual(before.leases);
      else {
        // A revoke removes exactly one lease.
        expect(after.leases.size).toBe(before.leases.size - 1);
        changes++;
      }
      if (!reservationChange) expect(after.reservations, `reservations changed: ${where}`).toEqual(before.reservations);
      else changes++;
    }), fuzzParams(1000));
    // The generator reaches the state-changing routes with valid requests, not only refusals.
    expect(changes).toBeGreaterThan(0);
    expect(lines.filter((l) => /unexpected error/.test(String(l.msg)))).toEqual([]);
  }, FUZZ_TIMEOUT_MS);
});
