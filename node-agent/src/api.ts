// The agent's local REST API: health, readiness, our lease, the peers and
// metrics. buildApi() wires routes without listening, so tests use inject().
//
// Plain node:http rather than fastify: the agent runs on every node and
// fastify alone cost it about 17 MiB of RSS for five GET routes. Responses
// (status codes, JSON shapes, content types, 404 and bad-URL bodies, HEAD) are
// the ones fastify produced for these routes.
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
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
  /** programmed, pending (not yet tried), failed (kernel refused; retried) or rejected (on purpose; see reason). */
  readonly state: "programmed" | "pending" | "failed" | "rejected";
  /** For a programmed peer: "vxlan", "direct" (VXLAN DirectRouting) or "host-gw". */
  readonly path?: string;
  /** Why a peer is rejected or failed, or why a programmed peer is not reached (no WireGuard handshake). */
  readonly reason?: string;
  /** For the wireguard backend: the device's view of the peer. */
  readonly wireguard?: WireguardPeerView;
}

export interface WireguardPeerView {
  readonly publicKey: string;
  readonly endpoint: string;
  /** ISO 8601; null = never. */
  readonly lastHandshake: string | null;
  readonly rxBytes: number;
  readonly txBytes: number;
}

export interface AgentStatus {
  readonly ready: boolean;
  /** Why not, when not ready. */
  readonly reasons: readonly string[];
}

export interface AgentView {
  status(): AgentStatus;
  lease(): LeaseView | undefined;
  peers(): Promise<PeerView[]>;
  rotateKey(): Promise<{ publicKey: string; previousPublicKey: string }>;
}

interface Reply {
  readonly statusCode: number;
  readonly type: string;
  readonly body: string;
}

export interface InjectResponse {
  readonly statusCode: number;
  readonly headers: Record<string, string>;
  readonly body: string;
  json(): unknown;
}

export interface AgentApi {
  listen(o: { host: string; port: number }): Promise<string>;
  close(): Promise<void>;
  /** Runs one request through the routes without a socket (tests). */
  inject(req: string | { method?: string; url: string }): Promise<InjectResponse>;
  /** The listening address, once listen() resolved. */
  address(): AddressInfo | undefined;
}

const JSON_TYPE = "application/json; charset=utf-8";
const TEXT = "text/plain";

const json = (statusCode: number, v: unknown): Reply => ({ statusCode, type: JSON_TYPE, body: JSON.stringify(v) });
const text = (statusCode: number, body: string): Reply => ({ statusCode, type: TEXT, body });

// The response schemas of the fastify version: only these fields, in this order.
const leaseJson = (l: LeaseView) => ({ subnet: l.subnet, publicIP: l.publicIP, backendType: l.backendType, expiresAt: l.expiresAt });
const peerJson = (p: PeerView) => ({
  nodeName: p.nodeName, subnet: p.subnet, publicIP: p.publicIP, programmed: p.programmed, state: p.state,
  ...(p.path !== undefined ? { path: p.path } : {}), ...(p.reason !== undefined ? { reason: p.reason } : {}),
  ...(p.wireguard ? { wireguard: { publicKey: p.wireguard.publicKey, endpoint: p.wireguard.endpoint, lastHandshake: p.wireguard.lastHandshake, rxBytes: p.wireguard.rxBytes, txBytes: p.wireguard.txBytes } } : {}),
});

/** The path part of a request URL, as fastify's router splits it (at the first ? or # after the leading character). */
function pathOf(url: string): string {
  for (let i = 1; i < url.length; i++) {
    const c = url.charCodeAt(i);
    if (c === 63 || c === 35) return url.slice(0, i);
  }
  return url;
}

export function buildApi(deps: { view: AgentView; registry: Registry; log: Logger }): AgentApi {
  const log = deps.log.child({ component: "api" });

  const routes: Record<string, () => Reply | Promise<Reply>> = {
    "/healthz": () => text(200, "ok"),
    "/readyz": () => {
      const s = deps.view.status();
      return s.ready ? text(200, "ready") : text(503, `not ready: ${s.reasons.join("; ")}`);
    },
    "/v1/lease": () => {
      const l = deps.view.lease();
      return l ? json(200, leaseJson(l)) : json(503, { code: "LEASE_NOT_FOUND", message: "no lease yet" });
    },
    "/v1/peers": async () => json(200, (await deps.view.peers()).map(peerJson)),
    "/metrics": async () => ({ statusCode: 200, type: deps.registry.contentType, body: await deps.registry.metrics() }),
  };
  const postRoutes: Record<string, () => Reply | Promise<Reply>> = {
    "/v1/wireguard/rotate-key": async () => {
      const r = await deps.view.rotateKey();
      log.info({ publicKey: r.publicKey }, "wireguard key rotated on request");
      return json(200, { publicKey: r.publicKey, previousPublicKey: r.previousPublicKey });
    },
  };

  async function handle(method: string, url: string): Promise<Reply> {
    let path = pathOf(url);
    if (path.includes("%")) {
      try {
        path = decodeURI(path);
      } catch {
        return { statusCode: 400, type: "application/json", body: JSON.stringify({ error: "Bad Request", code: "FST_ERR_BAD_URL", message: `'${path}' is not a valid url component`, statusCode: 400 }) };
      }
    }
    const table = method === "POST" ? postRoutes : method === "GET" || method === "HEAD" ? routes : undefined;
    const route = table && Object.hasOwn(table, path) ? table[path] : undefined;
    if (!route) {
      return json(404, { message: `Route ${method}:${url} not found`, error: "Not Found", statusCode: 404 });
    }
    try {
      return await route();
    } catch (err) {
      if (isWeftError(err)) return json(ErrorCodes[err.code].http, { code: err.code, message: err.message });
      log.error({ err }, "request failed");
      return json(500, { code: "INTERNAL", message: "internal error" });
    }
  }

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const method = req.method ?? "GET";
    void handle(method, req.url ?? "/").then((r) => {
      res.writeHead(r.statusCode, { "content-type": r.type, "content-length": Buffer.byteLength(r.body) });
      res.end(method === "HEAD" ? undefined : r.body);
    });
  });
  // fastify's defaults.
  server.keepAliveTimeout = 72_000;
  server.requestTimeout = 0;

  return {
    listen: ({ host, port }) => new Promise<string>((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      server.once("error", onError);
      server.listen(port, host, () => {
        server.off("error", onError);
        const a = server.address() as AddressInfo;
        const address = `http://${a.family === "IPv6" ? `[${a.address}]` : a.address}:${a.port}`;
        log.info(`Server listening at ${address}`);
        resolve(address);
      });
    }),
    close: () => new Promise<void>((resolve) => {
      if (!server.listening) return resolve();
      server.close(() => resolve());
      server.closeIdleConnections();
    }),
    inject: async (req) => {
      const { method = "GET", url } = typeof req === "string" ? { url: req } : req;
      const r = await handle(method.toUpperCase(), url);
      const body = method.toUpperCase() === "HEAD" ? "" : r.body;
      return {
        statusCode: r.statusCode, headers: { "content-type": r.type, "content-length": String(Buffer.byteLength(r.body)) }, body,
        json: () => JSON.parse(body),
      };
    },
    address: () => (server.listening ? (server.address() as AddressInfo) : undefined),
  };
}
