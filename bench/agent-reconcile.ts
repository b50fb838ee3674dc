// Microbenchmark of reconcile passes over N fake VXLAN peers against the real
// kernel, without a lease server or gRPC. Runs inside a throwaway namespace
// with an interface "ul0", which bench/agent.ts sets up. Usage: agent-reconcile.js N
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import type { Lease } from "../lib/src/lease.js";
import { parseNetworkConfig } from "../lib/src/net-config.js";
import { VxlanBackend } from "../node-agent/src/backends/vxlan.js";
import { NetlinkDataplane } from "../node-agent/src/dataplane/netlink-dataplane.js";
import { selectInterface } from "../node-agent/src/iface.js";
import { Reconciler } from "../node-agent/src/reconciler.js";
import { AgentState } from "../node-agent/src/state.js";

const n = Number(process.argv[2] ?? 5000);
// "watch": subscribe to kernel notifications as the agent does, so the pass also pays for reading its own echoes.
const watching = process.argv[3] === "watch";
const log = pino({ level: "warn" });
const network = parseNetworkConfig('{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}');
const dp = new NetlinkDataplane();
const iface = await selectInterface(dp, { iface: "ul0" });
const backend = new VxlanBackend({ dataplane: dp, state: new AgentState(mkdtempSync(join(tmpdir(), "weft-bench-"))), log, network });
await backend.init({ nodeName: "me", network, iface });
const hex = (x: number) => x.toString(16).padStart(2, "0");
const peers: Lease[] = Array.from({ length: n }, (_, i) => ({
  subnet: `10.${(i >> 8) & 255}.${i & 255}.0/24`, nodeName: `p${i}`, publicIP: `198.19.${(i >> 8) & 255}.${(i & 255) || 1}`,
  attrs: { type: "vxlan", vni: 1, vtepMac: `0e:be:00:${hex((i >> 16) & 255)}:${hex((i >> 8) & 255)}:${hex(i & 255)}` }, expiresAt: 0, revision: i,
}));
// As the agent: a bulk pass mutes the object notifications and checks once more afterwards.
const rec = new Reconciler(log, watching ? { onBulk: () => dp.muteObjectChanges() } : {});
let notifications = 0;
if (watching) dp.watch((c) => { notifications++; rec.affectedBy(c); });
const mem = () => Math.round(process.memoryUsage().rss / 2 ** 20);
const m0 = mem();
const cpu0 = process.cpuUsage();
const first = await rec.reconcile(backend.desired(peers));
// Let the pass's own notifications drain, so their cost lands in this measurement.
await new Promise((r) => setTimeout(r, 200));
const cpu = process.cpuUsage(cpu0);
const m1 = mem();
const second = await rec.reconcile(backend.desired(peers));
const m2 = mem();
// One peer more, then one fewer, as a lease event asks for it: the changed lease alone (DataplaneSync's
// change pass: the desired state of its lease before and after), ten times.
const single: number[] = [];
for (let k = 0; k < 10; k++) {
  const extra: Lease = { subnet: `10.255.${k}.0/24`, nodeName: `x${k}`, publicIP: `198.19.255.${k + 1}`, attrs: { type: "vxlan", vni: 1, vtepMac: `0e:be:01:00:00:${hex(k + 1)}` }, expiresAt: 0, revision: n + k };
  // Timed with the desired state's computation, as the agent's pass does it.
  const ta = performance.now();
  const add = await rec.reconcileChange(backend.desired([]), backend.desired([extra]));
  const tb = performance.now();
  const del = await rec.reconcileChange(backend.desired([extra]), backend.desired([]));
  const tc = performance.now();
  if (add?.added !== 3 || del?.deleted !== 3) throw new Error(`one peer: expected 3 objects added and removed, got ${add?.added} and ${del?.deleted}`);
  single.push(Math.round((tb - ta) * 10) / 10, Math.round((tc - tb) * 10) / 10);
}
// The timer's pass after those changes: it reads the kernel and, once, looks every wanted object up.
const afterChanges = await rec.reconcile(backend.desired(peers));
if (afterChanges.added || afterChanges.deleted) throw new Error(`the pass after the changes changed ${afterChanges.added + afterChanges.deleted} objects`);
process.stdout.write(JSON.stringify({ peers: n, watching, notifications, firstCpuMs: Math.round((cpu.user + cpu.system) / 1000), firstMs: Math.round(first.durationMs), added: first.added, errors: first.errors, noopMs: Math.round(second.durationMs), singlePeerMs: single, noopAfterChangesMs: Math.round(afterChanges.durationMs), rssBefore: m0, rssAfterFirst: m1, rssAfterNoop: m2, mem: Object.fromEntries(Object.entries(process.memoryUsage()).map(([k, v]) => [k, Math.round(v / 2 ** 20)])) }) + "\n");
dp.close();
