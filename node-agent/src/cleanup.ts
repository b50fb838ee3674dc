// `weft-agent --cleanup`: removes every piece of kernel state weft made on this
// node and nothing else: our routes (protocol 87), our devices (the "weft:"
// alias; their ARP and FDB entries go with them), the nftables table and the
// iptables FORWARD rules. The lease, subnet.env and the state dir stay.
import type { Logger } from "../../lib/src/logger.js";
import { isOwned } from "./backends/owned-devices.js";
import type { Dataplane } from "./dataplane/dataplane.js";

export async function cleanupNode(dp: Dataplane, log: Logger, removeRules: (log: Logger) => Promise<void>): Promise<void> {
  const routes = await dp.routes.list();
  for (const r of routes) await dp.routes.remove(r);
  const devices = (await dp.listLinks()).filter(isOwned);
  for (const l of devices) await dp.deleteLink(l.index);
  await removeRules(log);
  log.info({ routes: routes.length, devices: devices.map((l) => l.name) }, "removed weft's kernel state");
}
