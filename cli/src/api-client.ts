// Typed clients for the lease server's and the agent's REST APIs: openapi-fetch
// over the types scripts/gen-api-types.mjs generates from api-docs/*.openapi.json,
// so a route or field weftctl uses that the documents lack fails to compile.
// expectOk() turns everything that is not a success into a CliError whose
// message names the fix.
import createClient, { type Client } from "openapi-fetch";
import type { paths as ServerPaths } from "../../gen/api/lease-server.js";
import type { paths as AgentPaths } from "../../gen/api/node-agent.js";
import { CliError, EXIT } from "./exit-codes.js";
import { TransportError, type Fetch } from "./http-transport.js";

export type ServerClient = Client<ServerPaths>;
export type AgentClient = Client<AgentPaths>;

/** Where requests go, and how the operator set it, for messages. */
export interface Endpoint {
  readonly url: string;
  /** "the lease server" or "the agent". */
  readonly what: string;
  /** How the URL was set: "--server-url", or "WEFT_SERVER_URL" when it came from the environment. */
  readonly urlFlag: string;
  readonly timeoutMs: number;
}

export interface Credentials {
  readonly token?: string;
  /** How the token was given, for 401/403 hints. */
  readonly tokenSource?: string;
}

export function serverClient(e: Endpoint, fetch: Fetch, creds: Credentials = {}): ServerClient {
  return createClient<ServerPaths>({ baseUrl: e.url, fetch, headers: creds.token ? { authorization: `Bearer ${creds.token}` } : {} });
}

export function agentClient(e: Endpoint, fetch: Fetch): AgentClient {
  return createClient<AgentPaths>({ baseUrl: e.url, fetch });
}

interface Problem { detail?: unknown; code?: unknown; title?: unknown }

const TLS_TRUST = new Set(["UNABLE_TO_VERIFY_LEAF_SIGNATURE", "SELF_SIGNED_CERT_IN_CHAIN", "DEPTH_ZERO_SELF_SIGNED_CERT", "UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "UNABLE_TO_GET_ISSUER_CERT", "CERT_SIGNATURE_FAILURE", "CERT_UNTRUSTED"]);

function unreachable(e: Endpoint, err: TransportError): CliError {
  const at = `cannot reach ${e.what} at ${e.url}`;
  const point = `point ${e.urlFlag} at ${e.what}'s --http-listen address`;
  let why: string;
  if (err.code === "ECONNREFUSED") why = `connection refused: nothing listens there; is it running? Otherwise ${point}`;
  else if (err.code === "ENOTFOUND" || err.code === "EAI_AGAIN") why = `cannot resolve the host name; ${point}`;
  else if (err.code === "ETIMEDOUT") why = `no answer within ${e.timeoutMs / 1000} s; check the address and firewalls (${point}), or give it longer with --timeout`;
  else if (err.code === "ECONNRESET") why = `the connection was closed without an answer; if it serves HTTPS, use an https:// URL (${point})`;
  else if (err.code === "EPROTO" || err.code.startsWith("ERR_SSL_")) why = `TLS handshake failed (${err.message.split("\n")[0]}); if it serves plain HTTP, use an http:// URL (${point})`;
  else if (TLS_TRUST.has(err.code)) why = `its TLS certificate is not trusted (${err.message}); pass the CA that signed it with --ca FILE`;
  else if (err.code === "CERT_HAS_EXPIRED" || err.code === "CERT_NOT_YET_VALID") why = `its TLS certificate is not valid now (${err.message}); renew its certificate`;
  else if (err.code === "ERR_TLS_CERT_ALTNAME_INVALID") why = `its TLS certificate does not name this host (${err.message}); use the host name the certificate was made for in the URL`;
  else why = `${err.code}: ${err.message}; ${point}`;
  return new CliError(EXIT.UNREACHABLE, `${at}: ${why}`, { cause: err });
}

/** A server answer that is not a success, as one line: weft's error code first, then the detail. */
function answered(e: Endpoint, res: Response, body: unknown, creds: Credentials): CliError {
  const p = (typeof body === "object" && body !== null ? body : {}) as Problem;
  if (typeof p.code === "string" && typeof p.detail === "string") {
    let hint = "";
    if (res.status === 401 || res.status === 403) {
      hint = creds.token
        ? ` (weftctl sent the token from ${creds.tokenSource}; give it the one in the server's --admin-token-file)`
        : " (give weftctl the server's admin token with --admin-token-file FILE or WEFT_ADMIN_TOKEN_FILE)";
    }
    return new CliError(EXIT.SERVER_ERROR, `${p.code}: ${p.detail}${hint}`);
  }
  const text = typeof body === "string" ? body.replace(/\s+/g, " ").slice(0, 200) : "";
  return new CliError(EXIT.SERVER_ERROR, `${e.what} at ${e.url} answered HTTP ${res.status} ${res.statusText}${text ? `: ${text}` : ""}; is ${e.urlFlag} the right address?`);
}

/** The data of a successful call; otherwise a CliError (exit 1 for an answer, 3 for none). */
export async function expectOk<T>(e: Endpoint, call: Promise<{ data?: T; error?: unknown; response: Response }>, creds: Credentials = {}): Promise<T> {
  let r: { data?: T; error?: unknown; response: Response };
  try {
    r = await call;
  } catch (err) {
    if (err instanceof TransportError) throw unreachable(e, err);
    // openapi-fetch parses every 2xx body as JSON: a non-JSON success means another program answered.
    if (err instanceof SyntaxError) throw new CliError(EXIT.SERVER_ERROR, `${e.what} at ${e.url} answered with something that is not JSON; is ${e.urlFlag} the right address?`, { cause: err });
    throw err;
  }
  if (!r.response.ok) throw answered(e, r.response, r.error, creds);
  return r.data as T;
}
