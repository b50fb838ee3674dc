// Every error of the lease server's REST API is one RFC 9457 problem with the
// right status, over a real socket where inject() would skip the layer that
// raises it (node's parser, body limits).
import { connect } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { WeftError } from "../../lib/src/errors.js";
import { SqliteLeaseStore } from "../src/store/sqlite-lease-store.js";
import { httpApi, TOKEN } from "./http-fixture.js";

const PROBLEM = "application/problem+json; charset=utf-8";
const auth = { authorization: `Bearer ${TOKEN}` };

/** Sends raw bytes and returns the whole answer (the server closes or we stop after the body). */
function raw(base: string, request: string | Buffer): Promise<{ status: number; headers: string; body: string }> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const s = connect(Number(port), hostname);
    let data = "";
    const t = setTimeout(() => { s.destroy(); reject(new Error(`no answer in 10 s: ${data}`)); }, 10_000);
    s.on("error", (e) => { if (!data) { clearTimeout(t); reject(e); } });
    s.on("data", (d) => (data += d));
    s.on("close", () => {
      clearTimeout(t);
      const [head, ...rest] = data.split("\r\n\r\n");
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head!)?.[1]), headers: head!, body: rest.join("\r\n\r\n") });
    });
    s.end(request);
  });
}

function expectProblem(body: unknown, status: number, code: string, detail?: RegExp) {
  expect(body).toMatchObject({ type: `https://weft.dev/problems/${code.toLowerCase().replace(/_/g, "-")}`, title: expect.any(String), status, code, detail: expect.any(String) });
  expect(Object.keys(body as object).sort()).toEqual(expect.arrayContaining(["code", "detail", "status", "title", "type"]));
  expect(Object.keys(body as object).every((k) => ["type", "title", "status", "detail", "code", "instance"].includes(k))).toBe(true);
  if (detail) expect((body as { detail: string }).detail).toMatch(detail);
}

describe("lease server REST errors (RFC 9457 problems)", () => {
  let api: Awaited<ReturnType<typeof httpApi>>;
  afterEach(async () => api.close());

  it("unknown route: 404 NOT_FOUND with the path as instance", async () => {
    api = await httpApi();
    const r = await api.app.inject("/v1/nope?x=1");
    expect(r.statusCode).toBe(404);
    expect(r.headers["content-type"]).toBe(PROBLEM);
    expectProblem(r.json(), 404, "NOT_FOUND", /no route GET \/v1\/nope/);
    expect(r.json()).toMatchObject({ instance: "/v1/nope", title: "Not found" });
  });

  it("a WeftError from a handler keeps its code, status and message", async () => {
    api = await httpApi({ admin: { token: TOKEN } });
    const r = await api.app.inject({ method: "DELETE", url: "/v1/leases/10.244.9.0-24", headers: auth });
    expect(r.statusCode).toBe(404);
    expect(r.headers["content-type"]).toBe(PROBLEM);
    expectProblem(r.json(), 404, "LEASE_NOT_FOUND", /^no lease on 10\.244\.9\.0\/24; GET \/v1\/leases/);
    expect(r.json()).toMatchObject({ title: "Lease not found", instance: "/v1/leases/10.244.9.0-24" });
    const dup = { subnet: "10.244.7.0/24", nodeName: "n7" };
    expect((await api.app.inject({ method: "POST", url: "/v1/reservations", headers: auth, payload: dup })).statusCode).toBe(201);
    const again = await api.app.inject({ method: "POST", url: "/v1/reservations", headers: auth, payload: { ...dup, nodeName: "n8" } });
    expect(again.statusCode).toBe(409);
    expectProblem(again.json(), 409, "ALREADY_EXISTS");
  });

  it("schema violations: 400 INVALID_ARGUMENT naming the field", async () => {
    api = await httpApi({ admin: { token: TOKEN } });
    const post = (payload: unknown) => api.app.inject({ method: "POST", url: "/v1/reservations", headers: auth, payload: payload as object });
    const missing = await post({ subnet: "10.244.2.0/24" });
    expect(missing.statusCode).toBe(400);
    expectProblem(missing.json(), 400, "INVALID_ARGUMENT", /nodeName/);
    const extra = await post({ subnet: "10.244.2.0/24", nodeName: "n", extra: 1 });
    expectProblem(extra.json(), 400, "INVALID_ARGUMENT", /additional properties/);
    const wrongType = await post({ subnet: "10.244.2.0/24", nodeName: 123 });
    expectProblem(wrongType.json(), 400, "INVALID_ARGUMENT", /nodeName.*string/);
    const outside = await post({ subnet: "10.99.0.0/24", nodeName: "n" });
    expectProblem(outside.json(), 400, "INVALID_ARGUMENT", /^subnet: /);
    for (const url of ["/v1/leases/zzz", "/v1/leases/%00", "/v1/reservations/10.244.1.0-99", "/v1/leases/10.244.1.7-24"]) {
      const r = await api.app.inject({ method: "DELETE", url, headers: auth });
      expect(r.statusCode, url).toBe(400);
      expectProblem(r.json(), 400, "INVALID_ARGUMENT", /^subnet: ".*" is not a subnet; write it like 10\.244\.3\.0-24/);
    }
    const proto = await api.app.inject({ method: "POST", url: "/v1/reservations", headers: { ...auth, "content-type": "application/json" }, payload: '{"__proto__": {"admin": true}, "subnet": "10.244.1.0/24", "nodeName": "a"}' });
    expect(proto.statusCode).toBe(400);
    expectProblem(proto.json(), 400, "INVALID_ARGUMENT", /__proto__/);
  });

  it("over a socket: bad JSON 400, wrong content type 415, body over 64 KiB 413 (counted), bad URL 400", async () => {
    api = await httpApi({ admin: { token: TOKEN } });
    const base = await api.listen();
    const post = (body: string, type = "application/json") => fetch(`${base}/v1/reservations`, { method: "POST", headers: { ...auth, "content-type": type }, body });

    const badJson = await post('{"subnet": "10.244.2.0/24",');
    expect(badJson.status).toBe(400);
    expect(badJson.headers.get("content-type")).toBe(PROBLEM);
    expectProblem(await badJson.json(), 400, "INVALID_ARGUMENT", /not valid JSON/);

    const text = await post("subnet=10.244.2.0/24", "text/plain");
    expect(text.status).toBe(415);
    expectProblem(await text.json(), 415, "UNSUPPORTED_MEDIA_TYPE", /"text\/plain" is not accepted.*application\/json/);

    expect(await api.rejections("http_body")).toBe(0);
    const big = await post(JSON.stringify({ subnet: "10.244.2.0/24", nodeName: "x".repeat(70 * 1024) }));
    expect(big.status).toBe(413);
    expectProblem(await big.json(), 413, "PAYLOAD_TOO_LARGE", /larger than 65536 bytes/);
    expect(await api.rejections("http_body")).toBe(1);
    // Just under the limit is parsed (and then refused for what it says, not for its size).
    const under = await post(JSON.stringify({ subnet: "10.244.2.0/24", nodeName: "x".repeat(60 * 1024) }));
    expect(under.status).toBe(400);
    expectProblem(await under.json(), 400, "INVALID_ARGUMENT");

    // Chunked, so no Content-Length announces the size: the limit still holds while reading.
    const chunked = await raw(base, `POST /v1/reservations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${(70 * 1024).toString(16)}\r\n${"x".repeat(70 * 1024)}\r\n0\r\n\r\n`);
    expect(chunked.status).toBe(413);
    expect(chunked.headers).toMatch(/content-type: application\/problem\+json/i);
    expectProblem(JSON.parse(chunked.body), 413, "PAYLOAD_TOO_LARGE");
    expect(await api.rejections("http_body")).toBe(2);

    const badUrl = await fetch(`${base}/v1/leases/%E0%A4%A`);
    expect(badUrl.status).toBe(400);
    expectProblem(await badUrl.json(), 400, "INVALID_ARGUMENT", /URL/);
  });

  it("over a socket: headers over 16 KiB get 431 HEADERS_TOO_LARGE as a problem (counted), a malformed request 400", async () => {
    api = await httpApi();
    const base = await api.listen();
    const r = await raw(base, `GET /v1/leases HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20 * 1024)}\r\n\r\n`);
    expect(r.status).toBe(431);
    expect(r.headers).toMatch(/content-type: application\/problem\+json/i);
    expectProblem(JSON.parse(r.body), 431, "HEADERS_TOO_LARGE", /16 KiB/);
    expect(await api.rejections("http_headers")).toBe(1);

    const bad = await raw(base, "GARBAGE\r\n\r\n");
    expect(bad.status).toBe(400);
    expectProblem(JSON.parse(bad.body), 400, "INVALID_ARGUMENT", /malformed HTTP request/);
    const expectation = await raw(base, "GET /v1/leases HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nConnection: close\r\n\r\n");
    expect(expectation.status).toBe(417);
    expectProblem(JSON.parse(expectation.body), 417, "EXPECTATION_FAILED", /Expect: "200-ok" is not supported/);
    // Headers just under the limit are served.
    expect((await fetch(`${base}/v1/leases`, { headers: { "x-big": "a".repeat(8 * 1024) } })).status).toBe(200);
  });

  it("an unexpected failure is a 500 INTERNAL without its details (logged instead)", async () => {
    const store = new SqliteLeaseStore(":memory:");
    store.listLeases = async () => { throw new Error("SQLITE_IOERR: disk I/O error at /var/lib/weft/secret-path"); };
    api = await httpApi({ store });
    const r = await api.app.inject("/v1/leases");
    expect(r.statusCode).toBe(500);
    expect(r.headers["content-type"]).toBe(PROBLEM);
    expectProblem(r.json(), 500, "INTERNAL");
    expect(r.body).not.toMatch(/SQLITE|secret-path/);
    expect(api.lines.some((l) => l.msg === "unexpected error in HTTP handler" && JSON.stringify(l.err).includes("SQLITE_IOERR"))).toBe(true);
  });

  it("a store WeftError keeps its code, status and message (503 STORE_UNAVAILABLE)", async () => {
    const store = new SqliteLeaseStore(":memory:");
    store.listLeases = async () => { throw new WeftError("STORE_UNAVAILABLE", "etcd list leases failed; check --store endpoints"); };
    api = await httpApi({ store });
    const r = await api.app.inject("/v1/leases");
    expect(r.statusCode).toBe(503);
    expectProblem(r.json(), 503, "STORE_UNAVAILABLE", /check --store endpoints/);
  });
});
