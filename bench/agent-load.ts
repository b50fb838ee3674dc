// Fills the lease server with fake peers for the agent benchmark: acquires
// leases for nodes bench-<from>..bench-<to-1>, 32 at a time. Run where the
// server is reachable: agent-load.ts HOST:PORT FROM TO
import { LeaseClient } from "../node-agent/src/lease-client.js";

const [server, fromS, toS] = process.argv.slice(2);
const from = Number(fromS);
const to = Number(toS);
const client = new LeaseClient({ servers: [server!], callTimeoutMs: 30_000 });
let next = from;
const hex = (n: number) => n.toString(16).padStart(2, "0");
// Every node needs its own public IP (the server refuses a second holder): 198.19.<i/254>.<1..254>.
const publicIP = (i: number) => `198.19.${Math.floor(i / 254)}.${(i % 254) + 1}`;
async function worker(): Promise<void> {
  while (next < to) {
    const i = next++;
    await client.acquire({
      nodeName: `bench-${i}`, publicIP: publicIP(i),
      attrs: { type: "vxlan", vni: 1, vtepMac: `0e:be:00:${hex((i >> 16) & 255)}:${hex((i >> 8) & 255)}:${hex(i & 255)}` },
    });
  }
}
const t0 = performance.now();
await Promise.all(Array.from({ length: 32 }, worker));
client.close();
process.stdout.write(JSON.stringify({ acquired: to - from, ms: Math.round(performance.now() - t0) }) + "\n");
