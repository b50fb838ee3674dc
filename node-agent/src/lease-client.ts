// gRPC adapter to the lease server. The only agent file that sees weft.v1
// messages: it converts them to domain types and gRPC failures to WeftError.
// With several --server addresses it moves to the next one whenever the
// current one is unreachable.
import { credentials as grpcCredentials, Metadata, status, type ChannelCredentials, type ServiceError } from "@grpc/grpc-js";
import { readFileSync } from "node:fs";
import { LeaseServiceClient, WatchLeasesResponse_Kind, type Lease as PbLease, type NetworkConfig as PbNetworkConfig, type NodeStatus } from "../../gen/weft/v1/lease.js";
import { WeftError, type ErrorCode } from "../../lib/src/errors.js";
import type { BackendAttrs, Lease, LeaseEvent } from "../../lib/src/lease.js";
import { parseNetworkConfig, type NetworkConfig } from "../../lib/src/net-config.js";
import { attrsToPb, eventFromPb, grantFromPb, leaseFromPb } from "../../lib/src/proto-convert.js";
import { clampTimerMs } from "./backoff.js";
import type { NodeStatusReport } from "../../lib/src/node-status.js";

export type WatchMessage =
  | { readonly kind: "snapshot"; readonly leases: readonly Lease[]; readonly resync: boolean }
  | { readonly kind: "complete"; readonly revision: number; readonly storeId?: string }
  | { readonly kind: "events"; readonly events: readonly LeaseEvent[]; readonly revision: number }
  | { readonly kind: "progress"; readonly revision: number; readonly storeId?: string };

export interface TlsFiles {
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
}

export interface LeaseClientOptions {
  readonly servers: readonly string[];
  /** undefined = insecure (plaintext). */
  readonly tls?: TlsFiles;
  readonly callTimeoutMs?: number;
  /** Called with true when a call or stream message got through, false when the server was unreachable. */
  readonly onConnectivity?: (connected: boolean) => void;
  /**
   * A watch stream with no message (PROGRESS included; the server sends one every 30 s) for this
   * long is treated as dead: cancelled, and the next server is tried. Default 75 s.
   */
  readonly watchIdleTimeoutMs?: number;
}

/** The server's PROGRESS interval is 30 s: two missed beats plus slack. */
export const WATCH_IDLE_TIMEOUT_MS = 75_000;

export interface AcquireRequest {
  readonly nodeName: string;
  readonly publicIP: string;
  readonly attrs: BackendAttrs;
  readonly previousSubnet?: string;
  /** This agent's instance id (<state-dir>/instance-id); binds the lease to it on servers without mTLS. */
  readonly instanceId?: string;
}

/**
 * A lease as an acquire or renew answers it: `ttlMs` is the lifetime the server granted, counted from the
 * reply (agents schedule renewals from it, not by comparing expiresAt with their own clock); absent from
 * servers that state none.
 */
export type GrantedLease = Lease & { readonly ttlMs?: number; readonly storeId?: string };

function granted(pb: PbLease): GrantedLease {
  const g = grantFromPb(pb);
  return g ? { ...leaseFromPb(pb), ttlMs: g.ttlMs, storeId: g.storeId } : leaseFromPb(pb);
}

const CODE_MAP: Partial<Record<number, ErrorCode>> = {
  [status.NOT_FOUND]: "LEASE_NOT_FOUND",
  [status.INVALID_ARGUMENT]: "INVALID_ARGUMENT",
  [status.RESOURCE_EXHAUSTED]: "LEASE_EXHAUSTED",
  [status.PERMISSION_DENIED]: "PERMISSION_DENIED",
  [status.ALREADY_EXISTS]: "ALREADY_EXISTS",
  [status.UNAUTHENTICATED]: "PERMISSION_DENIED",
  [status.OUT_OF_RANGE]: "REVISION_COMPACTED",
  [status.ABORTED]: "LEASE_CONFLICT",
  [status.UNAVAILABLE]: "SERVER_UNAVAILABLE",
  [status.DEADLINE_EXCEEDED]: "SERVER_UNAVAILABLE",
  [status.CANCELLED]: "SERVER_UNAVAILABLE",
  [status.UNIMPLEMENTED]: "NOT_SUPPORTED",
};

export function buildCredentials(tls: TlsFiles | undefined): ChannelCredentials {
  if (!tls) return grpcCredentials.createInsecure();
  const read = (p: string | undefined) => (p ? readFileSync(p) : null);
  return grpcCredentials.createSsl(read(tls.ca), read(tls.key), read(tls.cert));
}

/** What an agent reports on its ReportStatus stream (the whole state each time). */
export type StatusReport = NodeStatusReport & { readonly nodeName: string };

/** An open ReportStatus stream. `done` rejects with a WeftError when it breaks (NOT_SUPPORTED: an older server). */
export interface StatusStream {
  send(r: StatusReport): void;
  close(): void;
  readonly done: Promise<void>;
}

/** What the agent needs from the lease server (the seam for agent tests). */
export interface LeaseApi {
  getNetworkConfig(): Promise<NetworkConfig>;
  acquire(r: AcquireRequest): Promise<GrantedLease>;
  renew(nodeName: string, subnet: string, instanceId?: string): Promise<GrantedLease>;
  release(nodeName: string, subnet: string, instanceId?: string): Promise<void>;
  /** `storeId`: the store the revision belongs to (from the last complete/progress message). */
  watch(fromRevision: number, signal: AbortSignal, storeId?: string): AsyncIterable<WatchMessage>;
  /** Opens a ReportStatus stream to the current server (absent: the agent reports nothing). */
  reportStatus?(): StatusStream;
  /** The lease server (--server address) the next call or watch goes to. */
  readonly server: string;
  /** Moves on to the next --server address (a no-op with one), e.g. past a server of another lease store. */
  nextServer(): void;
  close(): void;
}

export class LeaseClient implements LeaseApi {
  private clients: LeaseServiceClient[];
  private current = 0;
  private readonly timeoutMs: number;

  constructor(private readonly opts: LeaseClientOptions) {
    this.clients = this.connect(opts.tls);
    this.timeoutMs = opts.callTimeoutMs ?? 5000;
  }

  private connect(tls: TlsFiles | undefined): LeaseServiceClient[] {
    const creds = buildCredentials(tls);
    // grpc-js waits up to 120 s between reconnects by default; we want to notice a returning server quickly.
    // Keepalive pings notice a dead connection (peer rebooted, path gone) that TCP alone would hold open for minutes.
    const channelOptions = {
      "grpc.initial_reconnect_backoff_ms": 500, "grpc.max_reconnect_backoff_ms": 5000, "grpc.max_receive_message_length": 64 << 20,
      "grpc.keepalive_time_ms": 20_000, "grpc.keepalive_timeout_ms": 10_000, "grpc.keepalive_permit_without_calls": 1,
    };
    return this.opts.servers.map((s) => new LeaseServiceClient(s, creds, channelOptions));
  }

  /**
   * New channels with the TLS files as they are now (a renewed node certificate). Calls and watch
   * streams already running finish on the old channels (closing a channel ends none of them); the
   * next call or watch uses the new ones.
   */
  reloadCredentials(tls: TlsFiles | undefined = this.opts.tls): void {
    const fresh = this.connect(tls);
    const old = this.clients;
    this.clients = fresh;
    for (const c of old) c.close();
  }

  get server(): string {
    return this.opts.servers[this.current]!;
  }

  nextServer(): void {
    this.current = (this.current + 1) % this.clients.length;
  }

  private fail(err: unknown, what: string): WeftError {
    const e = err as ServiceError;
    const code = (typeof e?.code === "number" && CODE_MAP[e.code]) || "INTERNAL";
    const detail = e?.details || (err instanceof Error ? err.message : String(err));
    // Name the server that failed, before moving on to the next one.
    const out = new WeftError(code, `${what} (lease server ${this.server}): ${detail}`, { cause: err });
    if (code === "SERVER_UNAVAILABLE") {
      this.opts.onConnectivity?.(false);
      this.nextServer();
    }
    return out;
  }

  private unary<Req, Res>(what: string, call: (c: LeaseServiceClient, req: Req, md: Metadata, o: { deadline: number }, cb: (e: ServiceError | null, r: Res) => void) => unknown, req: Req): Promise<Res> {
    const client = this.clients[this.current]!;
    return new Promise((resolve, reject) => {
      call(client, req, new Metadata(), { deadline: Date.now() + this.timeoutMs }, (err, res) => {
        if (err) return reject(this.fail(err, what));
        this.opts.onConnectivity?.(true);
        resolve(res);
      });
    });
  }

  async getNetworkConfig(): Promise<NetworkConfig> {
    const pb = await this.unary<object, PbNetworkConfig>("get network config", (c, r, m, o, cb) => c.getNetworkConfig(r, m, o, cb), {});
    return parseNetworkConfig(pb.json);
  }

  async acquire(r: AcquireRequest): Promise<GrantedLease> {
    const req = { nodeName: r.nodeName, publicIp: r.publicIP, previousSubnet: r.previousSubnet ?? "", instanceId: r.instanceId ?? "", ...attrsToPb(r.attrs) };
    return granted(await this.unary<typeof req, PbLease>("acquire lease", (c, q, m, o, cb) => c.acquireLease(q, m, o, cb), req));
  }

  async renew(nodeName: string, subnet: string, instanceId = ""): Promise<GrantedLease> {
    return granted(await this.unary<{ nodeName: string; subnet: string; instanceId: string }, PbLease>("renew lease", (c, q, m, o, cb) => c.renewLease(q, m, o, cb), { nodeName, subnet, instanceId }));
  }

  async release(nodeName: string, subnet: string, instanceId = ""): Promise<void> {
    await this.unary<{ nodeName: string; subnet: string; instanceId: string }, unknown>("release lease", (c, q, m, o, cb) => c.releaseLease(q, m, o, cb), { nodeName, subnet, instanceId });
  }

  /** One WatchLeases stream; ends (throws) when the stream breaks or goes silent. Abort the signal to cancel. */
  async *watch(fromRevision: number, signal: AbortSignal, storeId = ""): AsyncGenerator<WatchMessage> {
    const call = this.clients[this.current]!.watchLeases({ fromRevision, storeId });
    const onAbort = () => call.cancel();
    signal.addEventListener("abort", onAbort, { once: true });
    const idleMs = this.opts.watchIdleTimeoutMs ?? WATCH_IDLE_TIMEOUT_MS;
    let idle = false;
    let watchdog: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => { idle = true; call.cancel(); }, clampTimerMs(idleMs));
    };
    const unavailable = (details: string) => Object.assign(new Error(details), { code: status.UNAVAILABLE, details });
    arm();
    try {
      for await (const m of call as AsyncIterable<import("../../gen/weft/v1/lease.js").WatchLeasesResponse>) {
        arm();
        this.opts.onConnectivity?.(true);
        switch (m.kind) {
          case WatchLeasesResponse_Kind.KIND_SNAPSHOT:
            yield { kind: "snapshot", leases: m.leases.map(leaseFromPb), resync: m.resync };
            break;
          case WatchLeasesResponse_Kind.KIND_SNAPSHOT_COMPLETE:
            yield { kind: "complete", revision: Number(m.revision), storeId: m.storeId };
            break;
          case WatchLeasesResponse_Kind.KIND_EVENTS:
            yield { kind: "events", events: m.events.map(eventFromPb).filter((e): e is LeaseEvent => !!e), revision: Number(m.revision) };
            break;
          case WatchLeasesResponse_Kind.KIND_PROGRESS:
            yield { kind: "progress", revision: Number(m.revision), storeId: m.storeId };
            break;
        }
      }
      if (signal.aborted) return;
      // A stream the server closed cleanly is as good as broken: report it and fail over like any outage.
      throw this.fail(unavailable(idle ? `no message for ${idleMs} ms; connection presumed dead` : "watch stream ended"), "watch leases");
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof WeftError) throw err;
      throw this.fail(idle ? unavailable(`no message for ${idleMs} ms; connection presumed dead`) : err, "watch leases");
    } finally {
      clearTimeout(watchdog);
      signal.removeEventListener("abort", onAbort);
      call.cancel();
    }
  }

  reportStatus(): StatusStream {
    let call: ReturnType<LeaseServiceClient["reportStatus"]>;
    const server = this.server;
    // Not fail(): moving to the next server is the watch's and the unary calls' decision, not this stream's.
    const done = new Promise<void>((resolve, reject) => {
      call = this.clients[this.current]!.reportStatus((err) => {
        if (!err || err.code === status.CANCELLED) return resolve();
        reject(new WeftError(CODE_MAP[err.code] ?? "INTERNAL", `report status (lease server ${server}): ${err.details || err.message}`, { cause: err }));
      });
    });
    // A write after the stream failed is dropped: `done` already says why.
    call!.on("error", () => {});
    return {
      send: (r) => {
        const msg: NodeStatus = { ...r, problems: [...r.problems] };
        if (!call.writableEnded && !call.destroyed) call.write(msg);
      },
      close: () => call.cancel(),
      done,
    };
  }

  close(): void {
    for (const c of this.clients) c.close();
  }
}
