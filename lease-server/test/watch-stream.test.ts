// The watch write path beside grpc-js (watch-stream.ts), on a real grpc-js
// server on 127.0.0.1 with an interceptor in the chain, read by grpc-js's own
// client and by a raw HTTP/2 client: the bytes are standard gRPC, the status
// comes after every message, and this grpc-js version takes the fast path.
import type http2 from "node:http2";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LeaseServiceClient, WatchLeasesRequest, WatchLeasesResponse, WatchLeasesResponse_Kind, type LeaseServiceServer } from "../../gen/weft/v1/lease.js";
import { leaseServiceDefinition } from "../src/grpc-service.js";
import { grpcFrame, watchStreamWriter } from "../src/watch-stream.js";
import { rawCall, rawSession, frame } from "./raw-grpc.js";

const progress = (revision: number) => Buffer.from(WatchLeasesResponse.encode({
  kind: WatchLeasesResponse_Kind.KIND_PROGRESS, leases: [], events: [], revision, resync: false, storeId: "s",
}).finish());

describe("watch stream writer (grpc-js 1.14 server, in process)", () => {
  let server: grpc.Server;
  let addr: string;
  /** What the handler saw: whether the fast path was there. */
  const fastPath: boolean[] = [];
  const sessions: http2.ClientHttp2Session[] = [];

  beforeAll(async () => {
    // An interceptor in the chain, as the lease server has (grpc-limits.ts).
    server = new grpc.Server({ interceptors: [(_m, call) => new grpc.ServerInterceptingCall(call)] });
    const notUsed = () => { throw new Error("not used here"); };
    const impl = {
      getNetworkConfig: notUsed, acquireLease: notUsed, renewLease: notUsed, releaseLease: notUsed, reportStatus: notUsed,
      // fromRevision = how many messages to send; storeId "fail" ends with an error status instead of OK.
      watchLeases: (call: grpc.ServerWritableStream<WatchLeasesRequest, WatchLeasesResponse>) => {
        const w = watchStreamWriter(call as grpc.ServerWritableStream<unknown, unknown>);
        fastPath.push(w !== undefined);
        const n = Number(call.request.fromRevision);
        let written = 0;
        const next = () => {
          if (written === n) {
            if (call.request.storeId === "fail") call.emit("error", { code: grpc.status.UNAVAILABLE, details: "gone; reconnect" });
            else call.end();
            return;
          }
          written++;
          w!.write(progress(written), next);
        };
        next();
      },
    } as unknown as LeaseServiceServer;
    server.addService(leaseServiceDefinition, impl);
    const port = await new Promise<number>((res, rej) => server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
    addr = `127.0.0.1:${port}`;
  });
  afterAll(() => {
    for (const s of sessions) s.destroy();
    server.forceShutdown();
  });

  it("makes the gRPC frame of a shared message once: 0 flag, big-endian length, the bytes", () => {
    const msg = progress(7);
    const f = grpcFrame(msg);
    expect(f.subarray(0, 5)).toEqual(frame(Buffer.alloc(0), msg.length));
    expect(f.subarray(5)).toEqual(msg);
    expect(grpcFrame(msg)).toBe(f);
    expect(grpcFrame(progress(7))).not.toBe(f);
  });

  it("delivers every message in order to a grpc-js client, then status OK, through the fast path", async () => {
    const client = new LeaseServiceClient(addr, grpc.credentials.createInsecure());
    try {
      const got: number[] = [];
      const status = await new Promise<grpc.StatusObject>((resolve) => {
        const call = client.watchLeases({ fromRevision: 300, storeId: "" });
        call.on("data", (m: WatchLeasesResponse) => got.push(m.revision));
        call.on("status", resolve);
        call.on("error", () => {});
      });
      expect(status.code).toBe(grpc.status.OK);
      expect(got).toEqual(Array.from({ length: 300 }, (_, i) => i + 1));
      expect(fastPath.at(-1)).toBe(true);
    } finally {
      client.close();
    }
  });

  it("puts an error status in the trailers after the last message", async () => {
    const client = new LeaseServiceClient(addr, grpc.credentials.createInsecure());
    try {
      const got: number[] = [];
      const err = await new Promise<grpc.ServiceError>((resolve) => {
        const call = client.watchLeases({ fromRevision: 3, storeId: "fail" });
        call.on("data", (m: WatchLeasesResponse) => got.push(m.revision));
        call.on("error", resolve);
      });
      expect(err.code).toBe(grpc.status.UNAVAILABLE);
      expect(err.details).toBe("gone; reconnect");
      expect(got).toEqual([1, 2, 3]);
    } finally {
      client.close();
    }
  });

  it("sends standard gRPC on the wire: response headers, length-prefixed messages, grpc-status trailer", async () => {
    const session = await rawSession(addr);
    sessions.push(session);
    const body = Buffer.from(WatchLeasesRequest.encode({ fromRevision: 2, storeId: "" }).finish());
    const c = rawCall(session, "/weft.v1.LeaseService/WatchLeases", frame(body));
    const headers = new Promise<http2.IncomingHttpHeaders>((r) => c.stream.once("response", r));
    const chunks: Buffer[] = [];
    c.stream.on("data", (d: Buffer) => chunks.push(d));
    const result = await c.result;
    expect((await headers)["content-type"]).toBe("application/grpc+proto");
    expect(result.code).toBe(grpc.status.OK);
    expect(Buffer.concat(chunks)).toEqual(Buffer.concat([frame(progress(1)), frame(progress(2))]));
  });
});
