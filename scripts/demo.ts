// npm run demo: a lease server on SQLite and 3 nodes with 2 pods each, all in
// network namespaces: the subnet map, pings across the VXLAN overlay, a host
// outside the cluster seeing the pods' traffic masqueraded (--ip-masq), a
// deleted route put back by the agent, each agent's API, the fleet as
// `weftctl nodes` shows it and the status page (the server's REST port is
// relayed to this host's 127.0.0.1). Ctrl-C or SIGTERM cleans everything up.
//   npm run demo -- --duration 30      (or WEFT_DEMO_DURATION=30) for non-interactive runs
//
// Each run gets its own id (wft-<pid>r<random>-*), so two demos never collide.
// Leftovers of a demo (or test) that was killed are removed at start, but only
// those whose owner process is gone: a demo still running is never touched.
// It runs the compiled dist/ that `npm ci` builds (as the README says);
// without dist/ it stops and says so rather than run something else.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { AGENT_API_PORT, Cluster, EXTERNAL_IP, ROOT, SERVER_IP, GRPC_PORT, type Pod } from "../test/e2e/cluster.js";
import { findBin, ip, ipJson, newRunId, sh, timeUntil, waitFor } from "../test/e2e/netns.js";
import { forwardFromNamespace, type Forward } from "./ns-forward.js";

const NODES = 3;
const PODS = 2;

function parseArgs(argv: string[]): { duration?: number } {
  const i = argv.indexOf("--duration");
  const raw = i >= 0 ? argv[i + 1] : process.env.WEFT_DEMO_DURATION;
  if (raw === undefined) return {};
  const d = Number(raw);
  if (!Number.isFinite(d) || d <= 0) {
    process.stderr.write(`demo: --duration needs a number of seconds, got ${JSON.stringify(raw)}\n`);
    process.exit(2);
  }
  return { duration: d };
}

function preflight(): void {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push("root (run with sudo)");
  for (const f of ["/usr/lib/cni/bridge", "/usr/lib/cni/host-local"]) if (!existsSync(f)) missing.push(`${f} (apt-get install containernetworking-plugins)`);
  for (const [bin, pkg] of [["ip", "iproute2"], ["bridge", "iproute2"], ["ping", "iputils-ping"], ["curl", "curl"], ["nft", "nftables"], ["iptables", "iptables"]] as const) {
    if (!findBin(bin)) missing.push(`${bin} (apt-get install ${pkg})`);
  }
  for (const f of ["dist/node-agent/src/main.js", "dist/lease-server/src/main.js"]) {
    if (!existsSync(join(ROOT, f))) missing.push(`${f} (run npm ci, or npm run build, first)`);
  }
  if (missing.length) {
    process.stderr.write(`demo: needs ${missing.join(", ")}\n`);
    process.exit(2);
  }
}

async function pingLine(c: Cluster, a: Pod, b: Pod): Promise<string> {
  const r = await sh("ip", ["netns", "exec", a.ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", b.ip], { allowFail: true });
  const loss = /(\d+)% packet loss/.exec(r.stdout)?.[1] ?? "?";
  const rtt = /= [\d.]+\/([\d.]+)\//.exec(r.stdout)?.[1];
  return `  ${a.ns.replace(c.prefix, "").padEnd(7)} ${a.ip.padEnd(12)} -> ${b.ns.replace(c.prefix, "").padEnd(7)} ${b.ip.padEnd(12)} ${loss === "0" ? "ok  " : "FAIL"} loss ${loss}%${rtt ? `  avg ${rtt} ms` : ""}`;
}

async function main(): Promise<void> {
  const { duration } = parseArgs(process.argv.slice(2));
  preflight();
  const c = new Cluster({ runId: newRunId(), nodes: NODES, leaseTtl: "30s", runner: "dist" });

  let cleaning: Promise<void> | undefined;
  let forward: Forward | undefined;
  const cleanup = () => (cleaning ??= (async () => {
    process.stdout.write(`\ncleaning up: stopping agents and the lease server, deleting namespaces ${c.prefix}* ...\n`);
    try {
      await forward?.close();
      await c.destroy();
      process.stdout.write("done.\n");
    } catch (err) {
      process.stderr.write(`demo: cleanup failed: ${(err as Error).message}\n(remove leftovers with: ip netns list | grep ${c.prefix})\n`);
      process.exitCode = 1;
    }
  })());
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(sig, () => { void cleanup().then(() => process.exit(0)); });
  }
  // `npm run` does not always pass SIGTERM on; when our parent dies we are re-parented, so clean up then too.
  const parent = process.ppid;
  setInterval(() => { if (process.ppid !== parent) void cleanup().then(() => process.exit(0)); }, 500).unref();

  try {
    // A demo or test killed with SIGKILL leaves namespaces behind: remove those whose owner is gone.
    await Cluster.cleanupStale();
    process.stdout.write(`weft demo (compiled dist/, namespaces ${c.prefix}*): underlay 198.18.0.0/24, cluster network 10.244.0.0/16\n`);
    await c.setup();
    await c.startServer();
    process.stdout.write(`lease server: ${SERVER_IP}:${GRPC_PORT} in ${c.srv} (SQLite ${join(c.workDir, "leases.db")})\n`);
    for (let i = 0; i < NODES; i++) c.startAgent(i, ["--ip-masq"]);
    for (let i = 0; i < NODES; i++) await c.waitReady(i, 60_000);
    for (let i = 0; i < NODES; i++) await c.waitPeers(i, NODES - 1, 60_000);
    const pods: Pod[] = [];
    for (let i = 0; i < NODES; i++) for (let j = 0; j < PODS; j++) pods.push(await c.addPod(i, j));

    process.stdout.write("\nsubnet map\n");
    process.stdout.write(`  ${"node".padEnd(7)} ${"underlay".padEnd(12)} ${"subnet".padEnd(15)} ${"VTEP MAC".padEnd(18)} agent API (run inside the node's namespace)\n`);
    for (const n of c.nodes) {
      const lease = (await c.agentApi<{ subnet: string }>(n.index, "/v1/lease")).json;
      const [link] = await ipJson<Array<{ address: string }>>(n.ns, "link", "show", "weft.1");
      process.stdout.write(`  ${n.name.padEnd(7)} ${n.underlayIP.padEnd(12)} ${lease.subnet.padEnd(15)} ${link!.address.padEnd(18)} ip netns exec ${n.ns} curl -s http://127.0.0.1:${AGENT_API_PORT}/v1/peers\n`);
    }
    // The REST port listens on 127.0.0.1 inside the server's namespace; relay it here for a browser and weftctl.
    forward = await forwardFromNamespace(c.srv, 7601, c.workDir, 7601);
    const serverUrl = `http://127.0.0.1:${forward.port}`;
    await waitFor("every node converged", async () => {
      const r = await fetch(`${serverUrl}/v1/nodes`).then((x) => x.json() as Promise<{ agents: { converged: number } }>, () => undefined);
      return r?.agents.converged === NODES;
    }, 30_000, 200);
    const ctl = await sh(join(ROOT, "bin/weftctl"), ["nodes", "--server-url", serverUrl], { allowFail: true });
    process.stdout.write(`\nweftctl nodes --server-url ${serverUrl}\n${(ctl.stdout || ctl.stderr).replace(/^/gm, "  ").trimEnd()}\n`);
    process.stdout.write(`\nstatus page: ${serverUrl}/ui/   (relayed from 127.0.0.1:7601 in ${c.srv}; also: bin/weftctl leases|network|peers --server-url ${serverUrl})\n`);
    process.stdout.write("\npods\n");
    for (const p of pods) process.stdout.write(`  ${p.ns.padEnd(16)} ${p.ip.padEnd(12)} on node-${p.node}\n`);

    const round = async () => {
      const lines = await Promise.all(pods.flatMap((a) => pods.filter((b) => b.node !== a.node && b.ns.endsWith("-p0")).map((b) => pingLine(c, a, b))));
      // A round that was under way when the cleanup began pinged namespaces being deleted: not a result.
      if (cleaning) return;
      process.stdout.write(`\npings across the overlay (${new Date().toISOString()})\n${lines.join("\n")}\n`);
    };
    await round();

    const ext = await c.addExternalHost();
    await c.startWhoami(ext, EXTERNAL_IP);
    const seen = await c.whoami(pods[0]!.ns, EXTERNAL_IP);
    process.stdout.write(`\nmasquerade (--ip-masq): ${pods[0]!.ns.replace(c.prefix, "")} (${pods[0]!.ip}) -> outside host ${EXTERNAL_IP}: it sees ${seen ?? "nothing (unreachable)"}${seen === c.nodes[0]!.underlayIP ? " (node-0's address)" : ""}\n`);

    const peer = (await c.agentApi<{ subnet: string }>(1, "/v1/lease")).json.subnet;
    const ns0 = c.nodes[0]!.ns;
    await ip("-n", ns0, "route", "del", peer);
    const ms = await timeUntil("route back", async () => (await ipJson<Array<{ dst: string }>>(ns0, "route", "show", "proto", "87")).some((r) => r.dst === peer), 5000);
    process.stdout.write(`self-healing: deleted node-0's route to ${peer} (ip route del); the agent put it back within ${ms} ms\n`);

    process.stdout.write(`\nlogs: ${join(c.workDir, "logs")}   kernel state: ip -n ${ns0} route show proto 87; ip -n ${ns0} nexthop show; ip netns exec ${ns0} bridge fdb show dev weft.1; ip netns exec ${ns0} nft list table ip weft\n`);
    process.stdout.write(duration ? `running for ${duration} s, then cleaning up\n` : "press Ctrl-C to stop and clean up\n");

    const end = duration ? Date.now() + duration * 1000 : Infinity;
    while (Date.now() < end && !cleaning) {
      await new Promise((r) => setTimeout(r, Math.min(15_000, end - Date.now())));
      if (!cleaning && Date.now() < end) await round();
    }
  } catch (err) {
    process.stderr.write(`demo failed: ${(err as Error).message}\n(logs are in ${join(c.workDir, "logs")} until cleanup)\n`);
    process.exitCode = 1;
  }
  await cleanup();
  process.exit(process.exitCode ?? 0);
}

main().catch((err) => {
  process.stderr.write(`demo failed: ${(err as Error).message}\n`);
  process.exit(1);
});
