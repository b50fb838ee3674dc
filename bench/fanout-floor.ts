// The floor under the lease server's CPU per delivered event: what this machine charges a Node
// process for writing one small message to each of N loopback connections, with nothing else to
// do. Two ways, as a server could write: raw TCP (net.Socket.write) and one HTTP/2 stream per
// connection (node:http2, as weft's watch streams and gRPC use it). The writer's CPU (user +
// system, process.cpuUsage) over the rounds, divided by the messages, is the floor; the readers run
// in a child process, as watchers do. Rounds are spaced so writes never queue (the fan-out bench's
// isolated mode). Usage: npm run bench:fanout-floor -- [connections=10000] [rounds=20]
import { fork, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import http2 from "node:http2";
import net from "node:net";
import { fileURLToPath } from "node:url";

const MESSAGE = Buffer.alloc(120, 7); // about one lease event as a gRPC message
const GAP_MS = 200;

async function reader(kind: string, port: number, n: number): Promise<void> {
  let bytes = 0;
  const closers: Array<() => void> = [];
  for (let i = 0; i < n; i++) {
    if (kind === "tcp") {
      const s = net.connect(port, "127.0.0.1");
      s.on("data", (d) => (bytes += d.length));
      await once(s, "connect");
      closers.push(() => s.destroy());
    } else {
      const c = http2.connect(`http://127.0.0.1:${port}`);
      const req = c.request({ ":path": "/watch", ":method": "POST" }, { endStream: false });
      req.on("data", (d: Buffer) => (bytes += d.length));
      await once(req, "response");
      closers.push(() => c.destroy());
    }
  }
  process.send!({ ready: true });
  process.on("message", (m: { report?: boolean }) => {
    if (m.report) process.send!({ bytes });
    else { closers.forEach((c) => c()); process.exit(0); }
  });
}

async function writer(kind: "tcp" | "http2", n: number, rounds: number): Promise<{ usPerWrite: number; delivered: number }> {
  const outs: Array<(b: Buffer) => void> = [];
  let server: net.Server | http2.Http2Server;
  if (kind === "tcp") {
    server = net.createServer((s) => outs.push((b) => s.write(b)));
  } else {
    server = http2.createServer();
    server.on("stream", (stream) => {
      stream.respond({ ":status": 200, "content-type": "application/grpc" });
      outs.push((b) => stream.write(b));
    });
  }
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as net.AddressInfo).port;
  const child: ChildProcess = fork(fileURLToPath(import.meta.url), ["reader", kind, String(port), String(n)], { execArgv: process.execArgv });
  const ask = <T>(msg: object): Promise<T> => { child.send(msg); return once(child, "message").then(([m]) => m as T); };
  await once(child, "message");
  if (outs.length !== n) throw new Error(`${kind}: ${outs.length} of ${n} connections accepted`);
  await new Promise((r) => setTimeout(r, 500));
  const cpu0 = process.cpuUsage();
  for (let r = 0; r < rounds; r++) {
    for (const out of outs) out(MESSAGE);
    // Let the writes drain (they go out in this process's event loop turns), then rest.
    await new Promise((res) => setTimeout(res, GAP_MS));
  }
  const cpu = process.cpuUsage(cpu0);
  const { bytes } = await ask<{ bytes: number }>({ report: true });
  child.send({ stop: true });
  server.close();
  if (kind === "http2") for (const s of (server as unknown as { sessions?: Set<http2.Http2Session> }).sessions ?? []) s.destroy();
  const delivered = Math.floor(bytes / MESSAGE.length);
  return { usPerWrite: (cpu.user + cpu.system) / (n * rounds), delivered };
}

async function main(): Promise<void> {
  const [n = 10_000, rounds = 20] = process.argv.slice(2).map(Number);
  if (!Number.isInteger(n) || n < 1 || !Number.isInteger(rounds) || rounds < 1) {
    throw new Error("usage: npm run bench:fanout-floor -- [connections=10000] [rounds=20] (positive integers)");
  }
  const out: Record<string, unknown> = { bench: "fanout-floor", connections: n, rounds, messageBytes: MESSAGE.length, gapMs: GAP_MS };
  for (const kind of ["tcp", "http2"] as const) {
    const r = await writer(kind, n, rounds);
    if (r.delivered < n * rounds) throw new Error(`${kind}: ${r.delivered} of ${n * rounds} messages arrived`);
    process.stdout.write(`${kind.padEnd(5)} ${n} connections x ${rounds} rounds: ${r.usPerWrite.toFixed(1)} µs of the writer's CPU per message (all ${r.delivered} arrived)\n`);
    out[kind] = Math.round(r.usPerWrite * 10) / 10;
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

if (process.argv[2] === "reader") {
  void reader(process.argv[3]!, Number(process.argv[4]), Number(process.argv[5]));
} else {
  main().catch((err) => {
    process.stderr.write(`fanout-floor: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
