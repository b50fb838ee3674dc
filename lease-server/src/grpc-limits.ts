// Protective limits of the gRPC port: one client (or an attacker) must not be
// able to pin the server's memory or starve other clients.
//
// - Requests are tiny (the biggest, IssueCertificate, carries a CSR of ~2 KB),
//   so grpc-js refuses any message whose length prefix is above
//   MAX_REQUEST_BYTES before buffering it.
// - A call's request must be complete (message + end of stream) within
//   requestTimeoutMs; otherwise a half-sent message would stay buffered forever.
// - Per client address: TCP connections (counted on our own listener, which
//   hands sockets to grpc-js), streaming calls ("watches") and unary calls in
//   flight. IPv6 clients count per /64, the block one host usually controls.
// Each refusal increments weft_lease_server_limit_rejections_total{limit}.
import { createServer, isIPv4, isIPv6, type Server as NetServer, type Socket } from "node:net";
import { constants as http2Constants, type ServerHttp2Stream } from "node:http2";
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "../../lib/src/logger.js";

/** Far above any request of weft.v1 (see above), far below what pins memory. */
export const MAX_REQUEST_BYTES = 16 << 10;
/** Above HTTP/2's recommended minimum of 100; an agent needs one watch and a few unary calls. */
export const MAX_STREAMS_PER_CONNECTION = 128;

export interface GrpcLimits {
  readonly maxConnectionsPerClient: number;
  readonly maxWatchesPerClient: number;
  readonly maxRpcsPerClient: number;
  /** Time for a call's request message to arrive completely. */
  readonly requestTimeoutMs: number;
}

export const DEFAULT_LIMITS: GrpcLimits = {
  // Generous: a NAT may put hundreds of nodes behind one address.
  maxConnectionsPerClient: 1024,
  maxWatchesPerClient: 2048,
  maxRpcsPerClient: 256,
  requestTimeoutMs: 10_000,
};

export type LimitName = "connections_per_client" | "watches_per_client" | "rpcs_per_client" | "request_size" | "request_timeout";

export interface LimitDeps {
  readonly limits: GrpcLimits;
  readonly log: Logger;
  readonly rejected: (limit: LimitName) => void;
}

/** The address a limit counts by: IPv4 as is, IPv6 by its /64. */
export function clientKey(address: string | undefined): string {
  if (!address) return "unknown";
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (isIPv4(address) || !isIPv6(address)) return address;
  const [head = "", tail = ""] = address.split("::");
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = address.includes("::") ? [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t] : h;
  return `${groups.slice(0, 4).map((g) => parseInt(g, 16).toString(16)).join(":")}::/64`;
}

/** Counts per client key; take() refuses above max. */
class Counter {
  readonly #n = new Map<string, number>();
  take(key: string, max: number): boolean {
    const n = this.#n.get(key) ?? 0;
    if (n >= max) return false;
    this.#n.set(key, n + 1);
    return true;
  }
  give(key: string): void {
    const n = (this.#n.get(key) ?? 1) - 1;
    if (n <= 0) this.#n.delete(key);
    else this.#n.set(key, n);
  }
}

/** Logs a refusal at most once a minute per limit, so an attack cannot flood the log. */
function rateLimitedWarn(log: Logger): (limit: LimitName, fields: Record<string, unknown>, msg: string) => void {
  const last = new Map<LimitName, { at: number; suppressed: number }>();
  return (limit, fields, msg) => {
    const now = Date.now();
    const l = last.get(limit);
    if (l && now - l.at < 60_000) {
      l.suppressed++;
      return;
    }
    log.warn({ limit, ...fields, ...(l?.suppressed ? { suppressed: l.suppressed } : {}) }, msg);
    last.set(limit, { at: now, suppressed: 0 });
  };
}

/**
 * grpc-js 1.14 does not expose how much of a request it has buffered. Its
 * BaseServerInterceptingCall keeps a StreamDecoder whose state tells a
 * truncated message (readState != 0 at end of stream) and an oversized
 * length prefix (readMessageSize) apart; we only read these fields.
 * grpc-limits.test.ts pins both behaviours.
 */
interface DecoderPeek { readState: number; readMessageSize: number; readMessageRemaining: number }
interface BasePeek { decoder: DecoderPeek; stream: ServerHttp2Stream }
function baseOf(call: grpc.ServerInterceptingCallInterface): BasePeek | undefined {
  let c = call as unknown as { decoder?: DecoderPeek; stream?: ServerHttp2Stream; nextCall?: unknown } | undefined;
  for (let i = 0; i < 8 && c; i++) {
    if (c.decoder && typeof c.decoder.readState === "number" && c.stream) return c as BasePeek;
    c = c.nextCall as typeof c;
  }
  return undefined;
}

/**
 * After a status that ends a call whose client is still sending, grpc-js
 * leaves the HTTP/2 stream open and drains whatever arrives. RST_STREAM with
 * NO_ERROR after a complete response tells the client to stop (RFC 9113
 * section 8.1) and frees the stream's slot.
 */
function stopSending(base: BasePeek | undefined): void {
  const stream = base?.stream;
  if (!stream) return;
  setImmediate(() => {
    if (!stream.closed && !stream.destroyed) stream.close(http2Constants.NGHTTP2_NO_ERROR);
  });
}

/** Resets the HTTP/2 stream of a live call, by the interceptor's call object. */
const aborters = new WeakMap<object, () => void>();

/**
 * Resets the HTTP/2 stream of a call that has not ended (`call`: the object a
 * handler gets). A watch ended with an error status while its client does not
 * read keeps its unsent messages, and the status behind them, forever: its
 * flow-control window is full. Returns whether there was anything to reset.
 */
export function abortCall(call: object): boolean {
  // grpc-js 1.14: the handler's call object keeps the outermost intercepting call as `.call`.
  const inner = (call as { call?: object }).call;
  const abort = inner && aborters.get(inner);
  if (!abort) return false;
  abort();
  return true;
}

/** The server interceptor: per-client call limits and the request deadline. */
export function limitsInterceptor(deps: LimitDeps): grpc.ServerInterceptor {
  const { limits } = deps;
  const watches = new Counter();
  const rpcs = new Counter();
  const warn = rateLimitedWarn(deps.log);
  return (method, call) => {
    const streaming = method.responseStream || method.requestStream;
    const key = clientKey(call.getConnectionInfo().remoteAddress);
    const base = baseOf(call);
    const decoder = base?.decoder;
    let counted = false;
    let ended = false;
    let gotMessage = false;
    let timer: NodeJS.Timeout | undefined;
    let self: grpc.ServerInterceptingCall | undefined;
    const end = () => {
      if (ended) return;
      ended = true;
      if (self) aborters.delete(self);
      clearTimeout(timer);
      if (counted) (streaming ? watches : rpcs).give(key);
      if (decoder && decoder.readMessageSize > MAX_REQUEST_BYTES) {
        deps.rejected("request_size");
        stopSending(base);
        warn("request_size", { client: key, method: method.path, bytes: decoder.readMessageSize }, "request larger than the limit refused");
      }
    };
    const answer = (code: grpc.status, details: string) => {
      call.sendStatus({ code, details, metadata: null });
      end();
    };
    const refuse = (code: grpc.status, limit: LimitName, details: string) => {
      deps.rejected(limit);
      warn(limit, { client: key, method: method.path }, details);
      answer(code, details);
      stopSending(base);
    };
    self = new grpc.ServerInterceptingCall(call, {
      start: (next) => next({
        onReceiveMetadata: (md, nextMd) => {
          const ok = streaming ? watches.take(key, limits.maxWatchesPerClient) : rpcs.take(key, limits.maxRpcsPerClient);
          if (!ok) {
            return streaming
              ? refuse(grpc.status.RESOURCE_EXHAUSTED, "watches_per_client", `client ${key} already has ${limits.maxWatchesPerClient} streams open (--max-watches-per-client); close some, or raise the limit for clients behind one NAT`)
              : refuse(grpc.status.RESOURCE_EXHAUSTED, "rpcs_per_client", `client ${key} already has ${limits.maxRpcsPerClient} calls in flight (--max-rpcs-per-client); retry with back-off`);
          }
          counted = true;
          timer = setTimeout(() => refuse(grpc.status.DEADLINE_EXCEEDED, "request_timeout", `request message not complete within ${limits.requestTimeoutMs} ms; send the whole message and end the request stream`), limits.requestTimeoutMs);
          timer.unref();
          nextMd(md);
        },
        onReceiveMessage: (msg, nextMsg) => {
          gotMessage = true;
          if (method.requestStream) clearTimeout(timer);
          nextMsg(msg);
        },
        onReceiveHalfClose: (nextHalfClose) => {
          clearTimeout(timer);
          if (!gotMessage && !method.requestStream) {
            // grpc-js would answer UNIMPLEMENTED ("received no request message") in both cases.
            if (decoder && decoder.readState !== 0) {
              const got = decoder.readMessageSize - decoder.readMessageRemaining;
              const where = decoder.readState === 2 ? `after ${got} of the ${decoder.readMessageSize} bytes its length prefix declares` : "inside a message's 5-byte length prefix";
              // gRPC's status code table: a malformed request (protocol violation, unparsable request) is INTERNAL.
              return answer(grpc.status.INTERNAL, `request truncated: the stream ended ${where}; send whole length-prefixed messages`);
            }
            return answer(grpc.status.UNIMPLEMENTED, `${method.path} takes exactly one request message and got none`);
          }
          nextHalfClose();
        },
        onCancel: end,
      }),
      sendStatus: (status, next) => {
        end();
        next(status);
      },
    });
    if (base && !ended) aborters.set(self, () => { if (!base.stream.closed) base.stream.close(http2Constants.NGHTTP2_CANCEL); end(); });
    return self;
  };
}

export interface LimitedListener {
  readonly port: number;
  /** Stops accepting; the server's tryShutdown/forceShutdown end the connections it was handed. */
  close(): void;
}

/**
 * Listens on host:port and hands each connection to grpc-js, refusing a
 * client's connections above maxConnectionsPerClient. grpc-js's own bindAsync
 * offers no per-connection hook; its connection injector is the public way in.
 */
export function listenWithLimits(server: grpc.Server, creds: grpc.ServerCredentials, host: string, port: number, deps: LimitDeps): Promise<LimitedListener> {
  const injector = server.createConnectionInjector(creds);
  const conns = new Counter();
  const warn = rateLimitedWarn(deps.log);
  const max = deps.limits.maxConnectionsPerClient;
  const net: NetServer = createServer({ noDelay: true }, (socket: Socket) => {
    // A reset by the peer must not become an uncaught exception.
    socket.on("error", () => {});
    const key = clientKey(socket.remoteAddress);
    if (!conns.take(key, max)) {
      deps.rejected("connections_per_client");
      warn("connections_per_client", { client: key }, `client ${key} already has ${max} connections (--max-connections-per-client); connection refused`);
      socket.destroy();
      return;
    }
    socket.once("close", () => conns.give(key));
    injector.injectConnection(socket);
  });
  return new Promise((resolve, reject) => {
    net.once("error", (err) => {
      injector.destroy();
      reject(err);
    });
    net.listen({ host, port }, () => {
      resolve({
        port: (net.address() as { port: number }).port,
        close: () => void net.close(),
      });
    });
  });
}
