// The nftables table weft owns, `ip weft`, with Flannel's masquerade and
// forward semantics (flannel pkg/trafficmngr/iptables, whose rule 4 the
// nftables port of Flannel gets wrong). Pure: rendered here, applied by
// firewall.ts in one transaction that replaces the whole table.
import { formatCidr, type Ipv4Net } from "../../../lib/src/cidr.js";

export const TABLE = "weft";

export interface RuleOptions {
  /** The cluster network. */
  readonly network: Ipv4Net;
  /** This node's pod subnet. */
  readonly subnet: Ipv4Net;
  readonly masquerade: boolean;
  readonly forward: boolean;
  /** `fully-random` port selection (the kernel may lack it). */
  readonly fullyRandom: boolean;
}

export function renderTable(o: RuleOptions): string {
  const net = formatCidr(o.network);
  const pod = formatCidr(o.subnet);
  const masq = `masquerade${o.fullyRandom ? " fully-random" : ""}`;
  const lines = [`table ip ${TABLE} {`];
  if (o.masquerade) {
    lines.push(
      "\tchain postrouting {",
      "\t\ttype nat hook postrouting priority srcnat; policy accept;",
      // kube-proxy marks packets it will masquerade itself; doing it twice breaks them.
      `\t\tmeta mark & 0x00004000 == 0x00004000 return comment "marked by kube-proxy"`,
      `\t\tip saddr ${pod} ip daddr ${net} return comment "pod to cluster: keep the pod address"`,
      `\t\tip saddr ${net} ip daddr ${pod} return comment "cluster to local pods: keep the source"`,
      `\t\tip saddr != ${net} ip daddr ${pod} return comment "outside to local pods: keep the source"`,
      `\t\tip saddr ${net} ip daddr != 224.0.0.0/4 ${masq} comment "pods to outside (not multicast): node address"`,
      `\t\tip saddr != ${net} ip daddr ${net} ${masq} comment "host to remote pods: node address"`,
      "\t}",
    );
  }
  if (o.forward) {
    lines.push(
      "\tchain forward {",
      "\t\ttype filter hook forward priority filter; policy accept;",
      `\t\tip saddr ${net} accept comment "from the cluster network"`,
      `\t\tip daddr ${net} accept comment "to the cluster network"`,
      "\t}",
    );
  }
  lines.push("}");
  return lines.join("\n") + "\n";
}

/** One transaction: create the table if missing, delete it, then create it whole. */
export function replaceScript(o: RuleOptions): string {
  return `table ip ${TABLE}\ndelete table ip ${TABLE}\n${renderTable(o)}`;
}
