// Flags -> one validated, frozen config. Nothing else reads argv or env.
import { readFileSync } from "node:fs";
import { WeftError, errorMessage } from "../../lib/src/errors.js";
import { parseDuration } from "../../lib/src/duration.js";
import { parseFlags, parseHostPort, usageError, type FlagSpec } from "../../lib/src/flags.js";
import { deepFreeze, parseNetworkConfig, type NetworkConfig } from "../../lib/src/net-config.js";

export const BIN = "weft-lease-server";

export const FLAGS = {
  store: { type: "string", value: "sqlite:PATH", default: "sqlite:/var/lib/weft/leases.db", help: "where leases are kept" },
  "network-config": { type: "string", value: "FILE", default: "/etc/weft/net-conf.json", help: "Flannel-style net-conf.json: Network, SubnetLen, SubnetMin, SubnetMax, Backend" },
  listen: { type: "string", value: "HOST:PORT", default: "0.0.0.0:7600", help: "gRPC address for agents" },
  "http-listen": { type: "string", value: "HOST:PORT", default: "127.0.0.1:7601", help: "REST API, /metrics, /healthz and /readyz" },
  "lease-ttl": { type: "string", value: "DURATION", default: "24h", help: "lease lifetime without renewal, e.g. 30s, 10m, 24h" },
  "tls-cert": { type: "string", value: "FILE", help: "server certificate (PEM) for gRPC" },
  "tls-key": { type: "string", value: "FILE", help: "server private key (PEM)" },
  "tls-client-ca": { type: "string", value: "FILE", help: "CA (PEM) that signs agent certificates; enables mTLS: an agent may only act for the node name in its certificate" },
  insecure: { type: "boolean", help: "serve gRPC in plaintext (trusted networks and tests only)" },
  "log-level": { type: "string", value: "LEVEL", default: "info", help: "trace, debug, info, warn or error" },
  help: { type: "boolean", help: "print this help" },
} as const satisfies Record<string, FlagSpec>;

export interface TlsFiles {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly clientCa?: Buffer;
}

export interface ServerConfig {
  readonly storePath: string;
  readonly network: NetworkConfig;
  readonly listen: { readonly host: string; readonly port: number };
  readonly httpListen: { readonly host: string; readonly port: number };
  readonly leaseTtlMs: number;
  readonly tls?: TlsFiles;
  readonly logLevel: string;
}

function readFlagFile(flag: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw usageError(`--${flag}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}); check the path and permissions`);
  }
}

/** Returns undefined for --help; throws CONFIG_INVALID naming the flag and the fix. */
export function loadServerConfig(argv: readonly string[]): ServerConfig | undefined {
  const f = parseFlags(argv, FLAGS, BIN);
  if (f.help) return undefined;

  const m = /^sqlite:(.+)$/.exec(f.store);
  if (!m) {
    const kind = f.store.split(":")[0];
    throw usageError(kind === "etcd"
      ? "--store: etcd is not available in this release yet; use --store sqlite:/var/lib/weft/leases.db"
      : `--store: ${JSON.stringify(f.store)} is not a store; use --store sqlite:/var/lib/weft/leases.db`);
  }

  const ttl = parseDuration(f["lease-ttl"]);
  if (ttl === undefined) throw usageError(`--lease-ttl: ${JSON.stringify(f["lease-ttl"])} is not a duration; write it like 30s, 10m or 24h`);
  if (ttl < 5000) throw usageError(`--lease-ttl: ${f["lease-ttl"]} is shorter than 5s; agents could not renew in time. Use at least 5s`);
  if (ttl > 30 * 86_400_000) throw usageError(`--lease-ttl: ${f["lease-ttl"]} is longer than 30 days; dead nodes would keep their subnets for that long. Use at most 30d (24h is usual)`);

  if (!["trace", "debug", "info", "warn", "error", "fatal", "silent"].includes(f["log-level"])) {
    throw usageError(`--log-level: ${JSON.stringify(f["log-level"])} is not a level; use trace, debug, info, warn or error`);
  }

  const [host, port] = parseHostPort(f.listen, "listen");
  const [httpHost, httpPort] = parseHostPort(f["http-listen"], "http-listen");

  let tls: TlsFiles | undefined;
  const anyTls = f["tls-cert"] || f["tls-key"] || f["tls-client-ca"];
  if (f.insecure && anyTls) throw usageError("--insecure conflicts with --tls-cert/--tls-key/--tls-client-ca; pass one or the other");
  if (!f.insecure) {
    if (!f["tls-cert"] || !f["tls-key"]) {
      throw usageError("gRPC needs TLS: pass --tls-cert and --tls-key (and --tls-client-ca for mTLS), or --insecure for plaintext on a trusted network");
    }
    tls = {
      cert: readFlagFile("tls-cert", f["tls-cert"]),
      key: readFlagFile("tls-key", f["tls-key"]),
      clientCa: f["tls-client-ca"] ? readFlagFile("tls-client-ca", f["tls-client-ca"]) : undefined,
    };
  }

  let network: NetworkConfig;
  const text = readFlagFile("network-config", f["network-config"]).toString("utf8");
  try {
    network = parseNetworkConfig(text);
  } catch (err) {
    if (err instanceof WeftError) throw usageError(`--network-config ${f["network-config"]}: ${err.message.replace(/^network config: /, "")}`);
    throw err;
  }

  return deepFreeze({
    storePath: m[1]!, network, listen: { host, port }, httpListen: { host: httpHost, port: httpPort },
    leaseTtlMs: ttl, tls, logLevel: f["log-level"],
  });
}
