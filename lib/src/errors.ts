// One table of error codes. Code compares err.code, never message text; the
// gRPC and HTTP edges translate codes to statuses, nothing else does.

export const ErrorCodes = {
  INVALID_ARGUMENT: { grpc: 3, http: 400 },
  CONFIG_INVALID: { grpc: 3, http: 400 },
  LEASE_EXHAUSTED: { grpc: 8, http: 503 },
  LEASE_NOT_FOUND: { grpc: 5, http: 404 },
  NOT_FOUND: { grpc: 5, http: 404 },
  LEASE_CONFLICT: { grpc: 10, http: 409 },
  ALREADY_EXISTS: { grpc: 6, http: 409 },
  PERMISSION_DENIED: { grpc: 7, http: 403 },
  /** No credentials on a request that needs them (HTTP adds WWW-Authenticate). */
  UNAUTHENTICATED: { grpc: 16, http: 401 },
  /** A request body over the daemon's limit. */
  PAYLOAD_TOO_LARGE: { grpc: 8, http: 413 },
  UNSUPPORTED_MEDIA_TYPE: { grpc: 3, http: 415 },
  /** Request headers over node's limit (--max-http-header-size). */
  HEADERS_TOO_LARGE: { grpc: 8, http: 431 },
  /** The client did not send its whole request in time. */
  REQUEST_TIMEOUT: { grpc: 4, http: 408 },
  EXPECTATION_FAILED: { grpc: 9, http: 417 },
  /** The server is not set up for the operation (e.g. join tokens without TLS). */
  FAILED_PRECONDITION: { grpc: 9, http: 400 },
  REVISION_COMPACTED: { grpc: 11, http: 410 },
  STORE_UNAVAILABLE: { grpc: 14, http: 503 },
  /** The agent cannot reach any lease server. */
  SERVER_UNAVAILABLE: { grpc: 14, http: 503 },
  /** The daemon is still starting; retry shortly. */
  NOT_READY: { grpc: 14, http: 503 },
  /** This machine lacks what the operation needs (e.g. no kernel WireGuard). */
  NOT_SUPPORTED: { grpc: 12, http: 501 },
  DATAPLANE_OP_FAILED: { grpc: 13, http: 500 },
  INTERNAL: { grpc: 13, http: 500 },
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

export class WeftError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "WeftError";
    this.code = code;
  }
}

export function isWeftError(err: unknown, code?: ErrorCode): err is WeftError {
  return err instanceof WeftError && (code === undefined || err.code === code);
}

export function invalid(field: string, problem: string, fix?: string): WeftError {
  return new WeftError("INVALID_ARGUMENT", `${field}: ${problem}${fix ? `; ${fix}` : ""}`);
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
