// The gRPC edge: weft.v1 messages <-> the lease manager and the watch hub.
// Handlers throw WeftError; toServiceError() is the one place codes become
// gRPC statuses. Unknown errors are logged and become INTERNAL without detail.
import * as grpc from "@grpc/grpc-js";
import {
  LeaseServiceService, NetworkConfig as PbNetworkConfig, WatchLeasesResponse, WatchLeasesResponse_Kind,
  type LeaseServiceServer, type AcquireLeaseRequest, type NodeStatus, type ReportStatusResponse,
} from "../../gen/weft/v1/lease.js";
import { ErrorCodes, WeftError, invalid, isWeftError } from "../../lib/src/errors.js";
import { attrsFromPb, eventToPb, leaseToPb } from "../../lib/src/proto-convert.js";
import { formatCidr, formatIpv4 } from "../../lib/src/cidr.js";
import { BACKEND_TYPES, networkConfigJson, type NetworkConfig } from "../../lib/src/net-config.js";
import { validateNodeName, type Lease, type LeaseEvent } from "../../lib/src/lease.js";
import type { Logger } from "../../lib/src/logger.js";
import type { LeaseManager } from "./lease-manager.js";
import type { FrameEncoder, WatchHub } from "./watch-hub.js";
import { abortCall } from "./grpc-limits.js";
import { watchStreamWriter } from "./watch-stream.js";
import type { Fleet, NodeReport, ReporterHandle } from "./fleet.js";
import { MAX_PROBLEMS, MAX_PROBLEM_CHARS } from "../../lib/src/node-status.js";

/** How long an ended watch may take to deliver its last messages before its stream is reset. */
const STALLED_STREAM_RESET_MS = 5000;

// Status details travel in HTTP/2 trailers; an oversized one never reaches the client.
const MAX_DETAILS = 1024;

export function toServiceError(err: unknown, log: Logger): Partial<grpc.ServiceError> {
  if (isWeftError(err)) {
    const details = err.message.length > MAX_DETAILS ? `${err.message.slice(0, MAX_DETAILS)}...` : err.message;
    return { code: ErrorCodes[err.code].grpc, details, message: details };
  }
  log.error({ err }, "unexpected error in gRPC handler");
  return { code: grpc.status.INTERNAL, details: "internal error; see the lease server log" };
}

export const frameEncoder: FrameEncoder = {
  snapshot: (leases: readonly Lease[], resync: boolean) => Buffer.from(WatchLeasesResponse.encode({
    kind: WatchLeasesResponse_Kind.KIND_SNAPSHOT, leases: leases.map((l) => leaseToPb(l)), events: [], revision: 0, resync, storeId: "",
  }).finish()),
  snapshotComplete: (revision: number, storeId: string) => Buffer.from(WatchLeasesResponse.encode({
    kind: WatchLeasesResponse_Kind.KIND_SNAPSHOT_COMPLETE, leases: [], events: [], revision, resync: false, storeId,
  }).finish()),
  events: (events: readonly LeaseEvent[]) => Buffer.from(WatchLeasesResponse.encode({
    kind: WatchLeasesResponse_Kind.KIND_EVENTS, leases: [], events: events.map(eventToPb), revision: events[events.length - 1]!.revision, resync: false, storeId: "",
  }).finish()),
  progress: (revision: number, storeId: string) => Buffer.from(WatchLeasesResponse.encode({
    kind: WatchLeasesResponse_Kind.KIND_PROGRESS, leases: [], events: [], revision, resync: false, storeId,
  }).finish()),
};

const DECODE_ERROR = Symbol("decode error");
type MaybeUndecodable = { [DECODE_ERROR]?: string };

/**
 * grpc-js answers a request it cannot decode with INTERNAL; we keep the
 * error and answer INVALID_ARGUMENT from the handler instead.
 */
function tolerantDeserialize<T>(decode: (b: Buffer) => T): (b: Buffer) => T {
  return (b) => {
    try {
      return decode(b);
    } catch (err) {
      return { [DECODE_ERROR]: (err as Error).message } as T;
    }
  };
}

function checkDecoded(request: unknown): void {
  const problem = (request as MaybeUndecodable)[DECODE_ERROR];
  if (problem !== undefined) {
    throw invalid("request", `cannot be decoded (${problem.slice(0, 200)})`, "send a valid weft.v1 message; uint64 fields must be below 2^53");
  }
}

/**
 * The service definition: requests decoded tolerantly, and watch responses
 * passed through when already encoded.
 */
export const leaseServiceDefinition = Object.fromEntries(Object.entries(LeaseServiceService).map(([name, m]) => [name, {
  ...m,
  requestDeserialize: tolerantDeserialize(m.requestDeserialize as (b: Buffer) => unknown),
  ...(name === "watchLeases"
    ? { responseSerialize: (v: WatchLeasesResponse | Buffer): Buffer => (Buffer.isBuffer(v) ? v : Buffer.from(WatchLeasesResponse.encode(v).finish())) }
    : {}),
}])) as unknown as typeof LeaseServiceService;

export function networkConfigToPb(cfg: NetworkConfig): PbNetworkConfig {
  const b = cfg.backend;
  return {
    network: formatCidr(cfg.network), subnetLen: cfg.subnetLen, subnetMin: formatIpv4(cfg.subnetMin), subnetMax: formatIpv4(cfg.subnetMax),
    backend: {
      type: b.type, mtu: b.mtu,
      vxlan: b.type === "vxlan" ? { vni: b.vni, port: b.port, learning: b.learning, gbp: b.gbp, directRouting: b.directRouting } : undefined,
      wireguard: b.type === "wireguard" ? { listenPort: b.listenPort, persistentKeepaliveInterval: b.persistentKeepaliveInterval } : undefined,
    },
    json: networkConfigJson(cfg),
  };
}

/**
 * Node names a client certificate speaks for: its CN and DNS SANs. The gRPC
 * port requests client certificates without requiring them (a node that is
 * joining has none yet). grpc-js's auth context holds a peer certificate only
 * when the TLS layer verified it (socket.authorized), so an unverified or
 * self-signed certificate names no one (identity.test.ts checks this holds).
 */
export function certNodeNames(call: Pick<grpc.ServerUnaryCall<unknown, unknown>, "getAuthContext">): string[] | undefined {
  const cert = call.getAuthContext?.()?.sslPeerCertificate;
  if (!cert) return undefined;
  const names = new Set<string>();
  const cn = cert.subject?.CN;
  if (typeof cn === "string") names.add(cn);
  for (const part of (cert.subjectaltname ?? "").split(",")) {
    const m = /^\s*DNS:(.+)$/.exec(part);
    if (m) names.add(m[1]!.trim());
  }
  return [...names];
}

/** Checks one NodeStatus; every field the server keeps is bounded. */
export function reportFromPb(m: NodeStatus): NodeReport {
  const applied = Number(m.appliedRevision);
  if (!Number.isSafeInteger(applied) || applied < 0) throw invalid("applied_revision", `${m.appliedRevision} is out of range`, "send the last lease-feed revision the kernel reflects");
  if (m.problems.length > MAX_PROBLEMS) throw invalid("problems", `${m.problems.length} entries, at most ${MAX_PROBLEMS}`, "send the first ones");
  const long = m.problems.find((p) => p.length > MAX_PROBLEM_CHARS);
  if (long !== undefined) throw invalid("problems", `an entry has ${long.length} characters, at most ${MAX_PROBLEM_CHARS}`, "shorten it");
  if (m.backend !== "" && !(BACKEND_TYPES as readonly string[]).includes(m.backend)) throw invalid("backend", `${JSON.stringify(m.backend.slice(0, 40))} is not a backend`, `send one of ${BACKEND_TYPES.join(", ")}`);
  if (m.version.length > 64) throw invalid("version", `${m.version.length} characters, at most 64`, "send the agent's version");
  if (m.subnet.length > 18) throw invalid("subnet", `${m.subnet.length} characters; not a subnet`, "send the node's subnet, e.g. 10.244.3.0/24");
  return { appliedRevision: applied, healthy: m.healthy, problems: m.problems, backend: m.backend, version: m.version, peers: m.peers, subnet: m.subnet };
}

export interface ServiceDeps {
  readonly manager: LeaseManager;
  readonly hub: WatchHub;
  /** Per-node applied revision and health (ReportStatus). */
  readonly fleet: Fleet;
  /** Counts status messages received. */
  readonly onReport?: () => void;
  readonly log: Logger;
  /**
   * With TLS, every call needs a verified client certificate, and clients may act only for the node names
   * in it (hand-made, --tls-client-ca, or issued for a join token).
   */
  readonly requireClientIdentity: boolean;
}

export function createLeaseService(deps: ServiceDeps): LeaseServiceServer {
  const { manager, hub, log } = deps;
  const identify = (call: Pick<grpc.ServerUnaryCall<unknown, unknown>, "getAuthContext">): string[] => {
    if (!deps.requireClientIdentity) return [];
    const names = certNodeNames(call);
    if (!names) throw new WeftError("PERMISSION_DENIED", "this lease server needs a verified client certificate for every node; start the agent with --join-token-file (a token from POST /v1/join-tokens) or --tls-cert/--tls-key");
    return names;
  };
  const authorize = (call: grpc.ServerUnaryCall<unknown, unknown>, nodeName: string) => {
    // A malformed name is reported as such, before any comparison with the certificate.
    validateNodeName(nodeName);
    if (!deps.requireClientIdentity) return;
    const names = identify(call);
    if (!names.includes(nodeName)) {
      throw new WeftError("PERMISSION_DENIED", `this client certificate is for ${names.length ? names.join(", ") : "no node name"}, not node ${JSON.stringify(nodeName)}; use the node's own certificate (CN or DNS SAN = node name)`);
    }
  };
  const unary = <Req, Res>(fn: (call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>): grpc.handleUnaryCall<Req, Res> =>
    (call, callback) => {
      Promise.resolve().then(() => checkDecoded(call.request)).then(() => fn(call)).then((res) => callback(null, res), (err) => callback(toServiceError(err, log) as grpc.ServiceError));
    };

  return {
    getNetworkConfig: unary(async (call) => {
      identify(call);
      return networkConfigToPb(manager.network);
    }),
    acquireLease: unary(async (call: grpc.ServerUnaryCall<AcquireLeaseRequest, unknown>) => {
      const r = call.request;
      authorize(call, r.nodeName);
      const lease = await manager.acquire({ nodeName: r.nodeName, publicIP: r.publicIp, attrs: attrsFromPb(r), previousSubnet: r.previousSubnet || undefined, instanceId: r.instanceId });
      return leaseToPb(lease, { ttlMs: manager.ttlMs, storeId: await manager.storeId() });
    }),
    renewLease: unary(async (call) => {
      authorize(call, call.request.nodeName);
      const lease = await manager.renew(call.request.nodeName, call.request.subnet, call.request.instanceId);
      return leaseToPb(lease, { ttlMs: manager.ttlMs, storeId: await manager.storeId() });
    }),
    releaseLease: unary(async (call) => {
      authorize(call, call.request.nodeName);
      await manager.release(call.request.nodeName, call.request.subnet, call.request.instanceId);
      return {};
    }),
    reportStatus: (call: grpc.ServerReadableStream<NodeStatus, ReportStatusResponse>, callback: grpc.sendUnaryData<ReportStatusResponse>) => {
      let node: string | undefined;
      let handle: ReporterHandle | undefined;
      let done = false;
      const finish = (err?: unknown) => {
        handle?.close();
        if (done) return;
        done = true;
        if (err === undefined) callback(null, {});
        else callback(toServiceError(err, log) as grpc.ServiceError);
      };
      call.on("data", (m: NodeStatus) => {
        if (done) return;
        try {
          checkDecoded(m);
          deps.onReport?.();
          if (node === undefined) {
            authorize(call as unknown as grpc.ServerUnaryCall<unknown, unknown>, m.nodeName);
            node = m.nodeName;
            handle = deps.fleet.connect(node, (reason) => finish(new WeftError("SERVER_UNAVAILABLE", `status stream ended: ${reason}; reconnect`)));
          } else if (m.nodeName !== node) {
            throw invalid("node_name", `${JSON.stringify(m.nodeName.slice(0, 64))} differs from ${JSON.stringify(node)}, the node this stream reports for`, "open one stream per node");
          }
          handle!.report(reportFromPb(m));
        } catch (err) {
          finish(err);
        }
      });
      call.on("end", () => finish());
      call.on("error", () => finish());
      call.on("cancelled", () => {
        handle?.close();
        done = true;
      });
    },
    watchLeases: (call) => {
      try {
        checkDecoded(call.request);
        identify(call);
      } catch (err) {
        call.emit("error", toServiceError(err, log));
        return;
      }
      const from = Number(call.request.fromRevision);
      if (!Number.isSafeInteger(from) || from < 0) {
        call.emit("error", toServiceError(invalid("from_revision", `${call.request.fromRevision} is out of range`, "send 0 or the last revision you applied"), log));
        return;
      }
      let sub: { close(): void } | undefined;
      const close = () => sub?.close();
      call.on("cancelled", close);
      call.on("close", close);
      call.on("error", close);
      // Shared frames straight to the HTTP/2 stream where this grpc-js allows it (watch-stream.ts).
      const direct = watchStreamWriter(call);
      sub = hub.subscribe(from, {
        write: (frame, done) => {
          // Deferred: calling done() synchronously would re-enter the pump once per queued frame.
          if (call.cancelled || call.destroyed) return void setImmediate(done);
          if (direct) return direct.write(frame, done);
          // Pre-encoded bytes: leaseServiceDefinition passes Buffers through unchanged.
          call.write(frame as unknown as WatchLeasesResponse, () => done());
        },
        fail: (err) => {
          if (call.cancelled || call.destroyed) return;
          call.emit("error", toServiceError(err, log));
          // A client that does not read never receives the status behind its unsent messages.
          setTimeout(() => abortCall(call) || direct?.reset(), STALLED_STREAM_RESET_MS).unref();
        },
      }, call.request.storeId);
    },
  };
}
