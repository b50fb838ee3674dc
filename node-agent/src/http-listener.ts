// The agent's HTTP listeners (the REST API of api.ts and the read-only
// --metrics-listen of metrics-listener.ts) on plain node:http rather than
// fastify, which alone cost the agent about 17 MiB of RSS. One reply type,
// RFC 9457 problems also for what node's parser answers by itself, fastify's
// connection timeouts, and bind errors that name the flag.
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { WeftError, errorMessage } from "../../lib/src/errors.js";
import { MAX_HEADER_BYTES, PROBLEM_CONTENT_TYPE, clientErrorListener, expectationListener, type Problem } from "../../lib/src/problem.js";

export interface Reply {
  readonly statusCode: number;
  readonly type: string;
  readonly body: string;
  readonly headers?: Readonly<Record<string, string>>;
}

export const problemReply = (p: Problem, headers?: Record<string, string>): Reply =>
  ({ statusCode: p.status, type: `${PROBLEM_CONTENT_TYPE}; charset=utf-8`, body: JSON.stringify(p), headers });

export interface HttpListener {
  /** Resolves with the URL; a bind failure is CONFIG_INVALID naming `flag` (e.g. --http-listen or WEFT_HTTP_LISTEN). */
  listen(o: { host: string; port: number; flag: string }): Promise<string>;
  close(): Promise<void>;
  /** The listening address, once listen() resolved. */
  address(): AddressInfo | undefined;
}

function bindProblem(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case "EADDRINUSE": return "the port is in use; pick another";
    case "EADDRNOTAVAIL": return "no interface of this host has that address; use one it has, or 0.0.0.0";
    case "EACCES": return "not allowed (ports below 1024 need privileges); pick a port above 1024";
    default: return "pick another address";
  }
}

export function serveReplies(handle: (req: IncomingMessage) => Promise<Reply>): HttpListener {
  const server = createServer({ maxHeaderSize: MAX_HEADER_BYTES }, (req, res) => {
    void handle(req).then((r) => {
      res.writeHead(r.statusCode, { ...r.headers, "content-type": r.type, "content-length": Buffer.byteLength(r.body) });
      res.end(req.method === "HEAD" ? undefined : r.body);
    });
  });
  // Oversized headers, malformed requests and unsupported Expect headers never reach the handler.
  server.on("clientError", clientErrorListener(MAX_HEADER_BYTES));
  server.on("checkExpectation", expectationListener());
  // fastify's defaults: scrapers and curl keep connections open between requests, and no request timeout.
  server.keepAliveTimeout = 72_000;
  server.requestTimeout = 0;

  return {
    listen: ({ host, port, flag }) => new Promise<string>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => {
        reject(new WeftError("CONFIG_INVALID", `${flag} ${host.includes(":") ? `[${host}]` : host}:${port}: cannot listen (${err.code ?? errorMessage(err)}): ${bindProblem(err)}`, { cause: err }));
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
