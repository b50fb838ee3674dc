// api-docs/node-agent.openapi.json is written by hand (the agent's API is plain
// node:http, with no route schemas to generate it from), so this test keeps it
// honest: it drives the real handler through every documented route and
// answer and validates each status, content type and body against the
// document. weftctl's agent client types are generated from the same file.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Ajv } from "ajv";
import { describe, expect, it } from "vitest";
import { WeftError } from "../../lib/src/errors.js";
import { buildApi, type AgentView, type InjectResponse, type PeerView } from "../src/api.js";
import { createAgentMetrics } from "../src/metrics.js";
import { silentLog } from "./helpers/fixtures.js";

interface Operation { responses: Record<string, { content?: Record<string, { schema: unknown }> }> }
const doc = JSON.parse(readFileSync(join(import.meta.dirname, "../../api-docs/node-agent.openapi.json"), "utf8")) as {
  openapi: string; paths: Record<string, Record<string, Operation>>;
};

// strict: false because the document has OpenAPI keys (paths, info) that are not JSON Schema.
const ajv = new Ajv({ strict: false, allErrors: true });
ajv.addFormat("date-time", (s: string) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(s) && !Number.isNaN(Date.parse(s)));
ajv.addSchema(doc, "agent");
const pointer = (...parts: string[]) => parts.map((p) => p.replace(/~/g, "~0").replace(/\//g, "~1")).join("/");

const seen = new Set<string>();

/** Fails unless the document declares this status and content type for the route, and the body fits its schema. */
function conforms(method: string, path: string, r: InjectResponse): void {
  const op = doc.paths[path]?.[method.toLowerCase()];
  expect(op, `${method} ${path} is in the document`).toBeDefined();
  const status = String(r.statusCode);
  const declared = op!.responses[status];
  expect(declared, `${method} ${path} answered ${status}: the document lists ${Object.keys(op!.responses).join(", ")}`).toBeDefined();
  const type = r.headers["content-type"]!.split(";")[0]!.trim();
  const media = declared!.content?.[type];
  expect(media, `${method} ${path} ${status} answered ${type}: the document lists ${Object.keys(declared!.content ?? {}).join(", ")}`).toBeDefined();
  const body = type.endsWith("json") ? r.json() : r.body;
  const validate = ajv.getSchema(`agent#/${pointer("paths", path, method.toLowerCase(), "responses", status, "content", type, "schema")}`)!;
  expect(validate(body), `${method} ${path} ${status}: ${ajv.errorsText(validate.errors)}\n${r.body}`).toBe(true);
  seen.add(`${method.toLowerCase()} ${path} ${status}`);
}

const LEASE = { subnet: "10.244.3.0/24", publicIP: "198.18.0.3", backendType: "wireguard", expiresAt: "2030-01-01T00:00:00.000Z" };
const PEERS: PeerView[] = [
  { nodeName: "node-2", subnet: "10.244.2.0/24", publicIP: "198.18.0.2", programmed: true, state: "programmed", path: "vxlan" },
  { nodeName: "node-4", subnet: "10.244.4.0/24", publicIP: "198.18.0.4", programmed: false, state: "pending" },
  { nodeName: "node-5", subnet: "10.244.5.0/24", publicIP: "198.18.0.5", programmed: false, state: "failed", reason: "replace route 10.244.5.0/24: ENETUNREACH" },
  { nodeName: "node-6", subnet: "10.244.6.0/24", publicIP: "198.18.1.6", programmed: false, state: "rejected", reason: "public IP 198.18.1.6 is not on eth0's subnet" },
  {
    nodeName: "node-7", subnet: "10.244.7.0/24", publicIP: "198.18.0.7", programmed: true, state: "programmed", path: "wireguard",
    wireguard: { publicKey: Buffer.alloc(32, 7).toString("base64"), endpoint: "198.18.0.7:51820", lastHandshake: "2026-12-07T10:00:00.000Z", rxBytes: 1024, txBytes: 2048 },
  },
  {
    nodeName: "node-8", subnet: "10.244.8.0/24", publicIP: "198.18.0.8", programmed: true, state: "programmed", path: "wireguard", reason: "no WireGuard handshake yet",
    wireguard: { publicKey: Buffer.alloc(32, 8).toString("base64"), endpoint: "198.18.0.8:51820", lastHandshake: null, rxBytes: 0, txBytes: 0 },
  },
];
const TOKEN = "t".repeat(40);

function api(over: Partial<AgentView> = {}, adminToken?: string) {
  const view: AgentView = {
    status: () => ({ ready: true, reasons: [] }),
    lease: () => LEASE,
    peers: async () => PEERS,
    rotateKey: async () => ({ publicKey: Buffer.alloc(32, 9).toString("base64"), previousPublicKey: Buffer.alloc(32, 1).toString("base64") }),
    ...over,
  };
  return buildApi({ view, registry: createAgentMetrics().registry, log: silentLog, adminToken });
}

describe("api-docs/node-agent.openapi.json", () => {
  it("is OpenAPI 3.0 and describes every answer of the real handler", async () => {
    expect(doc.openapi).toMatch(/^3\.0\./);
    const ok = api();
    for (const path of ["/healthz", "/readyz", "/v1/lease", "/v1/peers", "/metrics"]) conforms("GET", path, await ok.inject(path));
    conforms("POST", "/v1/wireguard/rotate-key", await ok.inject({ method: "POST", url: "/v1/wireguard/rotate-key" }));
    expect((await ok.inject("/v1/peers")).json()).toHaveLength(PEERS.length);

    const starting = api({ status: () => ({ ready: false, reasons: ["no lease yet", "dataplane: 1 of 2 peers not programmed"] }), lease: () => undefined });
    conforms("GET", "/readyz", await starting.inject("/readyz"));
    conforms("GET", "/v1/lease", await starting.inject("/v1/lease"));

    const broken = api({
      peers: async () => { throw new Error("boom"); },
      rotateKey: async () => { throw new WeftError("NOT_SUPPORTED", "the vxlan backend has no WireGuard key"); },
    });
    conforms("GET", "/v1/peers", await broken.inject("/v1/peers"));
    conforms("POST", "/v1/wireguard/rotate-key", await broken.inject({ method: "POST", url: "/v1/wireguard/rotate-key" }));
    const noLease = api({ rotateKey: async () => { throw new WeftError("NOT_READY", "no lease yet"); } });
    conforms("POST", "/v1/wireguard/rotate-key", await noLease.inject({ method: "POST", url: "/v1/wireguard/rotate-key" }));
    const failing = api({ rotateKey: async () => { throw new Error("EIO"); } });
    conforms("POST", "/v1/wireguard/rotate-key", await failing.inject({ method: "POST", url: "/v1/wireguard/rotate-key" }));

    const guarded = api({}, TOKEN);
    conforms("POST", "/v1/wireguard/rotate-key", await guarded.inject({ method: "POST", url: "/v1/wireguard/rotate-key" }));
    conforms("POST", "/v1/wireguard/rotate-key", await guarded.inject({ method: "POST", url: "/v1/wireguard/rotate-key", headers: { authorization: "Bearer wrong" } }));
    conforms("POST", "/v1/wireguard/rotate-key", await guarded.inject({ method: "POST", url: "/v1/wireguard/rotate-key", headers: { authorization: `Bearer ${TOKEN}` } }));
    const notFound = await ok.inject({ method: "POST", url: "/healthz" });
    expect(notFound.statusCode).toBe(404);
    const problem = ajv.getSchema("agent#/components/schemas/Problem")!;
    expect(problem(notFound.json()), ajv.errorsText(problem.errors)).toBe(true);

    // Every answer the document promises was produced above: a documented route or status the agent lost fails here.
    const documented = Object.entries(doc.paths).flatMap(([path, ops]) => Object.entries(ops).flatMap(([m, op]) => Object.keys(op.responses).map((s) => `${m} ${path} ${s}`)));
    const unexercised = documented.filter((d) => !seen.has(d) && !/ 404$/.test(d));
    expect(unexercised).toEqual([]);
  });

  it("rejects a body the document does not allow (the check can fail)", async () => {
    const extra = api({ lease: () => ({ ...LEASE, backendType: "ipip" }) });
    await expect(extra.inject("/v1/lease").then((r) => conforms("GET", "/v1/lease", r))).rejects.toThrow(/must be equal to one of the allowed values/);
  });
});
