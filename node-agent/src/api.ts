// The agent's local REST API: health, readiness, our lease, the peers and
// metrics. buildApi() wires routes without listening, so tests use inject().
import Fastify, { LogController } from "fastify";
import type { Registry } from "prom-client";
import { isWeftError, ErrorCodes } from "../../lib/src/errors.js";
import type { Logger } from "../../lib/src/logger.js";

export interface LeaseView {
  readonly subnet: string;
  readonly publicIP: string;
  readonly backendType: string;
  /** ISO 8601. */
  readonly expiresAt: string;
}

export interface PeerView {
  readonly nodeName: string;
  readonly subnet: string;
  readonly publicIP: string;
  readonly programmed: boolean;
  /** Why the peer is not programmed on purpose (rejected), if so. */
  readonly reason?: string;
}

export interface AgentView {
  ready(): boolean;
  lease(): LeaseView | undefined;
  peers(): PeerView[];
}

// Plain JSON Schema rather than TypeBox: the agent runs on every node, and
// TypeBox alone costs it about 15 MiB of RSS.
const str = { type: "string" } as const;
const LeaseSchema = obj({
  subnet: str, publicIP: str, backendType: str, expiresAt: str,
});
const PeerSchema = obj({
  nodeName: str, subnet: str, publicIP: str, programmed: { type: "boolean" }, reason: str,
});
const ErrorSchema = obj({ code: str, message: str });

function obj(properties: Record<string, unknown>, optional: readonly string[] = ["reason"]) {
  return { type: "object", properties, required: Object.keys(properties).filter((k) => !optional.includes(k)) } as const;
}

export function buildApi(deps: { view: AgentView; registry: Registry; log: Logger }) {
  const app = Fastify({ loggerInstance: deps.log.child({ component: "api" }), logController: new LogController({ disableRequestLogging: true }) });

  app.setErrorHandler((err, req, reply) => {
    if (isWeftError(err)) return reply.code(ErrorCodes[err.code].http).send({ code: err.code, message: err.message });
    const e = err as { statusCode?: number; message?: string };
    if (e.statusCode && e.statusCode < 500) return reply.code(e.statusCode).send({ code: "INVALID_ARGUMENT", message: e.message ?? "bad request" });
    req.log.error({ err }, "request failed");
    return reply.code(500).send({ code: "INTERNAL", message: "internal error" });
  });

  app.get("/healthz", async (_req, reply) => reply.type("text/plain").send("ok"));
  app.get("/readyz", async (_req, reply) =>
    deps.view.ready() ? reply.type("text/plain").send("ready") : reply.code(503).type("text/plain").send("not ready"));
  app.get("/v1/lease", { schema: { response: { 200: LeaseSchema, 503: ErrorSchema } } }, async (_req, reply) => {
    const l = deps.view.lease();
    if (!l) return reply.code(503).send({ code: "LEASE_NOT_FOUND", message: "no lease yet" });
    return l;
  });
  app.get("/v1/peers", { schema: { response: { 200: { type: "array", items: PeerSchema } } } }, async () => deps.view.peers());
  app.get("/metrics", async (_req, reply) => reply.type(deps.registry.contentType).send(await deps.registry.metrics()));
  return app;
}
