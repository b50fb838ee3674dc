// REST for the fleet: GET /v1/nodes (every node's state) and GET /v1/events
// (server-sent events: the same, live, for the status page at /ui/).
import type { FastifyInstance } from "fastify";
import { Type } from "@fastify/type-provider-typebox";
import type { LeaseStore } from "./store/lease-store.js";
import { AGENT_STATES, type Fleet, type FleetChanges } from "./fleet.js";

const nullable = <T extends ReturnType<typeof Type.String>>(t: T) => Type.Union([t, Type.Null()]);
const AgentCounts = Type.Object(Object.fromEntries(AGENT_STATES.map((s) => [s, Type.Integer()])), { description: "nodes by state" });
const Summary = {
  revision: Type.Integer({ description: "this server's newest lease-feed revision" }),
  agents: AgentCounts,
  convergence: Type.Object({
    lastSeconds: Type.Union([Type.Number(), Type.Null()], { description: "how long the last converged change took to be applied by every connected agent" }),
    lastRevision: Type.Union([Type.Integer(), Type.Null()]),
    pendingRevisions: Type.Integer({ description: "changes not yet applied by every connected agent" }),
  }),
};
export const NodeJsonSchema = Type.Object({
  nodeName: Type.String(),
  state: Type.Union(AGENT_STATES.map((s) => Type.Literal(s)), { description: "converged: applied the newest revision; lagging: behind; unhealthy: its agent reports problems; disconnected: a lease but no status stream to this server" }),
  subnet: nullable(Type.String({ description: "null: connected but holds no lease" })),
  publicIP: nullable(Type.String()),
  backendType: nullable(Type.String()),
  leaseExpiresAt: Type.Union([Type.String({ format: "date-time" }), Type.Null()]),
  leaseRevision: Type.Union([Type.Integer(), Type.Null()], { description: "revision of the lease's last change (its last renewal)" }),
  connected: Type.Boolean({ description: "the agent has a ReportStatus stream open to this server" }),
  appliedRevision: Type.Union([Type.Integer(), Type.Null()], { description: "the lease-feed revision its kernel reflects; null: never reported here" }),
  lagRevisions: Type.Union([Type.Integer(), Type.Null()]),
  healthy: Type.Union([Type.Boolean(), Type.Null()]),
  problems: Type.Array(Type.String(), { description: "why not healthy (the agent's /readyz reasons)" }),
  lastReportAt: Type.Union([Type.String({ format: "date-time" }), Type.Null()]),
  agentVersion: nullable(Type.String()),
  peers: Type.Union([Type.Integer(), Type.Null()], { description: "peers programmed in its kernel" }),
}, { $id: "Node", title: "Node" });
const NodeRef = Type.Unsafe<unknown>(Type.Ref("Node"));
const NodesJsonSchema = Type.Object({ ...Summary, nodes: Type.Array(NodeRef) });

const KEEPALIVE_MS = 15_000;

/** One server-sent event. */
const frame = (event: string, data: unknown): string => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
/** More than this unsent to one event stream: it is ended (a full /v1/nodes body at 5,000 nodes is ~2 MB). */
const MAX_UNSENT_BYTES = 8 << 20;

export interface FleetRoutes {
  /** Reservations changed through this server: event streams get the new list. */
  reservationsChanged(): void;
}

export function registerFleetRoutes(app: FastifyInstance, fleet: Fleet, store: LeaseStore): FleetRoutes {
  app.addSchema(NodeJsonSchema);
  app.get("/v1/nodes", {
    schema: {
      summary: "Every node (a live lease or a status stream): its state, applied revision, health; and the fleet's convergence",
      description: "With several lease servers each one knows the agents that report to it; a node reporting to another server is disconnected here.",
      response: { 200: NodesJsonSchema },
    },
  }, async () => fleet.nodes());

  const streams = new Map<(event: string, data: unknown) => void, () => void>();
  app.get("/v1/events", {
    schema: {
      summary: "Server-sent events for the status page: `nodes` (the GET /v1/nodes body) and `reservations` first, then `node` (one node added or changed), `node-removed` ({nodeName}), `summary` (revision, agents, convergence) and `reservations`, batched every 250 ms",
      response: { 200: { description: "text/event-stream", content: { "text/event-stream": { schema: Type.String() } } } },
    },
  }, async (req, reply) => {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-store", connection: "keep-alive", "x-accel-buffering": "no" });
    const send = (event: string, data: unknown) => void res.write(frame(event, data));
    send("nodes", fleet.nodes());
    send("reservations", await store.listReservations());
    const onChanges = (c: FleetChanges) => {
      // One write per batch: thousands of small writes would each cost a syscall.
      let out = "";
      for (const n of c.nodes) out += frame("node", n);
      for (const name of c.removed) out += frame("node-removed", { nodeName: name });
      out += frame("summary", c.summary);
      // A page that does not read (a background tab, a dead link) must not pile up memory here: end its
      // stream; EventSource reconnects and starts over from a fresh `nodes` event.
      if (res.writableLength > MAX_UNSENT_BYTES) return void res.end();
      res.write(out);
    };
    const unsubscribe = fleet.subscribe(onChanges);
    streams.set(send, () => res.end());
    const keepalive = setInterval(() => res.write(": keepalive\n\n"), KEEPALIVE_MS);
    keepalive.unref();
    const close = () => {
      clearInterval(keepalive);
      unsubscribe();
      streams.delete(send);
    };
    req.raw.on("close", close);
    res.on("error", close);
  });

  // Event streams never end on their own: closing the server waits for open requests, so end them first.
  app.addHook("preClose", async () => {
    for (const end of [...streams.values()]) end();
  });

  return {
    reservationsChanged() {
      if (streams.size === 0) return;
      store.listReservations().then((r) => { for (const s of streams.keys()) s("reservations", r); }, () => {});
    },
  };
}
