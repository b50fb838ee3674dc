// The agent's local REST API: health, readiness, our lease, the peers and
// metrics. buildApi() wires routes without listening, so tests use inject().
//
// Plain node:http (http-listener.ts) rather than fastify. Success
// responses (status codes, JSON shapes, content types, HEAD) are the ones
// fastify produced for these routes; every error is an RFC 9457 problem
// (lib/src/problem.ts), as on the lease server.
//
// The one route that changes state, POST /v1/wireguard/rotate-key, needs the
// bearer token of --admin-token-file when one is configured; without one the
// agent listens only on loopback (config.ts), where local root may rotate.
import type { Registry } from "prom-client";
import { bearerToken, tokenMatches } from "../../lib/src/admin-token.js";
import { WeftError } from "../../lib/src/errors.js";
import type { Logger } from "../../lib/src/logger.js";
import { problem, problemFromError } from "../../lib/src/problem.js";
import { problemReply, serveReplies, type HttpListener, type Reply } from "./http-listener.js";

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

interface Request {
  readonly method: string;
  readonly url: string;
  readonly authorization?: string;
  readonly remote?: string;
}

export interface InjectResponse {
  readonly statusCode: number;
  readonly headers: Record<string, string>;
  readonly body: string;
  json(): unknown;
}

export interface AgentApi extends HttpListener {
  /** Runs one request through the routes without a socket (tests). */
  inject(req: string | { method?: string; url: string; headers?: Record<string, string> }): Promise<InjectResponse>;
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

export interface ApiDeps {
  readonly view: AgentView;
  readonly registry: Registry;
  readonly log: Logger;
  /** From --admin-token-file: POST routes then need "Authorization: Bearer <token>". */
  readonly adminToken?: string;
}

export function buildApi(deps: ApiDeps): AgentApi {
  const log = deps.log.child({ component: "api" });

  const routes: Record<string, () => Reply | Promise<Reply>> = {
    "/healthz": () => text(200, "ok"),
    "/readyz": () => {
      const s = deps.view.status();
      return s.ready ? text(200, "ready") : text(503, `not ready: ${s.reasons.join("; ")}`);
    },
    "/v1/lease": () => {
      const l = deps.view.lease();
      return l ? json(200, leaseJson(l)) : problemReply(problem("NOT_READY", "no lease yet: the agent is still acquiring one; /readyz says why", "/v1/lease"));
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

  /** undefined: allowed. */
  function refuseAdmin(req: Request, path: string): Reply | undefined {
    const presented = bearerToken(req.authorization);
    let err: WeftError | undefined;
    if (!deps.adminToken) {
      // Loopback only (config.ts); a token sent anyway is a mistake worth saying.
      if (presented !== undefined) err = new WeftError("PERMISSION_DENIED", "this agent takes no bearer token (no --admin-token-file); send the request without Authorization, or start the agent with --admin-token-file");
    } else if (presented === undefined) {
      err = new WeftError("UNAUTHENTICATED", "this route changes state and needs the agent's admin token; send Authorization: Bearer <the token in --admin-token-file>");
    } else if (!tokenMatches(presented, deps.adminToken)) {
      err = new WeftError("PERMISSION_DENIED", "the bearer token does not match the agent's --admin-token-file; send the token in that file");
    }
    if (!err) return undefined;
    // Never the token.
    log.warn({ route: `${req.method} ${path}`, remote: req.remote, code: err.code }, "admin request refused");
    return problemReply(problemFromError(err, path), err.code === "UNAUTHENTICATED" ? { "www-authenticate": 'Bearer realm="weft-agent"' } : undefined);
  }

  async function handle(req: Request): Promise<Reply> {
    const { method, url } = req;
    let path = pathOf(url);
    if (path.includes("%")) {
      try {
        path = decodeURI(path);
      } catch {
        return problemReply(problem("INVALID_ARGUMENT", `the URL path ${JSON.stringify(path)} has a malformed %-escape; check the request URL`, path));
      }
    }
    const table = method === "POST" ? postRoutes : method === "GET" || method === "HEAD" ? routes : undefined;
    const route = table && Object.hasOwn(table, path) ? table[path] : undefined;
    if (!route) {
      const other = Object.hasOwn(postRoutes, path) ? " (it takes POST)" : Object.hasOwn(routes, path) ? " (it takes GET)" : "";
      return problemReply(problem("NOT_FOUND", `no route ${method} ${path}${other}; the agent serves GET /healthz, /readyz, /v1/lease, /v1/peers, /metrics and POST /v1/wireguard/rotate-key`, path));
    }
    if (table === postRoutes) {
      const refused = refuseAdmin(req, path);
      if (refused) return refused;
    }
    try {
      return await route();
    } catch (err) {
      const p = problemFromError(err, path);
      if (p.code === "INTERNAL") log.error({ err }, "request failed");
      return problemReply(p);
    }
  }

  const listener = serveReplies((req) => handle({ method: req.method ?? "GET", url: req.url ?? "/", authorization: req.headers.authorization, remote: req.socket.remoteAddress }));
  return {
    ...listener,
    inject: async (req) => {
      const { method = "GET", url, headers = {} } = typeof req === "string" ? { url: req } : req;
      const r = await handle({ method: method.toUpperCase(), url, authorization: headers.authorization ?? headers.Authorization });
      const body = method.toUpperCase() === "HEAD" ? "" : r.body;
      return {
        statusCode: r.statusCode, headers: { ...r.headers, "content-type": r.type, "content-length": String(Buffer.byteLength(r.body)) }, body,
        json: () => JSON.parse(body),
      };
    },
  };
}
