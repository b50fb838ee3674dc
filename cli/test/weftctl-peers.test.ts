// weftctl peers against an agent's REST API: the real handler (buildApi)
// listening on 127.0.0.1, fed by a fixed view, and the real bin/weftctl.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApi, type AgentApi, type PeerView } from "../../node-agent/src/api.js";
import { createAgentMetrics } from "../../node-agent/src/metrics.js";
import { silentLog } from "../../node-agent/test/helpers/fixtures.js";
import { assertBuilt, oneLine, weftctl } from "./run-weftctl.js";

const PEERS: PeerView[] = [
  { nodeName: "node-2", subnet: "10.244.2.0/24", publicIP: "198.18.0.2", programmed: true, state: "programmed", path: "wireguard",
    wireguard: { publicKey: Buffer.alloc(32, 2).toString("base64"), endpoint: "198.18.0.2:51820", lastHandshake: new Date(Date.now() - 30_000).toISOString(), rxBytes: 10, txBytes: 20 } },
  { nodeName: "node-3", subnet: "10.244.3.0/24", publicIP: "198.18.1.3", programmed: false, state: "rejected", reason: "public IP 198.18.1.3 is not on eth0's subnet 198.18.0.0/24" },
];

describe("weftctl peers (real process, real agent API handler)", () => {
  let api: AgentApi;
  let url: string;
  beforeAll(async () => {
    assertBuilt();
    api = buildApi({
      view: { status: () => ({ ready: true, reasons: [] }), lease: () => undefined, peers: async () => PEERS, rotateKey: async () => { throw new Error("unused"); } },
      registry: createAgentMetrics().registry, log: silentLog,
    });
    url = await api.listen({ host: "127.0.0.1", port: 0, flag: "--http-listen" });
  });
  afterAll(() => api?.close());

  it("prints the agent's peers as a table, and -o json as the agent's JSON; WEFT_AGENT_URL and --agent-url both work", async () => {
    const [table, json] = await Promise.all([weftctl(["peers", "--agent-url", url]), weftctl(["-o", "json", "peers"], { WEFT_AGENT_URL: url })]);
    expect(table.stderr).toBe("");
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/^NODE\s+SUBNET\s+PUBLIC-IP\s+STATE\s+PATH\s+HANDSHAKE\s+REASON\n/);
    expect(table.stdout).toMatch(/^node-2\s+10\.244\.2\.0\/24\s+198\.18\.0\.2\s+programmed\s+wireguard\s+3\ds ago\s+-\n/m);
    expect(table.stdout).toMatch(/^node-3\s+10\.244\.3\.0\/24\s+198\.18\.1\.3\s+rejected\s+-\s+-\s+public IP 198\.18\.1\.3 is not on eth0's subnet 198\.18\.0\.0\/24\n/m);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual(PEERS);
  });

  it("an agent that cannot be reached exits 3 naming --agent-url", async () => {
    await api.close();
    try {
      const r = await weftctl(["peers"], { WEFT_AGENT_URL: url });
      expect(r.code).toBe(3);
      expect(oneLine(r.stderr)).toBe(`weftctl: cannot reach the agent at ${url}: connection refused: nothing listens there; is it running? Otherwise point WEFT_AGENT_URL at the agent's --http-listen address`);
    } finally {
      url = await api.listen({ host: "127.0.0.1", port: Number(new URL(url).port), flag: "--http-listen" });
    }
  });
});
