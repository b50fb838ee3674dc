// Which devices are weft's. A device weft creates carries the interface alias
// "weft:<backend>" (IFLA_IFALIAS, shown by `ip link`), and weft adopts,
// repairs or deletes only devices with that mark. A device of the same name
// without it belongs to someone else (flanneld's flannel.1, an admin's test
// device) and is refused with an error, never wiped.
import { formatIpv4, type Ipv4Net } from "../../../lib/src/cidr.js";
import { WeftError, isWeftError } from "../../../lib/src/errors.js";
import type { Logger } from "../../../lib/src/logger.js";
import type { Dataplane, KernelChange, Link, LinkSpec } from "../dataplane/dataplane.js";

const PREFIX = "weft:";

export const ownerAlias = (backend: string): string => `${PREFIX}${backend}`;

export const isOwned = (l: Link): boolean => !!l.alias?.startsWith(PREFIX);

export interface EnsuredLink {
  readonly link: Link;
  /** "created", "reused" (compatible; at most MTU, MAC or state fixed) or "recreated" (was incompatible). */
  readonly outcome: "created" | "reused" | "recreated";
}

/**
 * Creates the device, or adopts ours when it is compatible (`why` returns
 * undefined), or recreates ours when not. Fixes MTU, MAC and state, and
 * checks the MAC stuck (systemd's MACAddressPolicy may rewrite it, and peers
 * would then send to the wrong VTEP).
 */
export interface EnsureOptions {
  /** Why an existing device cannot be reused as it is (undefined: compatible). */
  readonly incompatible: (l: Link) => string | undefined;
  /** The flag that names the device, for the error about a foreign one. */
  readonly flag: string;
  /**
   * Recognises our device when its mark is gone (someone cleared the alias, or the agent died between
   * creating the device and marking it): e.g. the VTEP MAC from the state dir. It is marked again.
   */
  readonly ours?: (l: Link) => boolean;
}

export async function ensureOwnedLink(dp: Dataplane, spec: LinkSpec, o: EnsureOptions, raced = false): Promise<EnsuredLink> {
  const { incompatible, flag } = o;
  let outcome: EnsuredLink["outcome"] = "reused";
  let link = await dp.getLink(spec.name);
  if (link && !isOwned(link) && !o.ours?.(link)) {
    throw new WeftError("CONFIG_INVALID", `interface ${spec.name} exists but was not created by weft (it is a ${link.kind ?? "plain"} link without the "${PREFIX}" alias); weft will not adopt, change or delete it. Pick another name with ${flag}, or delete that interface if it is a leftover`);
  }
  const why = link && (link.kind !== spec.kind ? `is a ${link.kind ?? "plain"} link, not ${spec.kind}` : incompatible(link));
  if (link && why) {
    await dp.deleteLink(link.index);
    link = undefined;
    outcome = "recreated";
  }
  if (!link) {
    try {
      await dp.createLink(spec);
      if (outcome === "reused") outcome = "created";
    } catch (err) {
      if (!isWeftError(err, "ALREADY_EXISTS")) throw err;
      // Someone created it between our look and our create: start over, once, with what is there now.
      if (!raced && await dp.getLink(spec.name)) return ensureOwnedLink(dp, spec, o, true);
      // No device of that name (or it raced us twice): the kernel refuses for another reason, e.g.
      // another VXLAN device (flannel.1?) already has this VNI and port. Retrying cannot help.
      throw new WeftError("CONFIG_INVALID", `cannot create ${spec.kind} ${spec.name}: the kernel refuses with "exists"; another ${spec.kind} device probably uses the same settings (for VXLAN: the same VNI and UDP port). Remove that device, or change VNI/Port in the network config`, { cause: err });
    }
    link = await dp.getLink(spec.name);
    if (!link) throw new WeftError("DATAPLANE_OP_FAILED", `${spec.kind} ${spec.name} vanished right after creation`);
    const bad = incompatible(link);
    if (bad) throw new WeftError("DATAPLANE_OP_FAILED", `${spec.kind} ${spec.name} ${bad} right after creation`);
  }
  const change = {
    ...(link.mtu !== spec.mtu ? { mtu: spec.mtu } : {}),
    ...(spec.mac && link.mac !== spec.mac ? { mac: spec.mac } : {}),
    ...(link.alias !== spec.alias ? { alias: spec.alias } : {}),
  };
  if (Object.keys(change).length) await dp.setLink(link.index, change);
  if (!link.up) await dp.setLink(link.index, { up: true });
  const final = await dp.getLink(spec.name);
  if (!final || (spec.mac && final.mac !== spec.mac)) {
    throw new WeftError("DATAPLANE_OP_FAILED", `${spec.kind} ${spec.name} has MAC ${final?.mac ?? "?"} after setup, want ${spec.mac}`);
  }
  return { link: final, outcome };
}

/** Deletes weft devices other than `keep` (left by another backend before a config change). */
export async function removeStaleDevices(dp: Dataplane, keep: readonly string[], log: Logger): Promise<void> {
  for (const l of await dp.listLinks()) {
    if (!isOwned(l) || keep.includes(l.name)) continue;
    log.info({ device: l.name, alias: l.alias }, "removing a device of another backend");
    await dp.deleteLink(l.index);
  }
}

/**
 * Gives a tunnel device the network address of our subnet as /32 (no connected route) and no other
 * address: a stale one from an old lease would attract traffic. Returns ["address"] if it had to add it.
 */
export async function ensureSoleAddress(dp: Dataplane, index: number, net: Ipv4Net): Promise<string[]> {
  const want = { index, ip: formatIpv4(net.ip), prefix: 32 };
  let present = false;
  for (const a of await dp.listAddresses(index)) {
    if (a.ip === want.ip && a.prefix === want.prefix) present = true;
    else await dp.deleteAddress(a);
  }
  if (present) return [];
  await dp.addAddress(want);
  return ["address"];
}

/**
 * Whether a kernel change is one repair() must look at: our device (by name or index) went or came
 * back as another link, `drifted` says its settings changed, or one of its addresses was deleted.
 */
export function touchesDevice(c: KernelChange, name: string, index: number | undefined, drifted: (l: Link) => boolean): boolean {
  if (c.kind === "link") {
    if (c.link.name !== name && c.link.index !== index) return false;
    return c.deleted || c.link.index !== index || drifted(c.link);
  }
  return c.kind === "address" && c.deleted && c.address.index === index;
}
