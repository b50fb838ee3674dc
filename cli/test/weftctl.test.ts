// weftctl as operators run it: the real bin/weftctl process against the real
// lease server binary (SQLite file, admin token, 127.0.0.1). Fake nodes take
// leases and report their status over real gRPC, so `nodes` has states to
// show without a kernel. One server for the whole file; tests that change
// the fleet run in order.
import { writeFileSync } from "node:fs";
import { createServer as createHttpServer } from "node:http";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import type * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NodeStatus } from "../../gen/weft/v1/lease.js";
import { connect, startServer, vxlanReq, writeNetConf, type ServerProcess } from "../../lease-server/test/server-process.js";
import { tempDir, waitFor } from "../../lease-server/test/helpers.js";
import { assertBuilt, oneLine, weftctl } from "./run-weftctl.js";

const TOKEN = "weftctl-test-admin-token-0123456789abcdef";


describe("weftctl (real process, real lease server)", () => {
  let dir: ReturnType<typeof tempDir>;
  let server: ServerProcess;
  let grpcClient: ReturnType<typeof connect>;
  let tokenFile: string;
  let env: Record<string, string>;
  let admin: Record<string, string>;
  const streams = new Map<string, grpc.ClientWritableStream<NodeStatus>>();
  const subnets: Record<string, string> = {};

  const nodes = async () => (await (await fetch(`${server.httpUrl}/v1/nodes`)).json()) as { revision: number; nodes: { nodeName: string; state: string }[] };
  const states = async () => Object.fromEntries((await nodes()).nodes.map((n) => [n.nodeName, n.state]));
  const report = (node: string, status: Partial<NodeStatus>) => {
    let s = streams.get(node);
    if (!s) {
      s = grpcClient.client.reportStatus(() => {});
      streams.set(node, s);
    }
    s.write(NodeStatus.fromPartial({ nodeName: node, backend: "vxlan", version: "0.1.0", subnet: subnets[node] ?? "", ...status }));
  };

  beforeAll(async () => {
    assertBuilt();
    dir = tempDir("weftctl-");
    tokenFile = join(dir.path, "admin-token");
    writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
    server = await startServer(["--insecure", "--store", `sqlite:${join(dir.path, "leases.db")}`, "--network-config", writeNetConf(dir.path), "--admin-token-file", tokenFile]);
    env = { WEFT_SERVER_URL: server.httpUrl };
    admin = { ...env, WEFT_ADMIN_TOKEN_FILE: tokenFile };
    grpcClient = connect(server.grpcAddr);
    for (const i of [1, 2, 3]) subnets[`node-${i}`] = (await grpcClient.call("acquireLease", vxlanReq(i))).subnet;
    const { revision } = await nodes();
    // node-1 applied everything and is healthy, node-2 reports a problem, node-3 never reports.
    report("node-1", { appliedRevision: revision, healthy: true, peers: 2 });
    report("node-2", { appliedRevision: revision, healthy: false, problems: ["dataplane: 1 of 2 peers not programmed: replace route 10.244.3.0/24 via 198.18.0.3: ENETUNREACH"] });
    await waitFor(async () => JSON.stringify(await states()) === JSON.stringify({ "node-1": "converged", "node-2": "unhealthy", "node-3": "disconnected" }), "the fleet states");
  });

  afterAll(async () => {
    for (const s of streams.values()) s.end();
    grpcClient?.client.close();
    await server?.stop("SIGKILL");
    dir?.cleanup();
  });

  it("nodes: a table of every node with its state, problems readable below, and the fleet summary", async () => {
    const r = await weftctl(["nodes"], env);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const lines = r.stdout.split("\n");
    expect(lines[0]).toMatch(/^NODE\s+SUBNET\s+PUBLIC-IP\s+BACKEND\s+STATE\s+APPLIED\s+LAG\s+HEALTH\s+LAST-REPORT$/);
    // Columns line up: every row's SUBNET starts where the header's does.
    const col = lines[0]!.indexOf("SUBNET");
    const row = (n: string) => lines.find((l) => l.startsWith(`${n} `))!;
    for (const n of ["node-1", "node-2", "node-3"]) expect(row(n).slice(col)).toMatch(new RegExp(`^${subnets[n]!.replace(/\./g, "\\.")}\\s`));
    expect(row("node-1")).toMatch(/\s198\.18\.0\.1\s+vxlan\s+converged\s+\d+\s+0\s+ok\s+\d+s ago$/);
    expect(row("node-2")).toMatch(/\sunhealthy\s+\d+\s+0\s+problems\s+\d+s ago$/);
    expect(row("node-3")).toMatch(/\sdisconnected\s+-\s+-\s+-\s+-$/);
    expect(r.stdout).toContain("problems:\n  node-2: dataplane: 1 of 2 peers not programmed: replace route 10.244.3.0/24 via 198.18.0.3: ENETUNREACH\n");
    expect(r.stdout).toMatch(/\nrevision \d+: 1 converged, 0 lagging, 1 unhealthy, 1 disconnected; /);
  });

  it("-o json prints the API's JSON unchanged, for every read command", async () => {
    const reads = [["nodes", "/v1/nodes"], ["leases", "/v1/leases"], ["network", "/v1/network"], ["reservations", "/v1/reservations"]] as const;
    const results = await Promise.all(reads.map(([cmd, path]) => Promise.all([weftctl(["-o", "json", cmd], env), fetch(`${server.httpUrl}${path}`).then((x) => x.json())])));
    for (const [i, [r, api]] of results.entries()) {
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout), reads[i]![0]).toEqual(api);
    }
    // The option also works after the command.
    const after = await weftctl(["leases", "--output", "json"], env);
    expect((JSON.parse(after.stdout) as unknown[]).length).toBe(3);
  });

  it("leases and network: tables", async () => {
    const [leases, network] = await Promise.all([weftctl(["leases"], env), weftctl(["network"], env)]);
    expect(leases.code).toBe(0);
    expect(leases.stdout.split("\n")[0]).toMatch(/^SUBNET\s+NODE\s+PUBLIC-IP\s+BACKEND\s+EXPIRES\s+REVISION$/);
    expect(leases.stdout).toMatch(new RegExp(`^${subnets["node-2"]!.replace(/\./g, "\\.")}\\s+node-2\\s+198\\.18\\.0\\.2\\s+vxlan\\s+in \\d+h(\\d+m)?\\s+\\d+$`, "m"));
    expect(network.code).toBe(0);
    expect(network.stdout).toMatch(/^network\s+10\.244\.0\.0\/16$/m);
    expect(network.stdout).toMatch(/^leased\s+3 \(252 free\)$/m);
    expect(network.stdout).toMatch(/^backend\s+vxlan\s+\(vni=1 port=8472/m);
  });

  it("nodes --check and --wait-converged exit 4 while a node is not converged, naming it", async () => {
    const [check, wait] = await Promise.all([weftctl(["nodes", "--check"], env), weftctl(["nodes", "--wait-converged", "1s"], env)]);
    expect(check.code).toBe(4);
    expect(check.stdout).toMatch(/^NODE/);
    expect(oneLine(check.stderr)).toBe("weftctl: not converged: node-2 unhealthy (dataplane: 1 of 2 peers not programmed: replace route 10.244.3.0/24 via 198.18.0.3: ENETUNREACH), node-3 disconnected");
    expect(wait.code).toBe(4);
    expect(wait.ms).toBeGreaterThanOrEqual(1000);
    expect(oneLine(wait.stderr)).toMatch(/^weftctl: not converged after 1s: node-2 unhealthy/);
  });

  it("reserve, reservations, unreserve with the admin token file; conflicts exit 1 with the problem's code and detail", async () => {
    const r = await weftctl(["reserve", "10.244.77.0/24", "node-77"], admin);
    expect([r.code, r.stdout, r.stderr]).toEqual([0, "reserved 10.244.77.0/24 for node-77\n", ""]);
    const list = await weftctl(["reservations"], env);
    expect(list.stdout).toMatch(/^SUBNET\s+NODE\n10\.244\.77\.0\/24\s+node-77\n$/);
    const again = await weftctl(["-o", "json", "reserve", "10.244.77.0-24", "node-78"], admin);
    expect(again.code).toBe(1);
    expect(again.stdout).toBe("");
    expect(oneLine(again.stderr)).toMatch(/^weftctl: ALREADY_EXISTS: .*10\.244\.77\.0\/24.*node-77/);
    // The token itself from WEFT_ADMIN_TOKEN; Flannel's dash form of the subnet.
    const un = await weftctl(["unreserve", "10.244.77.0-24"], { ...env, WEFT_ADMIN_TOKEN: TOKEN });
    expect([un.code, un.stdout]).toEqual([0, "deleted the reservation of 10.244.77.0/24\n"]);
    const gone = await weftctl(["unreserve", "10.244.77.0/24", "--admin-token-file", tokenFile], env);
    expect(gone.code).toBe(1);
    expect(oneLine(gone.stderr)).toMatch(/^weftctl: NOT_FOUND: no reservation for 10\.244\.77\.0\/24/);
    const json = await weftctl(["-o", "json", "reserve", "10.244.78.0/24", "node-78"], admin);
    expect(JSON.parse(json.stdout)).toEqual({ subnet: "10.244.78.0/24", nodeName: "node-78" });
    expect((await weftctl(["unreserve", "10.244.78.0/24"], admin)).code).toBe(0);
  });

  it("state-changing commands without a token exit 2 naming --admin-token-file and WEFT_ADMIN_TOKEN_FILE, and send nothing", async () => {
    const commands = [["reserve", "10.244.79.0/24", "node-79"], ["unreserve", "10.244.79.0/24"], ["revoke", subnets["node-1"]!]];
    const runs = await Promise.all(commands.map((args) => weftctl(args, env)));
    for (const [i, r] of runs.entries()) {
      expect(r.code).toBe(2);
      expect(oneLine(r.stderr)).toMatch(new RegExp(`^weftctl: ${commands[i]![0]} changes state and needs the lease server's admin token: pass --admin-token-file FILE \\(or set WEFT_ADMIN_TOKEN_FILE`));
    }
    expect(await (await fetch(`${server.httpUrl}/v1/reservations`)).json()).toEqual([]);
    expect(await states()).toHaveProperty("node-1");
    const [wrong, missing] = await Promise.all([
      weftctl(["revoke", subnets["node-1"]!], { ...env, WEFT_ADMIN_TOKEN: "not-the-token" }),
      weftctl(["revoke", subnets["node-1"]!, "--admin-token-file", join(dir.path, "nope")], env),
    ]);
    expect(wrong.code).toBe(1);
    expect(oneLine(wrong.stderr)).toMatch(/^weftctl: PERMISSION_DENIED: .*\(weftctl sent the token from WEFT_ADMIN_TOKEN; /);
    expect(missing.code).toBe(2);
    expect(oneLine(missing.stderr)).toMatch(/^weftctl: --admin-token-file: cannot read .*nope \(ENOENT\); check the path$/);
  });

  it("usage errors exit 2 and name the argument and the fix", async () => {
    const cases: [string[], RegExp][] = [
      [["reserve", "10.244.7", "node-7"], /^weftctl: SUBNET: "10\.244\.7" is not a subnet; write it like 10\.244\.7\.0\/24$/],
      [["revoke", "10.244.7.1/24"], /^weftctl: SUBNET: 10\.244\.7\.1\/24 has host bits set; did you mean 10\.244\.7\.0\/24\?$/],
      [["reserve", "10.244.7.0/24", "Node_7"], /^weftctl: NODE: "Node_7" is not a valid node name; use 1-253 lower-case letters/],
      [["nodes", "--wait-converged", "soon"], /^weftctl: --wait-converged: "soon" is not a duration; write it like 30s/],
      [["--server-url", "127.0.0.1:7601", "nodes"], /^weftctl: --server-url: "127\.0\.0\.1:7601" is not an http:\/\/ or https:\/\/ base URL; write it like http:\/\/127\.0\.0\.1:7601$/],
      [["--ca", "/etc/hosts", "nodes"], /^weftctl: --ca is for HTTPS, but WEFT_SERVER_URL is http:\/\/.*; use an https:\/\/ URL/],
    ];
    const runs = await Promise.all(cases.map(([args]) => weftctl(args, env)));
    runs.forEach((r, i) => {
      expect(r.code, cases[i]![0].join(" ")).toBe(2);
      expect(oneLine(r.stderr)).toMatch(cases[i]![1]);
    });
    // commander's own errors: same prefix and exit code, plus where to find help.
    const commanderCases = [["nodes", "--bogus"], ["-o", "yaml", "nodes"], ["reserve", "10.244.7.0/24"], ["frobnicate"]];
    const [badEnv, ...commanderRuns] = await Promise.all([weftctl(["nodes"], { WEFT_SERVER_URL: "ftp://x" }), ...commanderCases.map((args) => weftctl(args, env))]);
    commanderRuns.forEach((r, i) => {
      expect(r.code, commanderCases[i]!.join(" ")).toBe(2);
      expect(r.stderr).toMatch(/^weftctl: /);
      expect(r.stderr).toContain("weftctl --help");
    });
    expect(oneLine(badEnv.stderr)).toMatch(/^weftctl: WEFT_SERVER_URL: "ftp:\/\/x" is not/);
  });

  it("--help on every command documents the exit codes; --version prints the version", async () => {
    const cmds = [[], ["nodes"], ["leases"], ["network"], ["reservations"], ["reserve"], ["unreserve"], ["revoke"], ["peers"]];
    const runs = await Promise.all(cmds.map((cmd) => weftctl([...cmd, "--help"])));
    for (const [i, r] of runs.entries()) {
      const cmd = cmds[i]!;
      expect(r.code, cmd.join(" ")).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^Usage: weftctl ${cmd[0] ?? ""}`));
      expect(r.stdout).toContain("3  the server cannot be reached");
    }
    const v = await weftctl(["--version"]);
    expect([v.code, v.stdout]).toEqual([0, "weftctl 0.1.0\n"]);
  });

  it("a server that cannot be reached exits 3 naming the URL and how it was set", async () => {
    const closed = await freePort();
    const [byEnv, byFlag] = await Promise.all([
      weftctl(["nodes"], { WEFT_SERVER_URL: `http://127.0.0.1:${closed}` }),
      // The flag wins over the environment.
      weftctl(["--server-url", `http://127.0.0.1:${closed}`, "leases"], env),
    ]);
    expect(byEnv.code).toBe(3);
    expect(oneLine(byEnv.stderr)).toBe(`weftctl: cannot reach the lease server at http://127.0.0.1:${closed}: connection refused: nothing listens there; is it running? Otherwise point WEFT_SERVER_URL at the lease server's --http-listen address`);
    expect(byFlag.code).toBe(3);
    expect(oneLine(byFlag.stderr)).toContain("point --server-url at");
    // A server that accepts and never answers: --timeout bounds the wait.
    const silent = await listenSilently();
    try {
      const r = await weftctl(["--timeout", "300ms", "nodes"], { WEFT_SERVER_URL: `http://127.0.0.1:${(silent.address() as { port: number }).port}` });
      expect(r.code).toBe(3);
      expect(oneLine(r.stderr)).toMatch(/: no answer within 0\.3 s; .* or give it longer with --timeout$/);
      expect(r.ms).toBeLessThan(5000);
    } finally {
      silent.close();
    }
    // Another program on the port (a proxy's HTML error, not a problem): exit 1 naming the address.
    const proxy = createHttpServer((_req, res) => res.writeHead(502, { "content-type": "text/html" }).end("<html><body>Bad Gateway</body></html>"));
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
    try {
      const url = `http://127.0.0.1:${(proxy.address() as { port: number }).port}`;
      const r = await weftctl(["--server-url", url, "nodes"]);
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toBe(`weftctl: the lease server at ${url} answered HTTP 502 Bad Gateway: <html><body>Bad Gateway</body></html>; is --server-url the right address?`);
    } finally {
      proxy.close();
    }
  });

  it("revoke removes a lease (with a reason); revoking it again exits 1 with LEASE_NOT_FOUND", async () => {
    const subnet = subnets["node-3"]!;
    const r = await weftctl(["revoke", subnet, "--reason", "decommissioned"], admin);
    expect([r.code, r.stdout, r.stderr]).toEqual([0, `revoked the lease of node-3 on ${subnet}\n`, ""]);
    const leases = (await (await fetch(`${server.httpUrl}/v1/leases`)).json()) as { subnet: string }[];
    expect(leases.map((l) => l.subnet)).not.toContain(subnet);
    const again = await weftctl(["-o", "json", "revoke", subnet], admin);
    expect(again.code).toBe(1);
    expect(oneLine(again.stderr)).toBe(`weftctl: LEASE_NOT_FOUND: no lease on ${subnet}; GET /v1/leases lists the live ones`);
  });

  it("nodes --wait-converged exits 0 once every node has applied the newest revision", async () => {
    const waiting = weftctl(["nodes", "--wait-converged", "15s"], env);
    await new Promise((r) => setTimeout(r, 600));
    const { revision } = await nodes();
    // node-3 too: it may still hold its lease when this test runs alone (-t).
    for (const node of ["node-1", "node-2", "node-3"]) report(node, { appliedRevision: revision, healthy: true, peers: 1 });
    const r = await waiting;
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.ms).toBeLessThan(10_000);
    expect(r.stdout).toMatch(/\nrevision \d+: [23] converged, 0 lagging, 0 unhealthy, 0 disconnected; (last change converged in |no change converged yet)/);
    expect(r.stdout).not.toContain("problems:");
  });
});

/** A port nothing listens on (bound, then closed). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** Accepts connections and never answers. */
async function listenSilently(): Promise<Server> {
  const sockets = new Set<import("node:net").Socket>();
  const s = createServer((sock) => {
    sockets.add(sock);
    sock.on("error", () => {});
  });
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const close = s.close.bind(s);
  s.close = ((cb?: (err?: Error) => void) => {
    for (const sock of sockets) sock.destroy();
    return close(cb);
  }) as Server["close"];
  return s;
}
