// REST + metrics edge of the lease server (fastify). Per-request logs are off
// (warn level) so scrapes do not flood the log. buildHttpApi() does not
// listen, so tests use inject() and the OpenAPI writer needs no port.
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from "fastify";
import swagger from "@fastify/swagger";
import { Type, type TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import { ErrorCodes, WeftError, isWeftError } from "../../lib/src/errors.js";
import { formatCidr, formatIpv4 } from "../../lib/src/cidr.js";
import { subnetCount } from "../../lib/src/net-config.js";
import type { Lease } from "../../lib/src/lease.js";
import type { Logger } from "../../lib/src/logger.js";
import type { LeaseManager } from "./lease-manager.js";
import type { LeaseStore } from "./store/lease-store.js";
import type { ServerMetrics } from "./metrics.js";

const Problem = Type.Object({ error: Type.String({ description: "stable error code" }), message: Type.String() });
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

/** "10.244.3.0-24" (Flannel's key style) or "10.244.3.0/24" -> "10.244.3.0/24". */
function subnetFromPath(s: string): string {
  return s.includes("/") ? s : s.replace(/-(\d{1,2})$/, "/$1");
}

export interface HttpApiDeps {
  readonly manager: LeaseManager;
  readonly store: LeaseStore;
  readonly metrics: ServerMetrics;
  readonly log: Logger;
  readonly ready: () => boolean;
}

export async function buildHttpApi(deps: HttpApiDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.log.child({ component: "http" }, { level: "warn" }) as FastifyBaseLogger,
    // Reject what does not match the schema instead of quietly dropping or converting it.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false } },
    // Malformed URLs and headers get our error shape too.
    frameworkErrors: (err, _req, reply) => {
      void (reply as unknown as { code(n: number): { send(b: unknown): unknown } }).code(400).send({ error: "INVALID_ARGUMENT", message: `${err.message}; check the request URL (see api-docs/lease-server.openapi.json)` });
    },
  }).withTypeProvider<TypeBoxTypeProvider>();
  await app.register(swagger, {
    openapi: {
      info: { title: "weft lease server", version: "1.0.0", description: "Leases of node subnets, reservations, health and metrics. The gRPC API (weft.v1.LeaseService) is what agents use." },
    },
  });

  app.setErrorHandler((err, req, reply) => {
    if (isWeftError(err)) return reply.code(ErrorCodes[err.code].http).send({ error: err.code, message: err.message });
    const e = err as { validation?: unknown; statusCode?: number; message: string };
    if (e.validation || (e.statusCode && e.statusCode < 500)) {
      return reply.code(e.statusCode ?? 400).send({ error: "INVALID_ARGUMENT", message: `${e.message}; see api-docs/lease-server.openapi.json for the expected body` });
    }
    req.log.error({ err }, "unexpected error in HTTP handler");
    return reply.code(500).send({ error: "INTERNAL", message: "internal error; see the lease server log" });
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send({ error: "NOT_FOUND", message: `no route ${req.method} ${req.url}; see api-docs/lease-server.openapi.json` }));

  const { manager, store, metrics } = deps;
  const problems = { 400: Problem, 404: Problem, 409: Problem, 503: Problem };

  app.get("/healthz", { schema: { summary: "Liveness: the process serves requests", response: { 200: Type.Object({ status: Type.String() }) } } },
    async () => ({ status: "ok" }));
  app.get("/readyz", { schema: { summary: "Readiness: store open and lease feed running", response: { 200: Type.Object({ status: Type.String() }), 503: Type.Object({ status: Type.String() }) } } },
    async (_req, reply) => (deps.ready() ? { status: "ready" } : reply.code(503).send({ status: "not ready" })));

  app.get("/v1/leases", { schema: { summary: "All live leases", response: { 200: Type.Array(LeaseJson) } } },
    async () => (await store.listLeases()).leases.map(leaseJson));
  app.delete("/v1/leases/:subnet", { schema: { summary: "Revoke the lease on a subnet; watchers see it removed", params: SubnetParam, response: { 200: LeaseJson, ...problems } } },
    async (req) => {
      const subnet = subnetFromPath(req.params.subnet);
      const removed = await manager.revoke(subnet);
      if (!removed) throw new WeftError("LEASE_NOT_FOUND", `no lease on ${subnet}; GET /v1/leases lists the live ones`);
      return leaseJson(removed);
    });

  app.get("/v1/network", {
    schema: {
      summary: "The cluster network config (net-conf.json with defaults) and usage",
      response: { 200: Type.Object({ network: Type.String(), subnetLen: Type.Integer(), subnetMin: Type.String(), subnetMax: Type.String(), backend: Type.Record(Type.String(), Type.Unknown()), subnets: Type.Integer(), leases: Type.Integer() }) },
    },
  }, async () => {
    const cfg = manager.network;
    const { leases } = await store.listLeases();
    return { network: formatCidr(cfg.network), subnetLen: cfg.subnetLen, subnetMin: formatIpv4(cfg.subnetMin), subnetMax: formatIpv4(cfg.subnetMax), backend: { ...cfg.backend }, subnets: subnetCount(cfg), leases: leases.length };
  });

  app.get("/v1/reservations", { schema: { summary: "Subnets reserved for node names", response: { 200: Type.Array(ReservationJson) } } },
    async () => store.listReservations());
  app.post("/v1/reservations", { schema: { summary: "Reserve a subnet for a node name", body: ReservationJson, response: { 201: ReservationJson, ...problems } } },
    async (req, reply) => {
      await manager.reserve({ subnet: req.body.subnet, nodeName: req.body.nodeName });
      return reply.code(201).send({ subnet: req.body.subnet, nodeName: req.body.nodeName });
    });
  app.delete("/v1/reservations/:subnet", { schema: { summary: "Delete a reservation", params: SubnetParam, response: { 204: Type.Null(), ...problems } } },
    async (req, reply) => {
      const subnet = subnetFromPath(req.params.subnet);
      if (!(await manager.unreserve(subnet))) throw new WeftError("NOT_FOUND", `no reservation for ${subnet}; GET /v1/reservations lists them`);
      return reply.code(204).send(null);
    });

  app.get("/metrics", { schema: { summary: "Prometheus metrics (text exposition format)", response: { 200: Type.String() } } },
    async (_req, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));
  return app as unknown as FastifyInstance;
}
