// Request generators for the gRPC fuzz tests: every weft.v1 request message
// with arbitrary field values, valid encodings damaged, and arbitrary bytes.
import { expect } from "vitest";
import * as grpc from "@grpc/grpc-js";
import fc from "fast-check";
import {
  AcquireLeaseRequest, GetNetworkConfigRequest, IssueCertificateRequest, LeaseServiceService, NodeIdentityServiceService, NodeStatus, ReleaseLeaseRequest, RenewLeaseRequest, WatchLeasesRequest,
} from "../../gen/weft/v1/lease.js";
import { containsNet, formatCidr, parseCidr } from "../../lib/src/cidr.js";
import type { RunningServer } from "../../lease-server/src/server.js";
import { nastyString } from "./fuzz.js";

const S = grpc.status;
/** What the API documents for these calls; CANCELLED only for watches we cancel ourselves. */
export const DOCUMENTED = new Set([S.OK, S.INVALID_ARGUMENT, S.NOT_FOUND, S.ALREADY_EXISTS, S.RESOURCE_EXHAUSTED, S.PERMISSION_DENIED, S.OUT_OF_RANGE, S.UNAUTHENTICATED, S.FAILED_PRECONDITION]);
const CALL_DEADLINE_MS = 5000;
const identity = (b: Buffer) => b;

export interface Answer { readonly code: number; readonly details: string; readonly body?: Buffer }

export function unary(client: grpc.Client, path: string, body: Buffer): Promise<Answer> {
  return new Promise((resolve) => {
    client.makeUnaryRequest(path, identity, identity, body, new grpc.Metadata(), { deadline: Date.now() + CALL_DEADLINE_MS }, (err, res) => {
      resolve(err ? { code: err.code, details: err.details } : { code: S.OK, details: "", body: res });
    });
  });
}

/** Opens a watch, waits for its first message or its end, then cancels it. */
export function watch(client: grpc.Client, body: Buffer): Promise<Answer> {
  return new Promise((resolve) => {
    const call = client.makeServerStreamRequest("/weft.v1.LeaseService/WatchLeases", identity, identity, body, new grpc.Metadata(), { deadline: Date.now() + CALL_DEADLINE_MS });
    let done = false;
    const finish = (r: Answer) => {
      if (done) return;
      done = true;
      resolve(r);
      call.cancel();
    };
    call.on("data", () => finish({ code: S.OK, details: "" }));
    call.on("error", (err: grpc.ServiceError) => finish({ code: err.code, details: err.details }));
    call.on("end", () => finish({ code: S.OK, details: "" }));
  });
}

export const NAMES = Array.from({ length: 20 }, (_, i) => `node-${i + 1}`);
const nodeName = fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...NAMES) }, { weight: 1, arbitrary: nastyString(["node-1.", "-node", "NODE-1", "a".repeat(254)]) });
const subnet = fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 0, max: 17 }).map((i) => `10.244.${i}.0/24`) }, { weight: 1, arbitrary: nastyString(["0.0.0.0/0", "10.244.0.0/20", "10.244.1.0/25", "10.244.1.1/24", "10.244.16.0/24"]) });
const bigNum = fc.oneof(fc.integer({ min: 0, max: 0xffffffff }), fc.constantFrom(0, 1, 2, 0xffffff, 0x1000000, 0xffffffff));
const anyAttrs = fc.record({
  vxlan: fc.option(fc.record({ vni: fc.oneof(fc.constant(1), bigNum), vtepMac: fc.oneof(fc.integer({ min: 1, max: 30 }).map((i) => `0e:00:00:00:00:${i.toString(16).padStart(2, "0")}`), nastyString(["0E:00:00:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "01:00:00:00:00:01"])) }), { nil: undefined }),
  wireguard: fc.option(fc.record({ publicKey: nastyString([Buffer.alloc(32, 3).toString("base64")]), listenPort: bigNum }), { nil: undefined }),
  hostGw: fc.option(fc.constant({}), { nil: undefined }),
});
const mac = fc.integer({ min: 1, max: 30 }).map((i) => `0e:00:00:00:00:${i.toString(16).padStart(2, "0")}`);
const attrs = fc.oneof({ weight: 4, arbitrary: mac.map((m) => ({ vxlan: { vni: 1, vtepMac: m } })) }, { weight: 2, arbitrary: anyAttrs });
const publicIp = fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 40 }).map((i) => `198.18.0.${i}`) }, { weight: 1, arbitrary: nastyString(["0.1.2.3", "127.0.0.1", "10.244.1.5", "224.0.0.1", "255.255.255.255", "169.254.0.1", "198.18.0.256"]) });
const instanceId = fc.oneof({ weight: 4, arbitrary: fc.constantFrom("", "instance-a", "instance-b") }, { weight: 1, arbitrary: nastyString() });

export interface Call { readonly path: string; readonly encode: () => Uint8Array; readonly stream?: boolean }

export const messageCall: fc.Arbitrary<Call> = fc.oneof(
  fc.constant({ path: "/weft.v1.LeaseService/GetNetworkConfig", encode: () => GetNetworkConfigRequest.encode({}).finish() }),
  { weight: 4, arbitrary: fc.record({ nodeName, publicIp, attrs, previousSubnet: fc.oneof(fc.constant(""), subnet), instanceId }).map((r) => ({
    path: "/weft.v1.LeaseService/AcquireLease", encode: () => AcquireLeaseRequest.encode({ nodeName: r.nodeName, publicIp: r.publicIp, ...r.attrs, previousSubnet: r.previousSubnet, instanceId: r.instanceId }).finish(),
  })) },
  { weight: 2, arbitrary: fc.record({ nodeName, subnet, instanceId }).map((r) => ({ path: "/weft.v1.LeaseService/RenewLease", encode: () => RenewLeaseRequest.encode(r).finish() })) },
  { weight: 2, arbitrary: fc.record({ nodeName, subnet, instanceId }).map((r) => ({ path: "/weft.v1.LeaseService/ReleaseLease", encode: () => ReleaseLeaseRequest.encode(r).finish() })) },
  fc.record({ fromRevision: fc.oneof(fc.nat(100), fc.constantFrom(2 ** 53 - 1, 2 ** 53, 2 ** 63)), storeId: nastyString() }).map((r) => ({
    path: "/weft.v1.LeaseService/WatchLeases", stream: true, encode: () => WatchLeasesRequest.encode({ fromRevision: r.fromRevision, storeId: r.storeId } as never).finish(),
  })),
  // ReportStatus is client-streaming; sent like a unary call it is one report, then the end of the stream.
  fc.record({
    nodeName, appliedRevision: fc.oneof(fc.nat(100), fc.constantFrom(2 ** 53 - 1, 2 ** 53, 2 ** 63)), healthy: fc.boolean(),
    problems: fc.array(nastyString(["x".repeat(201)]), { maxLength: 10 }), backend: nastyString(["vxlan", "host-gw", "wireguard"]), version: nastyString(), peers: bigNum, subnet: fc.oneof(fc.constant(""), subnet),
  }).map((r) => ({ path: "/weft.v1.LeaseService/ReportStatus", encode: () => NodeStatus.encode(r as never).finish() })),
  fc.record({ nodeName, csrPem: nastyString(["-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"]), joinToken: nastyString() }).map((r) => ({
    path: "/weft.v1.NodeIdentityService/IssueCertificate", encode: () => IssueCertificateRequest.encode(r).finish(),
  })),
);

/** A valid message's bytes, damaged: cut short, bits flipped, unknown or repeated fields appended. */
export const damaged: fc.Arbitrary<Call> = fc.tuple(messageCall, fc.nat(), fc.uint8Array({ maxLength: 32 }), fc.constantFrom("cut", "flip", "append", "prepend")).map(([c, n, extra, how]) => ({
  ...c,
  encode: () => {
    const b = Buffer.from(c.encode());
    if (how === "cut") return b.subarray(0, b.length ? n % b.length : 0);
    if (how === "flip") { if (b.length) b[n % b.length]! ^= 1 << (n % 8); return b; }
    return how === "append" ? Buffer.concat([b, extra]) : Buffer.concat([extra, b]);
  },
}));

const PATHS = [...Object.values(LeaseServiceService), ...Object.values(NodeIdentityServiceService)].map((m) => m.path as string);
export const rawBytes: fc.Arbitrary<Call> = fc.tuple(fc.constantFrom(...PATHS), fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.constantFrom(
  Uint8Array.of(0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f), // a string field claiming 4 GB
  Uint8Array.of(0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01), // an 11-byte varint
  Uint8Array.of(0x0b), // a group start without end
  Uint8Array.of(0x0a, 0x02, 0xc3, 0x28), // invalid UTF-8 in a string
))).map(([path, b]) => ({ path, stream: path.endsWith("/WatchLeases"), encode: () => b }));

/** Every lease a node subnet of the network, no subnet leased twice, no node with two leases. */
export async function checkStore(server: RunningServer): Promise<void> {
  const { leases } = await server.store.listLeases();
  const network = server.manager.network;
  const subnets = new Set<string>();
  const names = new Set<string>();
  for (const l of leases) {
    const n = parseCidr(l.subnet);
    expect(n && formatCidr(n) === l.subnet && containsNet(network.network, n) && n.prefix === network.subnetLen, `lease ${l.subnet} is a node subnet`).toBe(true);
    expect(subnets.has(l.subnet), `subnet ${l.subnet} leased twice`).toBe(false);
    expect(names.has(l.nodeName), `node ${l.nodeName} holds two leases`).toBe(false);
    subnets.add(l.subnet);
    names.add(l.nodeName);
  }
}

