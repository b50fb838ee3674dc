// ReportStatus over real gRPC into a real server (SQLite file): GET /v1/nodes, the
// metrics, the event stream, bad reports, and shutdown ending the streams.
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { NodeStatus } from "../../gen/weft/v1/lease.js";
import { loadServerConfig } from "../src/config.js";
import { startLeaseServer, type RunningServer } from "../src/server.js";
import { memoryLogger, tempDir, waitFor } from "./helpers.js";
import { connect, vxlanReq, writeNetConf } from "./server-process.js";

type Stream = { call: grpc.ClientWritableStream<NodeStatus>; result: Promise<grpc.ServiceError | null> };

const status = (nodeName: string, appliedRevision: number, over: Partial<NodeStatus> = {}): NodeStatus => ({
  nodeName, appliedRevision, healthy: true, problems: [], backend: "vxlan", version: "0.1.0", peers: 1, subnet: "", ...over,
});

describe("fleet status over gRPC and REST (in-process server)", () => {
  let dir: ReturnType<typeof tempDir>;
  let server: RunningServer;
  let api: ReturnType<typeof connect>;
  const streams: Stream[] = [];
  const open = (): Stream => {
    let call!: grpc.ClientWritableStream<NodeStatus>;
    const result = new Promise<grpc.ServiceError | null>((resolve) => {
      call = api.client.reportStatus((err) => resolve(err));
    });
    call.on("error", () => {});
    const s = { call, result };
    streams.push(s);
    return s;
  };
  const rest = async <T>(path: string): Promise<T> => (await (await fetch(`http://127.0.0.1:${server.httpPort}${path}`)).json()) as T;
  const metric = async (name: string) => (await (await fetch(`http://127.0.0.1:${server.httpPort}/metrics`)).text()).split("\n").filter((l) => l.startsWith(name));

  beforeAll(async () => {
    dir = tempDir("weft-fleet-");
    const cfg = loadServerConfig(["--insecure", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--store", `sqlite:${join(dir.path, "leases.db")}`, "--network-config", writeNetConf(dir.path)])!;
    server = await startLeaseServer(cfg, { log: memoryLogger().log });
    api = connect(`127.0.0.1:${server.grpcPort}`);
  });
  afterEach(() => {
    for (const s of streams.splice(0)) s.call.cancel();
  });
  afterAll(async () => {
    api.client.close();
    await server.close();
    dir.cleanup();
  });

  it("shows each node's state, counts agents by state and measures convergence", async () => {
    for (const n of [1, 2, 3]) await api.call("acquireLease", vxlanReq(n));
    await waitFor(() => server.hub.leaseCount === 3, "the leases in the hub");
    const rev = server.hub.revision;
    const a = open();
    const b = open();
    a.call.write(status("node-1", rev));
    b.call.write(status("node-2", rev, { healthy: false, problems: ["peers not programmed yet"] }));
    type Nodes = { revision: number; agents: Record<string, number>; nodes: { nodeName: string; state: string; appliedRevision: number | null; problems: string[]; connected: boolean }[] };
    const nodes = await waitFor(async () => {
      const n = await rest<Nodes>("/v1/nodes");
      return n.agents.unhealthy === 1 && n.agents.converged === 1 && n;
    }, "two reports in /v1/nodes");
    expect(nodes.revision).toBe(rev);
    expect(nodes.agents).toEqual({ converged: 1, lagging: 0, unhealthy: 1, disconnected: 1 });
    expect(nodes.nodes.map((n) => [n.nodeName, n.state, n.connected])).toEqual([["node-1", "converged", true], ["node-2", "unhealthy", true], ["node-3", "disconnected", false]]);
    expect(nodes.nodes[1]!.problems).toEqual(["peers not programmed yet"]);
    expect(await metric("weft_lease_server_agents{")).toEqual(expect.arrayContaining([
      'weft_lease_server_agents{state="converged"} 1', 'weft_lease_server_agents{state="unhealthy"} 1', 'weft_lease_server_agents{state="disconnected"} 1', 'weft_lease_server_agents{state="lagging"} 0',
    ]));

    // A change: both agents lag until they report it applied; then one convergence is observed.
    await api.call("acquireLease", vxlanReq(4));
    await waitFor(() => server.hub.revision > rev, "the change in the hub");
    const next = server.hub.revision;
    expect((await rest<Nodes>("/v1/nodes")).agents.lagging).toBe(1);
    a.call.write(status("node-1", next));
    b.call.write(status("node-2", next));
    await waitFor(async () => (await metric("weft_lease_server_convergence_seconds_count"))[0] === "weft_lease_server_convergence_seconds_count 1", "one convergence observed");
    expect((await metric("weft_lease_server_agent_reports_total"))[0]).toBe("weft_lease_server_agent_reports_total 4");

    // The stream closing is the agent disconnecting.
    a.call.end();
    expect(await a.result).toBeNull();
    const after = await waitFor(async () => {
      const n = await rest<Nodes>("/v1/nodes");
      return n.agents.disconnected === 3 && n;
    }, "node-1 disconnected");
    expect(after.nodes.find((n) => n.nodeName === "node-1")).toMatchObject({ state: "disconnected", connected: false });
  });

  it("refuses bad reports with INVALID_ARGUMENT naming the field", async () => {
    const cases: [NodeStatus[], RegExp][] = [
      [[status("node-1", 1, { problems: Array(9).fill("x") })], /problems: 9 entries, at most 8/],
      [[status("node-1", 1, { backend: "gre" })], /backend: "gre" is not a backend/],
      [[status("Bad Name!", 1)], /node_name: "Bad Name!" is not a valid node name/],
      [[status("node-1", 1), status("node-2", 1)], /node_name: "node-2" differs from "node-1"/],
    ];
    for (const [messages, detail] of cases) {
      const s = open();
      for (const m of messages) s.call.write(m);
      const err = await s.result;
      expect(err?.code, String(detail)).toBe(grpc.status.INVALID_ARGUMENT);
      expect(err?.details).toMatch(detail);
    }
  });

  it("streams node changes to the status page as server-sent events", async () => {
    const ac = new AbortController();
    const res = await fetch(`http://127.0.0.1:${server.httpPort}/v1/events`, { signal: ac.signal });
    expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const reader = res.body!.getReader();
    let text = "";
    const until = async (re: RegExp) => {
      const end = Date.now() + 5000;
      while (!re.test(text)) {
        if (Date.now() > end) throw new Error(`no ${re} in event stream: ${text.slice(-500)}`);
        const { value } = await reader.read();
        text += new TextDecoder().decode(value);
      }
    };
    await until(/event: nodes\ndata: \{.*"nodes":\[/);
    await until(/event: reservations\ndata: \[/);
    const s = open();
    s.call.write(status("node-7", server.hub.revision, { healthy: false, problems: ["testing"] }));
    await until(/event: node\ndata: \{"nodeName":"node-7","state":"unhealthy"/);
    await until(/event: summary\ndata: \{"revision":\d+,"agents":/);
    s.call.cancel();
    await until(/event: node-removed\ndata: \{"nodeName":"node-7"\}/);
    ac.abort();
  });
});

describe("lease server shutdown", () => {
  it("ends report streams at once (no wait for the forced shutdown)", async () => {
    const dir = tempDir("weft-fleet-close-");
    const cfg = loadServerConfig(["--insecure", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--store", `sqlite:${join(dir.path, "leases.db")}`, "--network-config", writeNetConf(dir.path)])!;
    const server = await startLeaseServer(cfg, { log: memoryLogger().log });
    const api = connect(`127.0.0.1:${server.grpcPort}`);
    let call!: grpc.ClientWritableStream<NodeStatus>;
    const result = new Promise<grpc.ServiceError | null>((resolve) => (call = api.client.reportStatus((err) => resolve(err))));
    call.on("error", () => {});
    call.write(status("node-1", 0));
    await waitFor(() => server.fleet.nodes().nodes.some((n) => n.connected), "the report");
    const t0 = performance.now();
    await server.close();
    expect(performance.now() - t0).toBeLessThan(1500);
    expect((await result)?.code).toBe(grpc.status.UNAVAILABLE);
    api.client.close();
    dir.cleanup();
  });
});
