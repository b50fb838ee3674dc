// A raw HTTP/2 gRPC client for tests that send what a real client never
// would: truncated frames, lying length prefixes, half-sent messages.
import http2 from "node:http2";

export interface RawResult {
  /** grpc-status, or undefined when the stream ended without one (reset, closed). */
  readonly code?: number;
  readonly details: string;
  readonly rstCode?: number;
}

/** A 5-byte gRPC length prefix (uncompressed) followed by the body. */
export function frame(body: Buffer, declared = body.length): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(declared >>> 0, 1);
  return Buffer.concat([head, body]);
}

export function rawSession(addr: string): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    // An attacker does not limit itself: node would refuse streams above 10 MB of buffered data.
    const s = http2.connect(`http://${addr}`, { maxSessionMemory: 4096 });
    s.once("connect", () => resolve(s));
    s.once("error", reject);
    s.on("error", () => {});
  });
}

/**
 * Starts a call to `path` (e.g. /weft.v1.LeaseService/AcquireLease), writes
 * `data`, and ends the request stream when `end`. Resolves with the status.
 */
export function rawCall(session: http2.ClientHttp2Session, path: string, data: Buffer, end = true): { stream: http2.ClientHttp2Stream; result: Promise<RawResult> } {
  const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers" });
  let code: number | undefined;
  let details = "";
  const take = (h: http2.IncomingHttpHeaders) => {
    if (h["grpc-status"] !== undefined) code = Number(h["grpc-status"]);
    if (h["grpc-message"] !== undefined) details = decodeURIComponent(String(h["grpc-message"]));
  };
  stream.on("response", take);
  stream.on("trailers", take);
  stream.on("error", () => {});
  stream.on("data", () => {});
  const result = new Promise<RawResult>((resolve) => stream.on("close", () => resolve({ code, details, rstCode: stream.rstCode })));
  if (data.length > 0) stream.write(data);
  if (end) stream.end();
  return { stream, result };
}

/** Resident memory of a process in bytes (Linux). */
export async function rssBytes(pid: number): Promise<number> {
  const { readFile } = await import("node:fs/promises");
  const m = /VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}
