// Makes a TCP port inside a network namespace reachable on this host's
// 127.0.0.1, with no route, address or rule in the root namespace: a relay
// process inside the namespace connects to the port there and listens on a
// Unix socket (the filesystem is shared by all namespaces); this process
// listens on 127.0.0.1 and relays each connection to that socket.
import { spawn, type ChildProcess } from "node:child_process";
import { rmSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";

export interface Forward {
  readonly port: number;
  close(): Promise<void>;
}

const RELAY = `
const net = require("node:net");
const [sock, port] = process.argv.slice(1);
net.createServer((c) => {
  const t = net.connect(Number(port), "127.0.0.1");
  c.pipe(t).pipe(c);
  c.on("error", () => t.destroy());
  t.on("error", () => c.destroy());
}).listen(sock, () => process.stdout.write("ready\\n"));
process.on("SIGTERM", () => process.exit(0));
`;

function pipeTo(path: string): (c: Socket) => void {
  return (c) => {
    const t = createConnection(path);
    c.pipe(t).pipe(c);
    c.on("error", () => t.destroy());
    t.on("error", () => c.destroy());
  };
}

/** Forwards 127.0.0.1:`port` in namespace `ns` to 127.0.0.1 here (on `localPort`, or any free port when it is taken). */
export async function forwardFromNamespace(ns: string, port: number, dir: string, localPort = 0): Promise<Forward> {
  const sock = join(dir, `fwd-${ns}-${port}.sock`);
  rmSync(sock, { force: true });
  const relay: ChildProcess = spawn("ip", ["netns", "exec", ns, process.execPath, "-e", RELAY, sock, String(port)], { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise<void>((resolve, reject) => {
    relay.once("error", reject);
    relay.once("exit", (code) => reject(new Error(`relay in ${ns} exited (${code})`)));
    relay.stdout!.once("data", () => resolve());
  });
  const open = new Set<Socket>();
  const relayTo = pipeTo(sock);
  const listen = (p: number) => new Promise<Server>((resolve, reject) => {
    const s = createServer((c) => {
      open.add(c);
      c.on("close", () => open.delete(c));
      relayTo(c);
    });
    s.once("error", reject);
    s.listen(p, "127.0.0.1", () => resolve(s));
  });
  const server = await listen(localPort).catch(() => listen(0));
  return {
    port: (server.address() as { port: number }).port,
    async close() {
      // A browser's event stream never ends by itself.
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const c of open) c.destroy();
      await closed;
      relay.kill("SIGTERM");
      rmSync(sock, { force: true });
    },
  };
}
