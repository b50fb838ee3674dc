// --metrics-listen: a second, read-only listener with /metrics, /healthz and
// /readyz only, so Prometheus and kubelet probes can reach every node while
// the REST API (whose POST routes change state) stays on loopback. It has its
// own three-route table on purpose: a route added to the admin API must never
// show up here by accident. Errors are RFC 9457 problems, as on the API.
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";
import { WeftError, errorMessage } from "../../lib/src/errors.js";
import type { Logger } from "../../lib/src/logger.js";
import { MAX_HEADER_BYTES, PROBLEM_CONTENT_TYPE, clientErrorListener, expectationListener, problem, problemFromError, type Problem } from "../../lib/src/problem.js";
import type { AgentStatus } from "./api.js";

export interface MetricsListenerDeps {
  readonly registry: Registry;
  readonly status: () => AgentStatus;
  readonly log: Logger;
}

export interface MetricsListener {
  /** Resolves with the URL; a bind failure is CONFIG_INVALID naming `flag` (--metrics-listen or WEFT_METRICS_LISTEN). */
  listen(o: { host: string; port: number; flag?: string }): Promise<string>;
  close(): Promise<void>;
  address(): AddressInfo | undefined;
}

interface Reply {
  readonly status: number;
  readonly type: string;
  readonly body: string;
}

const TEXT = "text/plain";
const PATHS = "GET /metrics, /healthz and /readyz";

const problemReply = (p: Problem): Reply => ({ status: p.status, type: `${PROBLEM_CONTENT_TYPE}; charset=utf-8`, body: JSON.stringify(p) });

export function buildMetricsListener(deps: MetricsListenerDeps): MetricsListener {
  const log = deps.log.child({ component: "metrics-listener" });
  const routes: Readonly<Record<string, () => Reply | Promise<Reply>>> = {
    "/metrics": async () => ({ status: 200, type: deps.registry.contentType, body: await deps.registry.metrics() }),
    "/healthz": () => ({ status: 200, type: TEXT, body: "ok" }),
    "/readyz": () => {
      const s = deps.status();
      return s.ready ? { status: 200, type: TEXT, body: "ready" } : { status: 503, type: TEXT, body: `not ready: ${s.reasons.join("; ")}` };
    },
  };

  async function handle(method: string, url: string): Promise<Reply> {
    const q = url.search(/[?#]/);
    const path = q < 0 ? url : url.slice(0, q);
    const route = Object.hasOwn(routes, path) ? routes[path] : undefined;
    if (!route || (method !== "GET" && method !== "HEAD")) {
      // As the agent's API answers a wrong method: there is no 405 in the error table.
      const detail = route ? `${path} takes GET or HEAD, not ${method}` : `no route ${method} ${path}`;
      return problemReply(problem("NOT_FOUND", `${detail}; this listener (--metrics-listen) is read-only and serves ${PATHS}; the REST API is on --http-listen`, path));
    }
    try {
      return await route();
    } catch (err) {
      log.error({ err }, "request failed");
      return problemReply(problemFromError(err, path));
    }
  }

  const server = createServer({ maxHeaderSize: MAX_HEADER_BYTES }, (req: IncomingMessage, res: ServerResponse) => {
    const method = req.method ?? "GET";
    void handle(method, req.url ?? "/").then((r) => {
      res.writeHead(r.status, { "content-type": r.type, "content-length": Buffer.byteLength(r.body) });
      res.end(method === "HEAD" ? undefined : r.body);
    });
  });
  server.on("clientError", clientErrorListener(MAX_HEADER_BYTES));
  server.on("checkExpectation", expectationListener());
  // Scrapers keep connections open between scrapes; as the API, no request timeout.
  server.keepAliveTimeout = 72_000;
  server.requestTimeout = 0;

  return {
    listen: ({ host, port, flag = "--metrics-listen" }) => new Promise<string>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => {
        const why = err.code === "EADDRINUSE" ? "the port is in use; pick another"
          : err.code === "EADDRNOTAVAIL" ? "no interface of this host has that address; use one it has, or 0.0.0.0"
          : err.code === "EACCES" ? "not allowed (ports below 1024 need privileges); pick a port above 1024"
          : "pick another address";
        reject(new WeftError("CONFIG_INVALID", `${flag} ${host.includes(":") ? `[${host}]` : host}:${port}: cannot listen (${err.code ?? errorMessage(err)}): ${why}`, { cause: err }));
      };
      server.once("error", onError);
      server.listen(port, host, () => {
        server.off("error", onError);
        const a = server.address() as AddressInfo;
        resolve(`http://${a.family === "IPv6" ? `[${a.address}]` : a.address}:${a.port}`);
      });
    }),
    close: () => new Promise<void>((resolve) => {
      if (!server.listening) return resolve();
      server.close(() => resolve());
      server.closeIdleConnections();
    }),
    address: () => (server.listening ? (server.address() as AddressInfo) : undefined),
  };
}
