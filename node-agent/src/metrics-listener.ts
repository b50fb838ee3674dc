// --metrics-listen: a second, read-only listener with /metrics, /healthz and
// /readyz only, so Prometheus and kubelet probes can reach every node while
// the REST API (whose POST routes change state) stays on loopback. It has its
// own three-route table on purpose: a route added to the admin API must never
// show up here by accident. Errors are RFC 9457 problems, as on the API.
import type { Registry } from "prom-client";
import type { Logger } from "../../lib/src/logger.js";
import { problem, problemFromError } from "../../lib/src/problem.js";
import type { AgentStatus } from "./api.js";
import { problemReply, serveReplies, type HttpListener, type Reply } from "./http-listener.js";

export interface MetricsListenerDeps {
  readonly registry: Registry;
  readonly status: () => AgentStatus;
  readonly log: Logger;
}

export type MetricsListener = HttpListener;

const TEXT = "text/plain";
const PATHS = "GET /metrics, /healthz and /readyz";

export function buildMetricsListener(deps: MetricsListenerDeps): MetricsListener {
  const log = deps.log.child({ component: "metrics-listener" });
  const routes: Readonly<Record<string, () => Reply | Promise<Reply>>> = {
    "/metrics": async () => ({ statusCode: 200, type: deps.registry.contentType, body: await deps.registry.metrics() }),
    "/healthz": () => ({ statusCode: 200, type: TEXT, body: "ok" }),
    "/readyz": () => {
      const s = deps.status();
      return s.ready ? { statusCode: 200, type: TEXT, body: "ready" } : { statusCode: 503, type: TEXT, body: `not ready: ${s.reasons.join("; ")}` };
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

  return serveReplies((req) => handle(req.method ?? "GET", req.url ?? "/"));
}
