// Who may use the state-changing REST routes (route option config.admin):
// a bearer token from --admin-token-file, or over HTTPS a client certificate
// that --admin-client-ca verified. Read-only routes and /metrics stay open.
// No credentials on the request is 401 (with WWW-Authenticate), wrong ones
// 403. A server without any admin credentials configured answers 401 on
// admin routes, and may only do so on loopback (assertAdminExposure).
import type { TLSSocket } from "node:tls";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { bearerToken, isLoopbackHost, tokenMatches } from "../../lib/src/admin-token.js";
import { WeftError } from "../../lib/src/errors.js";
import { usageError } from "../../lib/src/flags.js";

export interface AdminAuth {
  /** From --admin-token-file. */
  readonly token?: string;
  /** HTTPS with --admin-client-ca: the listener requests (not requires) a client certificate. */
  readonly clientCertificates?: boolean;
}

const CONFIGURE = "start the lease server with --admin-token-file FILE (head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE), or with --http-tls-cert/--http-tls-key and --admin-client-ca FILE";

/** Admin routes on a non-loopback address without credentials would let anyone who reaches it revoke leases. */
export function assertAdminExposure(httpHost: string, auth: AdminAuth): void {
  if (auth.token || auth.clientCertificates || isLoopbackHost(httpHost)) return;
  throw usageError(`--http-listen ${httpHost}: the REST API's state-changing routes (revoke, reservations, join tokens) would be open to anyone who reaches this address; ${CONFIGURE}, or listen on 127.0.0.1`);
}

function refusal(req: FastifyRequest, auth: AdminAuth): WeftError | undefined {
  const presented = bearerToken(req.headers.authorization);
  if (presented !== undefined) {
    if (!auth.token) return new WeftError("PERMISSION_DENIED", "this server takes no bearer tokens (no --admin-token-file); use an admin client certificate, or configure a token");
    if (tokenMatches(presented, auth.token)) return undefined;
    return new WeftError("PERMISSION_DENIED", "the bearer token does not match the server's --admin-token-file; send the token in that file");
  }
  const socket = req.raw.socket as Partial<TLSSocket>;
  if (auth.clientCertificates && socket.encrypted) {
    const cert = socket.getPeerCertificate?.();
    if (cert && Object.keys(cert).length > 0) {
      if (socket.authorized) return undefined;
      return new WeftError("PERMISSION_DENIED", `the client certificate (subject ${cert.subject?.CN ?? "without CN"}) is not an admin certificate: ${String(socket.authorizationError)}; use one signed by --admin-client-ca`);
    }
  }
  if (!auth.token && !auth.clientCertificates) {
    return new WeftError("UNAUTHENTICATED", `this route changes state and the server has no admin credentials configured; ${CONFIGURE}`);
  }
  const ways = [
    ...(auth.token ? ["Authorization: Bearer <the token in --admin-token-file>"] : []),
    ...(auth.clientCertificates ? ["an HTTPS client certificate signed by --admin-client-ca"] : []),
  ];
  return new WeftError("UNAUTHENTICATED", `this route changes state and needs admin credentials; send ${ways.join(", or ")}`);
}

export function registerAdminAuth(app: FastifyInstance, auth: AdminAuth): void {
  app.addHook("onRequest", async (req, reply) => {
    if (!(req.routeOptions.config as { admin?: boolean } | undefined)?.admin) return;
    const err = refusal(req, auth);
    if (!err) return;
    // Never the token: a wrong one may be a right one for another server.
    req.log.warn({ route: `${req.method} ${req.routeOptions.url}`, remote: req.ip, code: err.code }, "admin request refused");
    if (err.code === "UNAUTHENTICATED") void reply.header("www-authenticate", 'Bearer realm="weft"');
    throw err;
  });
}
