// REST + metrics edge of the lease server (fastify). Per-request logs are off
// (warn level) so scrapes do not flood the log. buildHttpApi() does not
// listen, so tests use inject() and the OpenAPI writer needs no port.
// Every error, including the ones fastify and node's parser raise, leaves as
// one RFC 9457 problem (lib/src/problem.ts).
import type { Server } from "node:http";
import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyHttpOptions, type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import swagger from "@fastify/swagger";
import { Type, type TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import { WeftError, invalid, isWeftError } from "../../lib/src/errors.js";
import { MAX_HEADER_BYTES, PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE, clientErrorListener, expectationListener, problem, problemFromError, type Problem as ProblemBody } from "../../lib/src/problem.js";
import { formatCidr, formatIpv4, parseCidr } from "../../lib/src/cidr.js";
import { subnetCount } from "../../lib/src/net-config.js";
import type { Lease } from "../../lib/src/lease.js";
import type { Logger } from "../../lib/src/logger.js";
import type { LeaseManager } from "./lease-manager.js";
import type { LeaseStore } from "./store/lease-store.js";
import type { ServerMetrics } from "./metrics.js";
import { registerAdminAuth, type AdminAuth } from "./http-auth.js";
import { registerJoinTokenRoutes } from "./identity/join-token-routes.js";
import type { JoinTokens } from "./identity/join-tokens.js";
import type { Fleet } from "./fleet.js";
import { registerFleetRoutes } from "./fleet-routes.js";
import { registerUiRoutes } from "./ui-routes.js";

/** The largest REST request body: reservations and tokens are a few hundred bytes. */
export const HTTP_BODY_LIMIT = 64 * 1024;

const Problem = Type.Object({
  type: Type.String({ description: `a stable URI per code: ${PROBLEM_TYPE_BASE}<code in lower case with dashes>, e.g. ${PROBLEM_TYPE_BASE}lease-not-found` }),
  title: Type.String({ description: "a short fixed phrase per code" }),
  status: Type.Integer({ description: "the HTTP status" }),
  detail: Type.String({ description: "what went wrong and how to fix it (no detail for internal errors: see the server log)" }),
  code: Type.String({ description: "weft's error code (lib/src/errors.ts), e.g. LEASE_NOT_FOUND; match on this" }),
  instance: Type.Optional(Type.String({ description: "the request path" })),
}, { $id: "Problem", title: "Problem", description: "RFC 9457 problem details, served as application/problem+json" });
const ProblemRef = Type.Unsafe<ProblemBody>(Type.Ref("Problem"));
const problemResponse = (description: string) => ({ description, content: { [PROBLEM_CONTENT_TYPE]: { schema: ProblemRef } } });
const LeaseJson = Type.Object({
  subnet: Type.String({ description: "CIDR, e.g. 10.244.3.0/24" }),
  nodeName: Type.String(),
  publicIP: Type.String(),
  backendType: Type.Union([Type.Literal("vxlan"), Type.Literal("host-gw"), Type.Literal("wireguard")]),
  expiresAt: Type.Union([Type.String({ format: "date-time" }), Type.Null()], { description: "null for a lease that never expires" }),
  revision: Type.Integer(),
  vtepMac: Type.Optional(Type.String()),
  vni: Type.Optional(Type.Integer()),
  wireguardPublicKey: Type.Optional(Type.String()),
  wireguardListenPort: Type.Optional(Type.Integer()),
});
const ReservationJson = Type.Object({
  subnet: Type.String({ description: "a node subnet of the network, e.g. 10.244.7.0/24" }),
  nodeName: Type.String({ description: "the node name that gets this subnet" }),
}, { additionalProperties: false });
const SubnetParam = Type.Object({ subnet: Type.String({ description: "the subnet as 10.244.3.0-24 (or URL-encoded 10.244.3.0%2F24)" }) });

export function leaseJson(l: Lease) {
  return {
    subnet: l.subnet, nodeName: l.nodeName, publicIP: l.publicIP, backendType: l.attrs.type,
    expiresAt: l.expiresAt ? new Date(l.expiresAt).toISOString() : null, revision: l.revision,
    ...(l.attrs.type === "vxlan" ? { vtepMac: l.attrs.vtepMac, vni: l.attrs.vni } : {}),
    ...(l.attrs.type === "wireguard" ? { wireguardPublicKey: l.attrs.publicKey, wireguardListenPort: l.attrs.listenPort } : {}),
  };
}

/** "10.244.3.0-24" (Flannel's key style) or "10.244.3.0/24" -> "10.244.3.0/24"; anything else is a 400 naming the parameter. */
function subnetFromPath(s: string): string {
  const subnet = s.includes("/") ? s : s.replace(/-(\d{1,2})$/, "/$1");
  if (!parseCidr(subnet)) throw invalid("subnet", `${JSON.stringify(s)} is not a subnet`, "write it like 10.244.3.0-24 or 10.244.3.0%2F24");
  return subnet;
}

export interface HttpApiDeps {
  readonly manager: LeaseManager;
  readonly store: LeaseStore;
  readonly metrics: ServerMetrics;
  readonly log: Logger;
  readonly ready: () => boolean;
  /** Why the server is not ready (e.g. the store's write error), shown by /readyz. */
  readonly notReadyReason?: () => string | undefined;
  /** Credentials for the admin routes; none configured: they answer 401. */
  readonly admin?: AdminAuth;
  /** Serve HTTPS; with clientCa, request (not require) client certificates for admin.clientCertificates. */
  readonly https?: { readonly cert: Buffer; readonly key: Buffer; readonly clientCa?: Buffer };
  /** Join tokens (undefined without TLS on the gRPC port: the routes then say why). */
  readonly joinTokens?: JoinTokens;
  /** Every node's applied revision and health: GET /v1/nodes, GET /v1/events. */
  readonly fleet: Fleet;
}

function pathOnly(url: string): string {
  const q = url.indexOf("?");
  return q < 0 ? url : url.slice(0, q);
}

function sendProblem(reply: FastifyReply, p: ProblemBody): FastifyReply {
  return reply.code(p.status).type(PROBLEM_CONTENT_TYPE).send(p);
}

/** fastify's own errors (body parsing, validation, routing) as problems with the right status. */
function fastifyProblem(err: FastifyError, req: FastifyRequest): ProblemBody | undefined {
  const at = pathOnly(req.url);
  if (err.validation) return problem("INVALID_ARGUMENT", `${err.message}; see api-docs/lease-server.openapi.json for the expected ${err.validationContext ?? "request"}`, at);
  switch (err.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return problem("PAYLOAD_TOO_LARGE", `the request body is larger than ${HTTP_BODY_LIMIT} bytes (${HTTP_BODY_LIMIT / 1024} KiB), the limit of this API; send a smaller body`, at);
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return problem("UNSUPPORTED_MEDIA_TYPE", `content type ${JSON.stringify(req.headers["content-type"] ?? "")} is not accepted; send a JSON body with Content-Type: application/json`, at);
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return problem("INVALID_ARGUMENT", "the body is empty but Content-Type says JSON; send a JSON body, or no Content-Type", at);
    case "FST_ERR_BAD_URL":
    case "FST_ERR_MAX_PARAM_LENGTH":
      return problem("INVALID_ARGUMENT", `${err.message}; check the request URL (see api-docs/lease-server.openapi.json)`, at);
  }
  if (err.code === "FST_ERR_CTP_INVALID_JSON_BODY" || (err instanceof SyntaxError && err.statusCode === 400)) {
    // secure-json-parse refuses __proto__ and constructor.prototype keys with the same error.
    return problem("INVALID_ARGUMENT", "the body is not valid JSON (or has a __proto__ or constructor.prototype key); send one JSON object", at);
  }
  if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) return problem("INVALID_ARGUMENT", `${err.message}; see api-docs/lease-server.openapi.json`, at);
  return undefined;
}

export async function buildHttpApi(deps: HttpApiDeps): Promise<FastifyInstance> {
  const { manager, store, metrics } = deps;
  const countRejection = (p: ProblemBody) => {
    if (p.code === "PAYLOAD_TOO_LARGE") metrics.limitRejections.inc({ limit: "http_body" });
    if (p.code === "HEADERS_TOO_LARGE") metrics.limitRejections.inc({ limit: "http_headers" });
  };
  const tls = deps.https && {
    cert: deps.https.cert, key: deps.https.key, maxHeaderSize: MAX_HEADER_BYTES,
    ...(deps.https.clientCa ? { ca: deps.https.clientCa, requestCert: true, rejectUnauthorized: false } : {}),
  };
  const app = (Fastify as unknown as (o: FastifyHttpOptions<Server>) => FastifyInstance)({
    loggerInstance: deps.log.child({ component: "http" }, { level: "warn" }) as FastifyBaseLogger,
    // Reject what does not match the schema instead of quietly dropping or converting it.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false } },
    bodyLimit: HTTP_BODY_LIMIT,
    ...(tls ? { https: tls } : { http: { maxHeaderSize: MAX_HEADER_BYTES } }),
    // Node's parser answers oversized headers and malformed requests before fastify sees a request.
    clientErrorHandler: clientErrorListener(MAX_HEADER_BYTES, countRejection),
    frameworkErrors: (err: FastifyError, req: FastifyRequest, reply: FastifyReply) => {
      void sendProblem(reply as unknown as FastifyReply, fastifyProblem(err, req as FastifyRequest) ?? problem("INTERNAL", "internal error; see the lease server log", pathOnly(req.url)));
    },
  } as FastifyHttpOptions<Server>).withTypeProvider<TypeBoxTypeProvider>();
  await app.register(swagger, {
    openapi: {
      info: {
        title: "weft lease server", version: "1.0.0",
        description: "Leases of node subnets, reservations, health and metrics. The gRPC API (weft.v1.LeaseService) is what agents use. "
          + "Routes that change state need an admin credential (bearer token from --admin-token-file, or an HTTPS client certificate signed by --admin-client-ca). "
          + `Every error is an RFC 9457 problem (${PROBLEM_CONTENT_TYPE}) whose code is weft's error code.`,
      },
      components: {
        securitySchemes: {
          // OpenAPI 3.0 has no mutualTLS scheme; the admin client certificate is described in info and in each admin route.
          bearer: { type: "http", scheme: "bearer", description: "the token in the server's --admin-token-file (or, instead, an HTTPS client certificate signed by --admin-client-ca)" },
        },
      },
    },
    // Shared schemas keep their $id as the component name (#/components/schemas/Problem).
    refResolver: { buildLocalReference: (json, _base, _fragment, i) => (typeof json.$id === "string" ? json.$id : `def-${i}`) },
  });
  app.addSchema(Problem);
  // Bodies are JSON only: anything else is a 415, not a string that fails validation later.
  app.removeContentTypeParser("text/plain");

  app.setErrorHandler((err, req, reply) => {
    const at = pathOnly(req.url);
    let p: ProblemBody | undefined = isWeftError(err) ? problemFromError(err, at) : fastifyProblem(err as FastifyError, req);
    if (!p) {
      req.log.error({ err }, "unexpected error in HTTP handler");
      p = problemFromError(err, at);
    } else if (p.status >= 500) {
      // The problem may carry no detail (INTERNAL); the log keeps it.
      req.log.warn({ err, route: `${req.method} ${at}` }, "HTTP request failed");
    }
    countRejection(p);
    return sendProblem(reply, p);
  });
  app.setNotFoundHandler((req, reply) => sendProblem(reply, problem("NOT_FOUND", `no route ${req.method} ${pathOnly(req.url)}; see api-docs/lease-server.openapi.json`, pathOnly(req.url))));
  registerAdminAuth(app as unknown as FastifyInstance, deps.admin ?? {});

  const problems = {
    400: problemResponse("Invalid request (the detail names the field)"),
    404: problemResponse("Not found"),
    409: problemResponse("Conflict"),
    503: problemResponse("Unavailable"),
  };
  // Admin routes: config.admin makes http-auth.ts check credentials first.
  const admin = {
    config: { admin: true },
    security: [{ bearer: [] }],
    responses: {
      401: problemResponse("No admin credentials (WWW-Authenticate: Bearer)"),
      403: problemResponse("Wrong admin credentials"),
      413: problemResponse("Body over 64 KiB"),
      415: problemResponse("Body not JSON"),
    },
  } as const;

  app.get("/healthz", { schema: { summary: "Liveness: the process serves requests", response: { 200: Type.Object({ status: Type.String() }) } } },
    async () => ({ status: "ok" }));
  app.get("/readyz", { schema: { summary: "Readiness: store open and lease feed running", response: { 200: Type.Object({ status: Type.String() }), 503: Type.Object({ status: Type.String(), reason: Type.Optional(Type.String()) }) } } },
    async (_req, reply) => (deps.ready() ? { status: "ready" } : reply.code(503).send({ status: "not ready", ...(deps.notReadyReason?.() ? { reason: deps.notReadyReason()! } : {}) })));

  app.get("/v1/leases", { schema: { summary: "All live leases", response: { 200: Type.Array(LeaseJson) } } },
    async () => (await store.listLeases()).leases.map(leaseJson));
  app.delete("/v1/leases/:subnet", { config: admin.config, schema: {
    summary: "Revoke the lease on a subnet; watchers see it removed with reason \"revoked: <reason>\", and its agent re-acquires only after a back-off",
    security: admin.security, params: SubnetParam,
    querystring: Type.Object({ reason: Type.Optional(Type.String({ maxLength: 200, description: "why (at most 200 printable ASCII characters); the node's agent logs it" })) }),
    response: { 200: LeaseJson, ...problems, ...admin.responses } } },
    async (req) => {
      const subnet = subnetFromPath(req.params.subnet);
      const removed = await manager.revoke(subnet, req.query.reason || undefined);
      if (!removed) throw new WeftError("LEASE_NOT_FOUND", `no lease on ${subnet}; GET /v1/leases lists the live ones`);
      return leaseJson(removed);
    });

  app.get("/v1/network", {
    schema: {
      summary: "The cluster network config (net-conf.json with defaults) and usage",
      response: { 200: Type.Object({ network: Type.String(), subnetLen: Type.Integer(), subnetMin: Type.String(), subnetMax: Type.String(), backend: Type.Record(Type.String(), Type.Unknown()), subnets: Type.Integer(), leases: Type.Integer(), leaseTtlSeconds: Type.Number({ description: "the lease TTL (--lease-ttl); agents renew at half of it" }) }) },
    },
  }, async () => {
    const cfg = manager.network;
    const { leases } = await store.listLeases();
    return { network: formatCidr(cfg.network), subnetLen: cfg.subnetLen, subnetMin: formatIpv4(cfg.subnetMin), subnetMax: formatIpv4(cfg.subnetMax), backend: { ...cfg.backend }, subnets: subnetCount(cfg), leases: leases.length, leaseTtlSeconds: manager.ttlMs / 1000 };
  });

  const fleetRoutes = registerFleetRoutes(app as unknown as FastifyInstance, deps.fleet, store);
  registerUiRoutes(app as unknown as FastifyInstance);

  app.get("/v1/reservations", { schema: { summary: "Subnets reserved for node names", response: { 200: Type.Array(ReservationJson) } } },
    async () => store.listReservations());
  app.post("/v1/reservations", { config: admin.config, schema: { summary: "Reserve a subnet for a node name", security: admin.security, body: ReservationJson, response: { 201: ReservationJson, ...problems, ...admin.responses } } },
    async (req, reply) => {
      await manager.reserve({ subnet: req.body.subnet, nodeName: req.body.nodeName });
      fleetRoutes.reservationsChanged();
      return reply.code(201).send({ subnet: req.body.subnet, nodeName: req.body.nodeName });
    });
  app.delete("/v1/reservations/:subnet", { config: admin.config, schema: { summary: "Delete a reservation", security: admin.security, params: SubnetParam, response: { 204: Type.Null(), ...problems, ...admin.responses } } },
    async (req, reply) => {
      const subnet = subnetFromPath(req.params.subnet);
      if (!(await manager.unreserve(subnet))) throw new WeftError("NOT_FOUND", `no reservation for ${subnet}; GET /v1/reservations lists them`);
      fleetRoutes.reservationsChanged();
      return reply.code(204).send(null);
    });

  registerJoinTokenRoutes(app as unknown as FastifyInstance, deps.joinTokens, admin, problems);

  app.get("/metrics", { schema: { summary: "Prometheus metrics (text exposition format)", response: { 200: Type.String() } } },
    async (_req, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));
  app.server.on("checkExpectation", expectationListener());
  return app as unknown as FastifyInstance;
}
