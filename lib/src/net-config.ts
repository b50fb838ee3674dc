// The cluster network config: Flannel's net-conf.json, with Flannel's defaults
// and validation (flannel pkg/subnet/config.go), parsed once and frozen.
// Keys match case-insensitively, as Go's JSON decoder does; unknown keys are
// rejected so a typo never silently falls back to a default.
import { WeftError } from "./errors.js";
import { formatCidr, formatIpv4, maskOf, parseCidr, parseIpv4, sizeOf, lastAddress, type Ipv4Net } from "./cidr.js";

export const BACKEND_TYPES = ["vxlan", "host-gw", "wireguard"] as const;
export type BackendType = (typeof BACKEND_TYPES)[number];

export interface VxlanBackendConfig {
  readonly type: "vxlan";
  readonly vni: number;
  readonly port: number;
  readonly mtu: number;
  readonly gbp: boolean;
  readonly learning: boolean;
  readonly directRouting: boolean;
}
export interface HostGwBackendConfig {
  readonly type: "host-gw";
  readonly mtu: number;
}
export interface WireguardBackendConfig {
  readonly type: "wireguard";
  readonly listenPort: number;
  readonly mtu: number;
  readonly persistentKeepaliveInterval: number;
}
export type BackendConfig = VxlanBackendConfig | HostGwBackendConfig | WireguardBackendConfig;

export interface NetworkConfig {
  readonly network: Ipv4Net;
  readonly subnetLen: number;
  /** First and last subnet network addresses, as unsigned 32-bit numbers. */
  readonly subnetMin: number;
  readonly subnetMax: number;
  readonly enableNFTables: boolean;
  readonly backend: BackendConfig;
}

/** Flannel keys weft understands but does not implement: named as such, not as typos. */
const UNSUPPORTED_KEYS = ["Networks", "IPv6Networks", "MacPrefix", "PSK", "ListenPortV6", "Mode"];

const TOP_KEYS = ["Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend", "EnableIPv4", "EnableIPv6",
  "EnableNFTables", "IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax"] as const;
const BACKEND_KEYS: Record<BackendType, readonly string[]> = {
  vxlan: ["Type", "VNI", "Port", "MTU", "GBP", "Learning", "DirectRouting"],
  "host-gw": ["Type", "MTU"],
  wireguard: ["Type", "ListenPort", "MTU", "PersistentKeepaliveInterval"],
};

function fail(field: string, problem: string, fix: string): never {
  throw new WeftError("CONFIG_INVALID", `network config: ${field}: ${problem}; ${fix}`);
}

/** Maps keys to their canonical spelling (case-insensitive), rejecting unknown ones. */
function canonicalKeys(obj: Record<string, unknown>, known: readonly string[], where: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj)) {
    const canon = known.find((c) => c.toLowerCase() === k.toLowerCase());
    const flannelOnly = UNSUPPORTED_KEYS.find((c) => c.toLowerCase() === k.toLowerCase());
    if (!canon && flannelOnly === "PSK") {
      fail(`${where}PSK`, "a pre-shared key in the network config would be sent to every client of GetNetworkConfig", "remove it, put the key in a file on each node (wg genpsk > /etc/weft/wireguard.psk, mode 0600) and start weft-agent with --wireguard-psk-file /etc/weft/wireguard.psk");
    }
    if (!canon && flannelOnly) fail(`${where}${flannelOnly}`, "is a Flannel setting weft does not support yet", `remove ${flannelOnly}`);
    if (!canon) fail(`${where}${keyName(k)}`, "unknown key", `valid keys are ${known.join(", ")}`);
    out[canon] = v;
  }
  return out;
}

/** A key as the message shows it: quoted (and cut short) when empty or odd, so the field stays recognisable. */
function keyName(k: string): string {
  return /^[A-Za-z0-9_-]{1,64}$/.test(k) ? k : JSON.stringify(k.length > 64 ? `${k.slice(0, 64)}...` : k);
}

function uint(v: unknown, field: string, min: number, max: number, dflt: number): number {
  if (v === undefined || v === null) return dflt;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    fail(field, `${JSON.stringify(v)} is not an integer between ${min} and ${max}`, `set ${field} to a value in that range or remove it for the default (${dflt})`);
  }
  return v;
}

function bool(v: unknown, field: string, dflt: boolean): boolean {
  if (v === undefined || v === null) return dflt;
  if (typeof v !== "boolean") fail(field, `${JSON.stringify(v)} is not true or false`, `write ${field}: true or false without quotes`);
  return v;
}

function parseBackend(raw: unknown): BackendConfig {
  if (raw === undefined || raw === null) {
    return { type: "vxlan", vni: 1, port: 8472, mtu: 0, gbp: false, learning: false, directRouting: false };
  }
  if (typeof raw !== "object" || Array.isArray(raw)) fail("Backend", "must be an object", 'write e.g. "Backend": {"Type": "vxlan"}');
  const typeKey = Object.keys(raw).find((k) => k.toLowerCase() === "type");
  const type = typeKey ? (raw as Record<string, unknown>)[typeKey] : undefined;
  if (typeof type !== "string" || !(BACKEND_TYPES as readonly string[]).includes(type)) {
    fail("Backend.Type", type === undefined ? "is missing" : `${JSON.stringify(type)} is not supported`, `set it to one of ${BACKEND_TYPES.join(", ")}`);
  }
  const b = canonicalKeys(raw as Record<string, unknown>, BACKEND_KEYS[type as BackendType], "Backend.");
  const mtu = uint(b.MTU, "Backend.MTU", 0, 65535, 0);
  if (mtu !== 0 && mtu < 576) fail("Backend.MTU", `${mtu} is below 576`, "set the underlay MTU (e.g. 1500) or remove it to use the interface's");
  switch (type as BackendType) {
    case "vxlan": {
      const port = uint(b.Port, "Backend.Port", 0, 65535, 0);
      return {
        type: "vxlan", vni: uint(b.VNI, "Backend.VNI", 1, 16777215, 1), port: port === 0 ? 8472 : port, mtu,
        gbp: bool(b.GBP, "Backend.GBP", false), learning: bool(b.Learning, "Backend.Learning", false),
        directRouting: bool(b.DirectRouting, "Backend.DirectRouting", false),
      };
    }
    case "host-gw":
      return { type: "host-gw", mtu };
    case "wireguard":
      return {
        type: "wireguard", listenPort: uint(b.ListenPort, "Backend.ListenPort", 1, 65535, 51820), mtu,
        persistentKeepaliveInterval: uint(b.PersistentKeepaliveInterval, "Backend.PersistentKeepaliveInterval", 0, 3600, 0),
      };
  }
}

/** Parses and validates net-conf.json text; throws CONFIG_INVALID naming the field and the fix. */
export function parseNetworkConfig(text: string): NetworkConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    fail("(file)", `not valid JSON (${(err as Error).message})`, 'write e.g. {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}');
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail("(file)", "must be a JSON object", 'write e.g. {"Network": "10.244.0.0/16"}');
  const c = canonicalKeys(raw as Record<string, unknown>, TOP_KEYS, "");

  if (c.EnableIPv4 !== undefined && c.EnableIPv4 !== true) fail("EnableIPv4", "weft needs IPv4", "remove EnableIPv4 or set it to true");
  if (c.EnableIPv6 === true) fail("EnableIPv6", "IPv6 is not supported yet", "remove EnableIPv6 and the IPv6* keys");
  for (const k of ["IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax"] as const) {
    if (c[k] !== undefined) fail(k, "IPv6 is not supported yet", `remove ${k}`);
  }

  if (c.Network === undefined) fail("Network", "is missing", 'add the cluster CIDR, e.g. "Network": "10.244.0.0/16"');
  const loose = typeof c.Network === "string" ? parseCidr(c.Network, false) : undefined;
  if (!loose) fail("Network", `${JSON.stringify(c.Network)} is not an IPv4 CIDR`, 'write it like "10.244.0.0/16"');
  const network = parseCidr(c.Network as string)!;
  if (!network) fail("Network", `${c.Network} has host bits set`, `use ${formatCidr({ ip: (loose.ip & maskOf(loose.prefix)) >>> 0, prefix: loose.prefix })}`);

  let subnetLen: number;
  if (c.SubnetLen === undefined || c.SubnetLen === null || c.SubnetLen === 0) {
    if (network.prefix > 28) fail("Network", `/${network.prefix} is too small to split into node subnets`, "use a Network of /28 or larger (e.g. /16)");
    subnetLen = network.prefix <= 22 ? 24 : network.prefix + 2;
  } else {
    subnetLen = uint(c.SubnetLen, "SubnetLen", 1, 128, 24);
    if (subnetLen > 30) fail("SubnetLen", `${subnetLen} is larger than 30`, "use a SubnetLen of 30 or less (24 is usual)");
    if (subnetLen < network.prefix + 2) {
      fail("SubnetLen", `${subnetLen} leaves fewer than four subnets in ${formatCidr(network)}`, `use a SubnetLen of at least ${network.prefix + 2}`);
    }
  }
  const step = sizeOf(subnetLen);
  const lastSubnet = (lastAddress(network) - step + 1) >>> 0;

  const bound = (key: "SubnetMin" | "SubnetMax", dflt: number): number => {
    const v = c[key];
    // Flannel treats an empty or zero address as "use the default".
    if (v === undefined || v === null || v === "" || v === "0.0.0.0") return dflt;
    const ip = typeof v === "string" ? parseIpv4(v) : undefined;
    if (ip === undefined) fail(key, `${JSON.stringify(v)} is not an IPv4 address`, `write it like "${formatIpv4(dflt)}"`);
    if (((ip & maskOf(network.prefix)) >>> 0) !== network.ip) fail(key, `${v} is outside Network ${formatCidr(network)}`, `use an address inside the Network, e.g. ${formatIpv4(dflt)}`);
    if (((ip & maskOf(subnetLen)) >>> 0) !== ip) fail(key, `${v} is not the start of a /${subnetLen} subnet`, `use ${formatIpv4((ip & maskOf(subnetLen)) >>> 0)}`);
    return ip;
  };
  const subnetMin = bound("SubnetMin", (network.ip + step) >>> 0);
  const subnetMax = bound("SubnetMax", lastSubnet);
  if (subnetMin > subnetMax) fail("SubnetMin", `${formatIpv4(subnetMin)} is above SubnetMax ${formatIpv4(subnetMax)}`, "swap them or widen the range");

  const cfg: NetworkConfig = {
    network, subnetLen, subnetMin, subnetMax,
    enableNFTables: bool(c.EnableNFTables, "EnableNFTables", false),
    backend: parseBackend(c.Backend),
  };
  return deepFreeze(cfg);
}

/** net-conf.json text with every default filled in, in Flannel's key spelling. */
export function networkConfigJson(cfg: NetworkConfig): string {
  const b = cfg.backend;
  const backend: Record<string, unknown> = { Type: b.type };
  if (b.mtu) backend.MTU = b.mtu;
  if (b.type === "vxlan") Object.assign(backend, { VNI: b.vni, Port: b.port, GBP: b.gbp, Learning: b.learning, DirectRouting: b.directRouting });
  if (b.type === "wireguard") Object.assign(backend, { ListenPort: b.listenPort, PersistentKeepaliveInterval: b.persistentKeepaliveInterval });
  return JSON.stringify({
    Network: formatCidr(cfg.network), SubnetLen: cfg.subnetLen, SubnetMin: formatIpv4(cfg.subnetMin),
    SubnetMax: formatIpv4(cfg.subnetMax), EnableNFTables: cfg.enableNFTables, Backend: backend,
  });
}

/** Number of node subnets between SubnetMin and SubnetMax. */
export function subnetCount(cfg: NetworkConfig): number {
  return (cfg.subnetMax - cfg.subnetMin) / sizeOf(cfg.subnetLen) + 1;
}

export function deepFreeze<T>(o: T): T {
  // Buffers (TLS keys) cannot be frozen; they are never shared mutably anyway.
  if (o && typeof o === "object" && !ArrayBuffer.isView(o) && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}
