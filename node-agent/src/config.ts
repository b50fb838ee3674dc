// Flags -> one validated, frozen agent config. Nothing else reads argv or env.
import { hostname } from "node:os";
import { existsSync } from "node:fs";
import { isIpv4 } from "../../lib/src/cidr.js";
import { parseDuration } from "../../lib/src/duration.js";
import { parseFlags, parseHostPort, usageError, type FlagSpec } from "../../lib/src/flags.js";
import { validateNodeName, validatePublicIp } from "../../lib/src/lease.js";
import { deepFreeze } from "../../lib/src/net-config.js";
import { isWeftError } from "../../lib/src/errors.js";
import type { TlsFiles } from "./lease-client.js";

export const BIN = "weft-agent";

export const FLAGS = {
  server: { type: "string", value: "HOST:PORT[,HOST:PORT...]", help: "lease server gRPC address(es); the next one is tried when one is unreachable" },
  "node-name": { type: "string", value: "NAME", help: "this node's name in its lease (default: the hostname)" },
  iface: { type: "string", value: "NAME|IP", help: "underlay interface for the tunnel (default: the interface of the default route)" },
  "public-ip": { type: "string", value: "IP", help: "address advertised to other nodes (default: the interface's address)" },
  "subnet-file": { type: "string", value: "PATH", default: "/run/flannel/subnet.env", help: "where to write FLANNEL_NETWORK/SUBNET/MTU/IPMASQ" },
  "state-dir": { type: "string", value: "DIR", default: "/var/lib/weft", help: "state kept across restarts (the VTEP MAC)" },
  "http-listen": { type: "string", value: "HOST:PORT", default: "127.0.0.1:9464", help: "REST API: /healthz, /readyz, /v1/lease, /v1/peers, /metrics" },
  "vxlan-device": { type: "string", value: "NAME", help: "VXLAN device name (default: weft.<VNI>)" },
  "ip-masq": { type: "boolean", help: "value written as FLANNEL_IPMASQ (weft installs no masquerade rules itself yet)" },
  "resync-interval": { type: "string", value: "DURATION", default: "10s", help: "how often the kernel state is compared with the peers even without changes" },
  insecure: { type: "boolean", help: "talk to the lease server in plaintext (trusted networks and tests only)" },
  "tls-ca": { type: "string", value: "FILE", help: "CA (PEM) that signed the lease server's certificate" },
  "tls-cert": { type: "string", value: "FILE", help: "client certificate (PEM) for mTLS; its name must be the node name" },
  "tls-key": { type: "string", value: "FILE", help: "client private key (PEM) for mTLS" },
  "log-level": { type: "string", value: "LEVEL", default: "info", help: "trace, debug, info, warn or error" },
  help: { type: "boolean", help: "print this help" },
} as const satisfies Record<string, FlagSpec>;

export interface AgentConfig {
  readonly servers: readonly string[];
  readonly nodeName: string;
  readonly iface?: string;
  readonly publicIP?: string;
  readonly subnetFile: string;
  readonly stateDir: string;
  readonly httpListen: { readonly host: string; readonly port: number };
  readonly vxlanDevice?: string;
  readonly ipMasq: boolean;
  readonly resyncIntervalMs: number;
  /** undefined = insecure. */
  readonly tls?: TlsFiles;
  readonly logLevel: string;
}

/** Returns undefined for --help; throws CONFIG_INVALID naming the flag and the fix. */
export function loadAgentConfig(argv: readonly string[]): AgentConfig | undefined {
  const f = parseFlags(argv, FLAGS, BIN);
  if (f.help) return undefined;

  if (!f.server) throw usageError("--server is required: --server HOST:PORT of the lease server (comma-separate several)");
  const servers = f.server.split(",").map((s) => s.trim()).filter(Boolean);
  for (const s of servers) parseHostPort(s, "server");

  const nodeName = f["node-name"] ?? hostname().toLowerCase();
  try {
    validateNodeName(nodeName, "--node-name");
    if (f["public-ip"]) validatePublicIp(f["public-ip"], "--public-ip");
  } catch (err) {
    if (isWeftError(err)) throw usageError(err.message);
    throw err;
  }
  if (f.iface !== undefined && !/^[^\s/]{1,15}$/.test(f.iface) && !isIpv4(f.iface)) {
    throw usageError(`--iface: ${JSON.stringify(f.iface)} is neither an interface name nor an IPv4 address`);
  }
  if (f["vxlan-device"] !== undefined && !/^[A-Za-z0-9_.-]{1,15}$/.test(f["vxlan-device"])) {
    throw usageError(`--vxlan-device: ${JSON.stringify(f["vxlan-device"])} is not a valid interface name (1-15 of letters, digits, _ . -)`);
  }

  const resync = parseDuration(f["resync-interval"]);
  if (resync === undefined || resync < 100) throw usageError(`--resync-interval: ${JSON.stringify(f["resync-interval"])} is not a duration of at least 100ms; write it like 10s`);
  if (!["trace", "debug", "info", "warn", "error", "fatal", "silent"].includes(f["log-level"])) {
    throw usageError(`--log-level: ${JSON.stringify(f["log-level"])} is not a level; use trace, debug, info, warn or error`);
  }
  const [host, port] = parseHostPort(f["http-listen"], "http-listen");

  let tls: TlsFiles | undefined;
  const anyTls = f["tls-ca"] || f["tls-cert"] || f["tls-key"];
  if (f.insecure && anyTls) throw usageError("--insecure conflicts with --tls-ca/--tls-cert/--tls-key; pass one or the other");
  if (!f.insecure) {
    if (!anyTls) throw usageError("the lease server connection needs TLS: pass --tls-ca (and --tls-cert/--tls-key for mTLS), or --insecure for plaintext on a trusted network");
    if (!!f["tls-cert"] !== !!f["tls-key"]) throw usageError("--tls-cert and --tls-key go together; pass both for mTLS or neither");
    for (const k of ["tls-ca", "tls-cert", "tls-key"] as const) {
      if (f[k] && !existsSync(f[k]!)) throw usageError(`--${k}: cannot read ${f[k]}; check the path`);
    }
    tls = { ca: f["tls-ca"], cert: f["tls-cert"], key: f["tls-key"] };
  }

  return deepFreeze({
    servers, nodeName, iface: f.iface, publicIP: f["public-ip"], subnetFile: f["subnet-file"], stateDir: f["state-dir"],
    httpListen: { host, port }, vxlanDevice: f["vxlan-device"], ipMasq: f["ip-masq"], resyncIntervalMs: resync, tls, logLevel: f["log-level"],
  });
}
