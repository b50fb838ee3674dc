// Picks the external (underlay) interface as flanneld does: --iface by name or
// IP; else the interface holding --public-ip; else the default route's.
import { isIpv4, maskOf, parseIpv4 } from "../../lib/src/cidr.js";
import { WeftError } from "../../lib/src/errors.js";
import type { ExternalInterface } from "./backends/backend.js";
import type { Dataplane } from "./dataplane/dataplane.js";

export async function selectInterface(dp: Dataplane, want: { iface?: string; publicIP?: string }): Promise<ExternalInterface> {
  const links = await dp.listLinks();
  const addrs = await dp.listAddresses();
  let index: number | undefined;
  let ip: string | undefined;

  if (want.iface) {
    if (isIpv4(want.iface)) {
      const a = addrs.find((x) => x.ip === want.iface);
      if (!a) throw new WeftError("CONFIG_INVALID", `--iface ${want.iface}: no interface has this address; pass an address of this node or an interface name`);
      index = a.index;
      ip = a.ip;
    } else {
      const l = links.find((x) => x.name === want.iface);
      if (!l) throw new WeftError("CONFIG_INVALID", `--iface ${want.iface}: no such interface; available: ${links.map((x) => x.name).join(", ")}`);
      index = l.index;
    }
  } else if (want.publicIP) {
    const a = addrs.find((x) => x.ip === want.publicIP);
    if (!a) throw new WeftError("CONFIG_INVALID", `--public-ip ${want.publicIP}: no interface has this address; also pass --iface to choose the tunnel interface`);
    index = a.index;
    ip = a.ip;
  } else {
    index = await dp.defaultRouteIndex();
    if (index === undefined) throw new WeftError("CONFIG_INVALID", "no default route to pick the external interface from; pass --iface NAME|IP");
  }

  const link = links.find((x) => x.index === index);
  if (!link) throw new WeftError("CONFIG_INVALID", `interface index ${index} vanished`);
  ip ??= addrs.find((a) => a.index === index)?.ip;
  const addr = addrs.find((a) => a.index === index && a.ip === ip);
  if (!ip || !addr) throw new WeftError("CONFIG_INVALID", `interface ${link.name} has no IPv4 address; give it one or pick another with --iface`);
  if (!link.mtu) throw new WeftError("CONFIG_INVALID", `interface ${link.name} reports MTU 0`);
  const n = parseIpv4(ip)!;
  return { index, name: link.name, mtu: link.mtu, ip, net: { ip: (n & maskOf(addr.prefix)) >>> 0, prefix: addr.prefix }, publicIP: want.publicIP ?? ip };
}
