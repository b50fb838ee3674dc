// The one REST error body of both daemons: RFC 9457 problem details
// (application/problem+json) plus weft's `code` from the ErrorCodes table,
// which scripts match on. `type` and `title` are fixed per code, so they can
// be documented and compared; `detail` is the WeftError message, which names
// the problem and the fix. Internal errors carry no detail (it may hold paths
// or secrets); the daemon logs it instead.
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { ErrorCodes, isWeftError, type ErrorCode } from "./errors.js";

export const PROBLEM_CONTENT_TYPE = "application/problem+json";
export const PROBLEM_TYPE_BASE = "https://weft.dev/problems/";

export interface Problem {
  readonly type: string;
  readonly title: string;
  readonly status: number;
  readonly detail: string;
  readonly code: ErrorCode;
  /** The request path, where the edge knows it. */
  readonly instance?: string;
}

/** "LEASE_NOT_FOUND" -> "https://weft.dev/problems/lease-not-found". */
export function problemType(code: ErrorCode): string {
  return PROBLEM_TYPE_BASE + code.toLowerCase().replace(/_/g, "-");
}

// Where the phrase read from the code would be poor English; every other code's title is its words ("Lease not found").
const TITLES: Partial<Record<ErrorCode, string>> = {
  CONFIG_INVALID: "Invalid configuration",
  UNAUTHENTICATED: "Authentication required",
  REVISION_COMPACTED: "Revision compacted away",
  DATAPLANE_OP_FAILED: "Dataplane operation failed",
  INTERNAL: "Internal error",
};

export function problemTitle(code: ErrorCode): string {
  const t = TITLES[code];
  if (t) return t;
  const words = code.toLowerCase().replace(/_/g, " ");
  return words[0]!.toUpperCase() + words.slice(1);
}

export function problem(code: ErrorCode, detail: string, instance?: string): Problem {
  return {
    type: problemType(code), title: problemTitle(code), status: ErrorCodes[code].http, detail, code,
    ...(instance !== undefined ? { instance } : {}),
  };
}

/** Both daemons' header limit (node's default, made explicit so messages can name it). */
export const MAX_HEADER_BYTES = 16 * 1024;

const INTERNAL_DETAIL = "internal error; see the daemon's log";

/** A WeftError keeps its code and message; anything else is a 500 without detail (log it first). */
export function problemFromError(err: unknown, instance?: string): Problem {
  if (isWeftError(err) && err.code !== "INTERNAL") return problem(err.code, err.message, instance);
  return problem("INTERNAL", INTERNAL_DETAIL, instance);
}

/**
 * A whole HTTP/1.1 response, for errors node's parser raises before any
 * request object exists (header overflow, malformed request line): the
 * socket is all there is, and it is closed afterwards.
 */
export function rawProblemResponse(p: Problem, reason: string): string {
  const body = JSON.stringify(p);
  return `HTTP/1.1 ${p.status} ${reason}\r\nContent-Type: ${PROBLEM_CONTENT_TYPE}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}

/** The problem for a node:http 'clientError' (the parser's error codes), or undefined when there is no one to answer. */
export function clientErrorProblem(err: NodeJS.ErrnoException, maxHeaderBytes: number): Problem | undefined {
  switch (err.code) {
    case "ECONNRESET":
      return undefined;
    case "HPE_HEADER_OVERFLOW":
      return problem("HEADERS_TOO_LARGE", `the request headers are larger than this server accepts (${maxHeaderBytes / 1024} KiB in all); send fewer or shorter headers`);
    case "ERR_HTTP_REQUEST_TIMEOUT":
      return problem("REQUEST_TIMEOUT", "the request did not arrive in time; send the whole request promptly");
    default:
      return problem("INVALID_ARGUMENT", `malformed HTTP request (${err.code ?? "parse error"}); send a valid HTTP/1.1 request`);
  }
}

/** A node:http(s) 'clientError' listener that answers in the problem shape; onProblem sees each answer (metrics). */
export function clientErrorListener(maxHeaderBytes: number, onProblem?: (p: Problem) => void) {
  return (err: NodeJS.ErrnoException, socket: Duplex): void => {
    const p = socket.destroyed ? undefined : clientErrorProblem(err, maxHeaderBytes);
    if (!p || !socket.writable) {
      socket.destroy();
      return;
    }
    onProblem?.(p);
    socket.end(rawProblemResponse(p, STATUS_CODES[p.status] ?? "Error"), () => socket.destroy());
  };
}

/**
 * A node:http(s) 'checkExpectation' listener: node answers an Expect header other than 100-continue with a
 * bare 417 unless someone listens; this answers it in the problem shape.
 */
export function expectationListener() {
  return (req: IncomingMessage, res: ServerResponse): void => {
    const body = JSON.stringify(problem("EXPECTATION_FAILED", `Expect: ${JSON.stringify(String(req.headers.expect ?? "").slice(0, 64))} is not supported; send the request without an Expect header (or with Expect: 100-continue)`, pathOf(req.url ?? "/")));
    res.writeHead(417, { "content-type": PROBLEM_CONTENT_TYPE, "content-length": Buffer.byteLength(body), connection: "close" });
    res.end(body);
  };
}

function pathOf(url: string): string {
  const i = url.search(/[?#]/);
  return i < 0 ? url : url.slice(0, i);
}
