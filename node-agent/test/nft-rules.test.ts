// The nftables table is Flannel's iptables rule set (flannel e2e/rules.go
// golden), in one table weft owns.
import { describe, expect, it } from "vitest";
import { parseCidr } from "../../lib/src/cidr.js";
import { renderTable, replaceScript } from "../src/firewall/nft-rules.js";

const o = { network: parseCidr("10.244.0.0/16")!, subnet: parseCidr("10.244.3.0/24")!, masquerade: true, forward: true, fullyRandom: true };

describe("nftables rules", () => {
  it("masquerade what leaves the cluster network, keep pod addresses inside it, accept cluster forwarding", () => {
    expect(renderTable(o)).toBe(`table ip weft {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x00004000 == 0x00004000 return comment "marked by kube-proxy"
		ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return comment "pod to cluster: keep the pod address"
		ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return comment "cluster to local pods: keep the source"
		ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return comment "outside to local pods: keep the source"
		ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment "pods to outside (not multicast): node address"
		ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random comment "host to remote pods: node address"
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr 10.244.0.0/16 accept comment "from the cluster network"
		ip daddr 10.244.0.0/16 accept comment "to the cluster network"
	}
}
`);
  });

  it("leaves out what is not asked for, and replaces the table in one transaction", () => {
    const fwdOnly = renderTable({ ...o, masquerade: false });
    expect(fwdOnly).not.toContain("postrouting");
    expect(renderTable({ ...o, fullyRandom: false })).not.toContain("fully-random");
    expect(replaceScript({ ...o, masquerade: false })).toBe(`table ip weft\ndelete table ip weft\n${fwdOnly}`);
  });
});
