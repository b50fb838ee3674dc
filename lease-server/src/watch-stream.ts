// The write path of a WatchLeases stream, beside grpc-js.
//
// A watch message is encoded once per change and the same bytes go to every
// stream. Through call.write(), grpc-js does per stream and per message what
// is the same for all of them or does nothing here: an object-mode Writable,
// the server interceptor chain, a copy of the bytes into a new buffer behind
// the 5-byte gRPC prefix, a size check against a limit weft does not set, and
// channelz counting. Profiled at 10,000 streams (docs/benchmarks.md), that
// was about a fifth of the server's JS time per change.
//
// Here the gRPC frame (prefix + message) is made once per shared message and
// written to the call's HTTP/2 stream as it is: the bytes on the wire are the
// same standard gRPC any client reads. What stays with grpc-js: the response
// headers (sent through the call, so interceptors see them), and the status
// and trailers at the end (call.emit("error") / end(), which grpc-js sends
// after every byte written here, as the HTTP/2 stream keeps write order).
// The HTTP/2 stream's write callback still runs only once its bytes are
// handed to the connection, so the hub's flow control (in-flight bytes,
// dropping a stream that falls behind) sees what it saw before.
//
// It reaches into grpc-js 1.14 internals (the intercepting calls' nextCall
// chain and the base call's `stream`), as grpc-limits.ts does. When they are
// not there (another grpc-js), watchStreamWriter() returns undefined and the
// caller writes through call.write(); watch-stream.test.ts pins that this
// grpc-js takes the fast path.
import { constants as http2Constants, type ServerHttp2Stream } from "node:http2";
import * as grpc from "@grpc/grpc-js";

/** gRPC message frames by the message bytes they carry: made once per shared message, not per stream. */
const frames = new WeakMap<Buffer, Buffer>();

/** The length-prefixed gRPC message: flag 0 (uncompressed), 4-byte big-endian length, the message. */
export function grpcFrame(message: Buffer): Buffer {
  let f = frames.get(message);
  if (f === undefined) {
    f = Buffer.allocUnsafe(message.length + 5);
    f[0] = 0;
    f.writeUInt32BE(message.length, 1);
    message.copy(f, 5);
    frames.set(message, f);
  }
  return f;
}

interface BaseCall {
  stream: ServerHttp2Stream;
  metadataSent: boolean;
}

/** The innermost grpc-js call (the one holding the HTTP/2 stream), from the object a handler gets. */
function baseCall(call: object): BaseCall | undefined {
  let c = (call as { call?: unknown }).call as { stream?: unknown; metadataSent?: unknown; nextCall?: unknown } | undefined;
  for (let i = 0; i < 8 && c; i++) {
    if (c.stream && typeof (c.stream as ServerHttp2Stream).write === "function" && typeof c.metadataSent === "boolean") return c as BaseCall;
    c = c.nextCall as typeof c;
  }
  return undefined;
}

export interface WatchStreamWriter {
  /** Writes one encoded message; `done` runs once the bytes are handed to the connection (or the stream is gone). */
  write(message: Buffer, done: () => void): void;
  /**
   * Resets the HTTP/2 stream unless it has closed. A status sent after
   * messages its client never reads waits behind them in the stream forever
   * (its flow-control window is full); grpc-js has then already ended the
   * call, so grpc-limits' abortCall() no longer finds it.
   */
  reset(): void;
}

/**
 * A writer straight to the HTTP/2 stream of a server-streaming call, or
 * undefined when this grpc-js does not expose what it needs. Sends the
 * response headers now, through the call.
 */
export function watchStreamWriter(call: grpc.ServerWritableStream<unknown, unknown>): WatchStreamWriter | undefined {
  const base = baseCall(call);
  if (!base) return undefined;
  call.sendMetadata(new grpc.Metadata());
  // Headers not sent means the call is already cancelled: nothing more goes out on it.
  if (!base.metadataSent && !base.stream.headersSent) return undefined;
  const stream = base.stream;
  return {
    write(message, done) {
      // Deferred: calling done() synchronously would re-enter the hub's pump once per queued frame.
      if (stream.destroyed || stream.closed || stream.writableEnded) return void setImmediate(done);
      // An error here means the stream is being torn down; its close event ends the subscription.
      stream.write(grpcFrame(message), (err) => { if (!err) done(); });
    },
    reset() {
      if (!stream.closed && !stream.destroyed) stream.close(http2Constants.NGHTTP2_CANCEL);
    },
  };
}
