// IP masquerade and forward rules, end to end: node 0 runs with --ip-masq,
// node 1 without; a host outside the cluster (198.18.0.200, on the underlay)
// runs an HTTP server that answers with the client address it sees. Pods are
// wired the way Flannel's CNI plugin wires them (the bridge masquerades only
// when FLANNEL_IPMASQ is not true; the bridge is the default gateway).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseCidr } from "../../lib/src/cidr.js";
import { renderTable } from "../../node-agent/src/firewall/nft-rules.js";
import { Cluster, EXTERNAL_IP, type Pod } from "./cluster.js";
import { kernelTestEnv, newRunId, sh, waitFor } from "./netns.js";

const env = kernelTestEnv({ cni: true, nft: true, iptables: true });

describe.skipIf(!env.ok)("IP masquerade and forwarding (2 VXLAN nodes, one with --ip-masq)", () => {
  const c = new Cluster({ runId: newRunId(), nodes: 2, leaseTtl: "30s", resyncInterval: "1s" });
  let ext = "";
  let masqPod: Pod;
  let plainPod: Pod;
  const subnets: string[] = [];
  const iptables = (ns: string, ...args: string[]) => sh("ip", ["netns", "exec", ns, "iptables", "-w", "5", ...args]);
  const weftForwardRules = async (ns: string) => (await iptables(ns, "-S", "FORWARD")).stdout.split("\n").filter((l) => l.includes("weft: cluster traffic"));

  beforeAll(async () => {
    await Cluster.cleanupStale();
    await c.setup();
    await c.startServer();
    c.startAgent(0, ["--ip-masq"]);
    c.startAgent(1);
    for (const i of [0, 1]) await c.waitPeers(i, 1, 40_000);
    for (const i of [0, 1]) subnets.push((await c.agentApi<{ subnet: string }>(i, "/v1/lease")).json.subnet);
    ext = await c.addExternalHost();
    await c.startWhoami(ext, EXTERNAL_IP);
    masqPod = await c.addPod(0, 0);
    plainPod = await c.addPod(1, 0);
    await c.startWhoami(plainPod.ns, plainPod.ip);
  }, 120_000);

  afterAll(async () => {
    await c.destroy();
  }, 60_000);

  it("writes FLANNEL_IPMASQ=true only where weft installs the rules", () => {
    expect(c.subnetEnv(0).FLANNEL_IPMASQ).toBe("true");
    expect(c.subnetEnv(1).FLANNEL_IPMASQ).toBe("false");
  });

  it("installs Flannel's masquerade rules in its own nftables table", async () => {
    const listed = (await sh("ip", ["netns", "exec", c.nodes[0]!.ns, "nft", "list", "table", "ip", "weft"])).stdout;
    const want = renderTable({ network: parseCidr("10.244.0.0/16")!, subnet: parseCidr(subnets[0]!)!, masquerade: true, forward: true, fullyRandom: true });
    const norm = (t: string) => t.split("\n").map((l) => l.trim()).filter(Boolean).join("\n");
    expect(norm(listed)).toBe(norm(want));
    // Without --ip-masq only the forward chain is there.
    const plain = (await sh("ip", ["netns", "exec", c.nodes[1]!.ns, "nft", "list", "table", "ip", "weft"])).stdout;
    expect(plain).toContain("chain forward");
    expect(plain).not.toContain("postrouting");
  });

  it("a pod leaving the cluster network is seen with its node's address", async () => {
    expect(await c.whoami(masqPod.ns, EXTERNAL_IP)).toBe("198.18.0.1");
  });

  it("pod-to-pod TCP keeps the pod's address", async () => {
    expect(await c.whoami(masqPod.ns, plainPod.ip)).toBe(masqPod.ip);
  });

  it("with Flannel's CNI semantics every pod reaches the outside; without any masquerade it could not", async () => {
    // Node 1 writes FLANNEL_IPMASQ=false, so the bridge plugin masquerades for its pods itself.
    expect(await c.whoami(plainPod.ns, EXTERNAL_IP)).toBe("198.18.0.2");
    // The situation Flannel's plugin creates when FLANNEL_IPMASQ=true but nobody installs rules:
    // the reply has no way back to a pod address.
    const unmasked = await c.addPod(1, 1, { ipMasq: false });
    expect(await c.whoami(unmasked.ns, EXTERNAL_IP)).toBeUndefined();
  });

  it("keeps pod traffic flowing when the host's iptables FORWARD policy is DROP (as Docker sets it)", async () => {
    for (const i of [0, 1]) {
      expect(await weftForwardRules(c.nodes[i]!.ns)).toEqual([
        '-A FORWARD -d 10.244.0.0/16 -m comment --comment "weft: cluster traffic" -j ACCEPT',
        '-A FORWARD -s 10.244.0.0/16 -m comment --comment "weft: cluster traffic" -j ACCEPT',
      ]);
      await iptables(c.nodes[i]!.ns, "-P", "FORWARD", "DROP");
    }
    expect(await c.ping(masqPod, plainPod.ip, 2)).toBe(true);
    expect(await c.whoami(masqPod.ns, plainPod.ip)).toBe(masqPod.ip);

    // Control: node 1 restarted with --forward-rules=false removes weft's rules, and DROP then drops the pods' traffic.
    await c.stopAgent(1);
    c.startAgent(1, ["--forward-rules=false"]);
    await c.waitReady(1);
    expect(await weftForwardRules(c.nodes[1]!.ns)).toEqual([]);
    expect((await sh("ip", ["netns", "exec", c.nodes[1]!.ns, "nft", "list", "table", "ip", "weft"], { allowFail: true })).code).not.toBe(0);
    expect(await c.ping(masqPod, plainPod.ip, 2)).toBe(false);

    await c.stopAgent(1);
    c.startAgent(1);
    await c.waitReady(1);
    await waitFor("pods reach each other under DROP again", async () => c.ping(masqPod, plainPod.ip), 10_000, 200);
    for (const i of [0, 1]) await iptables(c.nodes[i]!.ns, "-P", "FORWARD", "ACCEPT");
  }, 60_000);
});
