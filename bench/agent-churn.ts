// Adds and removes one peer at a time for the agent benchmark, so the agent's
// log shows how long one peer change takes at a given table size: acquires the
// lease of node bench-extra-<i>, waits, releases it, waits, ROUNDS times. Run
// where the server is reachable: agent-churn.ts HOST:PORT ROUNDS GAP_MS
import { LeaseClient } from "../node-agent/src/lease-client.js";

const [server, roundsS, gapS] = process.argv.slice(2);
const rounds = Number(roundsS ?? 10);
const gapMs = Number(gapS ?? 700);
const client = new LeaseClient({ servers: [server!], callTimeoutMs: 30_000 });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const hex = (n: number) => n.toString(16).padStart(2, "0");
for (let i = 0; i < rounds; i++) {
  const nodeName = `bench-extra-${i}`;
  const l = await client.acquire({ nodeName, publicIP: `198.19.255.${i + 1}`, attrs: { type: "vxlan", vni: 1, vtepMac: `0e:be:01:00:00:${hex(i + 1)}` } });
  await sleep(gapMs);
  await client.release(nodeName, l.subnet);
  await sleep(gapMs);
}
client.close();
process.stdout.write(JSON.stringify({ rounds }) + "\n");
