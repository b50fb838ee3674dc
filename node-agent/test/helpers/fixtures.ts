import { pino } from "pino";
import type { Lease } from "../../../lib/src/lease.js";
import { parseNetworkConfig, type VxlanBackendConfig } from "../../../lib/src/net-config.js";
import { VxlanBackend } from "../../src/backends/vxlan.js";
import { FakeDataplane } from "../../src/dataplane/fake-dataplane.js";
import { AgentState } from "../../src/state.js";
import type { LocalNode } from "../../src/backends/backend.js";

export const silentLog = pino({ level: "silent" });

export function peer(i: number, over: Partial<Lease> = {}): Lease {
  return {
    subnet: `10.244.${i}.0/24`, nodeName: `node-${i}`, publicIP: `198.18.0.${i}`,
    attrs: { type: "vxlan", vni: 1, vtepMac: `0e:00:00:00:00:${i.toString(16).padStart(2, "0")}` },
    expiresAt: Date.now() + 60_000, revision: i, ...over,
  };
}

export const network = parseNetworkConfig('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}');

export const localNode: LocalNode = {
  nodeName: "node-1", network, iface: { index: 2, name: "eth0", mtu: 1500, ip: "198.18.0.1", publicIP: "198.18.0.1" },
};

export async function vxlanOnFake(stateDir: string) {
  const dp = new FakeDataplane();
  const backend = new VxlanBackend({ dataplane: dp, state: new AgentState(stateDir), log: silentLog, config: network.backend as VxlanBackendConfig });
  const attrs = await backend.init(localNode);
  return { dp, backend, attrs };
}
