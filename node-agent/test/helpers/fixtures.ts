import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import type { Lease } from "../../../lib/src/lease.js";
import { parseNetworkConfig, type NetworkConfig } from "../../../lib/src/net-config.js";
import type { BackendDeps, LocalNode } from "../../src/backends/backend.js";
import { VxlanBackend } from "../../src/backends/vxlan.js";
import { AgentState } from "../../src/state.js";
import { FakeDataplane } from "./fake-dataplane.js";

export const silentLog = pino({ level: "silent" });

/** One expiry for every fixture lease: two peer(2) calls must compare equal even a millisecond apart. */
const EXPIRES_AT = Date.now() + 600_000;

export function peer(i: number, over: Partial<Lease> = {}): Lease {
  return {
    subnet: `10.244.${i}.0/24`, nodeName: `node-${i}`, publicIP: `198.18.0.${i}`,
    attrs: { type: "vxlan", vni: 1, vtepMac: `0e:00:00:00:00:${i.toString(16).padStart(2, "0")}` },
    expiresAt: EXPIRES_AT, revision: i, ...over,
  };
}

export const network = parseNetworkConfig('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}');

/** node-1 on eth0 (ifindex 2), 198.18.0.1 on 198.18.0.0/24. */
export const localNode: LocalNode = {
  nodeName: "node-1", network,
  iface: { index: 2, name: "eth0", mtu: 1500, ip: "198.18.0.1", net: { ip: 0xc6120000, prefix: 24 }, publicIP: "198.18.0.1" },
};

export const tmpDir = (): string => mkdtempSync(join(tmpdir(), "weft-test-"));

export function backendDeps(dp: FakeDataplane, over: Partial<BackendDeps> & { net?: NetworkConfig } = {}): BackendDeps {
  return { dataplane: dp, state: new AgentState(tmpDir()), log: silentLog, network: over.net ?? network, ...over };
}

export async function vxlanOnFake(stateDir = tmpDir(), net: NetworkConfig = network) {
  const dp = new FakeDataplane();
  const backend = new VxlanBackend({ dataplane: dp, state: new AgentState(stateDir), log: silentLog, network: net });
  const attrs = await backend.init({ ...localNode, network: net });
  return { dp, backend, attrs };
}
