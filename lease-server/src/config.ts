// Flags -> one validated, frozen config. Nothing else reads argv or env.
import { existsSync, readFileSync } from "node:fs";
import { WeftError, errorMessage } from "../../lib/src/errors.js";
import { parseDuration } from "../../lib/src/duration.js";
import { parseHostPort, readFlags, usageError, type Env, type FlagSpec, type ParsedFlags } from "../../lib/src/flags.js";
import { deepFreeze, parseNetworkConfig, type NetworkConfig } from "../../lib/src/net-config.js";
import { readAdminTokenFile } from "../../lib/src/admin-token.js";
import { assertAdminExposure } from "./http-auth.js";

export const BIN = "weft-lease-server";

export const FLAGS = {
  store: { type: "string", value: "sqlite:PATH|etcd:URL[,URL...]", default: "sqlite:/var/lib/weft/leases.db", help: "where leases are kept: an embedded SQLite file (one server), or an etcd cluster that several lease servers share" },
  "network-config": { type: "string", value: "FILE", default: "/etc/weft/net-conf.json", help: "Flannel-style net-conf.json: Network, SubnetLen, SubnetMin, SubnetMax, Backend (with an etcd store: optional when etcd has it at <etcd-prefix>/config)" },
  "etcd-prefix": { type: "string", value: "KEY", default: "/weft/network", help: "etcd key prefix; /coreos.com/network shares Flannel's leases, so flanneld and weft nodes see each other" },
  "etcd-cafile": { type: "string", value: "FILE", help: "CA (PEM) of etcd's server certificates" },
  "etcd-certfile": { type: "string", value: "FILE", help: "client certificate (PEM) for etcd" },
  "etcd-keyfile": { type: "string", value: "FILE", help: "client private key (PEM) for etcd" },
  "etcd-username": { type: "string", value: "NAME", help: "etcd user (with --etcd-password-file)" },
  "etcd-password-file": { type: "string", value: "FILE", help: "file with the etcd user's password" },
  listen: { type: "string", value: "HOST:PORT", default: "0.0.0.0:7600", help: "gRPC address for agents" },
  "http-listen": { type: "string", value: "HOST:PORT", default: "127.0.0.1:7601", help: "REST API, /metrics, /healthz and /readyz" },
  "lease-ttl": { type: "string", value: "DURATION", default: "24h", help: "lease lifetime without renewal, e.g. 30s, 10m, 24h" },
  "tls-cert": { type: "string", value: "FILE", help: "server certificate (PEM) for gRPC" },
  "tls-key": { type: "string", value: "FILE", help: "server private key (PEM)" },
  "tls-client-ca": { type: "string", value: "FILE", help: "CA (PEM) that signs agent certificates; enables mTLS: an agent may only act for the node name in its certificate" },
  insecure: { type: "boolean", help: "serve gRPC in plaintext (trusted networks and tests only)" },
  "admin-token-file": { type: "string", value: "FILE", help: "bearer token (32+ characters, file mode 600) that the REST routes changing state (revoke, reservations, join tokens) require; make one with: head -c 32 /dev/urandom | base64 > FILE" },
  "http-tls-cert": { type: "string", value: "FILE", help: "serve the REST API over HTTPS with this certificate (PEM)" },
  "http-tls-key": { type: "string", value: "FILE", help: "private key (PEM) for --http-tls-cert" },
  "admin-client-ca": { type: "string", value: "FILE", help: "CA (PEM) of admin client certificates: an HTTPS client certificate it signed may use the REST routes changing state (needs --http-tls-cert)" },
  "ca-cert": { type: "string", value: "FILE", help: "CA certificate (PEM) that signs node certificates for join tokens (default: one made in --state-dir on first start); with TLS every agent needs a certificate from it or from --tls-client-ca" },
  "ca-key": { type: "string", value: "FILE", help: "private key (PEM) of --ca-cert" },
  "state-dir": { type: "string", value: "DIR", default: "/var/lib/weft", help: "where the server keeps its node CA (ca.crt, ca.key) when --ca-cert is not given" },
  "node-cert-validity": { type: "string", value: "DURATION", default: "30d", help: "lifetime of node certificates issued for join tokens (1m to 365d); agents renew at 2/3 of it" },
  "init-store": { type: "boolean", help: "start an empty SQLite store even where the --store file exists but is empty (0 bytes); without it such a file is refused, since it usually means lost data" },
  "max-connections-per-client": { type: "string", value: "N", default: "1024", help: "gRPC connections one client address (IPv6: one /64) may hold; raise it when more nodes than this share one NAT address" },
  "max-watches-per-client": { type: "string", value: "N", default: "2048", help: "streams (WatchLeases and ReportStatus: two per agent) one client address may hold open" },
  "max-rpcs-per-client": { type: "string", value: "N", default: "256", help: "unary gRPC calls one client address may have in flight" },
  "allow-link-local-public-ip": { type: "boolean", help: "accept agents whose public IP is link-local (169.254.0.0/16); only for underlays that really use such addresses" },
  "log-level": { type: "string", value: "LEVEL", default: "info", help: "trace, debug, info, warn or error" },
  help: { type: "boolean", help: "print this help" },
} as const satisfies Record<string, FlagSpec>;

export interface TlsFiles {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly clientCa?: Buffer;
}

export interface IdentityConfig {
  readonly stateDir: string;
  /** Both or neither: the operator's CA. */
  readonly caCert?: { readonly path: string; readonly pem: Buffer };
  readonly caKey?: { readonly path: string; readonly pem: Buffer };
  readonly nodeCertValidityMs: number;
}

export type StoreConfig =
  | { readonly kind: "sqlite"; readonly path: string }
  | {
    readonly kind: "etcd"; readonly endpoints: readonly string[]; readonly prefix: string;
    readonly tls?: { readonly ca?: Buffer; readonly cert?: Buffer; readonly key?: Buffer };
    readonly auth?: { readonly username: string; readonly password: string };
  };

export interface ServerConfig {
  readonly store: StoreConfig;
  /** undefined: read from etcd (<etcd-prefix>/config) at start-up. */
  readonly network?: NetworkConfig;
  /** Where the network config came from, for messages. */
  readonly networkSource: string;
  readonly listen: { readonly host: string; readonly port: number };
  readonly httpListen: { readonly host: string; readonly port: number };
  /** From --admin-token-file. */
  readonly adminToken?: string;
  /** HTTPS for the REST API; clientCa (--admin-client-ca) makes verified client certificates admins. */
  readonly httpTls?: TlsFiles;
  readonly leaseTtlMs: number;
  /** Accept 169.254.0.0/16 public IPs. */
  readonly allowLinkLocalPublicIp?: boolean;
  readonly tls?: TlsFiles;
  /** Node identity (join tokens, certificates issued by the server's CA); used only with TLS. */
  readonly identity: IdentityConfig;
  readonly logLevel: string;
  /** Make an empty store over an existing empty SQLite file. */
  readonly initStore: boolean;
  readonly limits: { readonly maxConnectionsPerClient: number; readonly maxWatchesPerClient: number; readonly maxRpcsPerClient: number };
}

function parseLimit(flag: string, v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1 || n > 1_000_000) throw usageError(`--${flag}: ${JSON.stringify(v)} is not a whole number from 1 to 1000000`);
  return n;
}

function readFlagFile(flag: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw usageError(`--${flag}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}); check the path and permissions`);
  }
}

/**
 * Returns undefined for --help; throws CONFIG_INVALID naming the flag (or its WEFT_* variable) and the fix.
 * `env`: main() passes process.env; WEFT_<FLAG> sets --<flag> unless argv sets it too. `warn` hears
 * about WEFT_* variables that are no flag.
 */
export function loadServerConfig(argv: readonly string[], env: Env = {}, warn?: (message: string) => void): ServerConfig | undefined {
  const flags = readFlags(argv, FLAGS, BIN, env, warn);
  return flags.explain(() => fromFlags(flags));
}

function fromFlags({ values: f, given }: ParsedFlags<typeof FLAGS>): ServerConfig | undefined {
  if (f.help) return undefined;

  const store = parseStore(f);
  const ttl = parseDuration(f["lease-ttl"]);
  if (ttl === undefined) throw usageError(`--lease-ttl: ${JSON.stringify(f["lease-ttl"])} is not a duration; write it like 30s, 10m or 24h`);
  if (ttl < 5000) throw usageError(`--lease-ttl: ${f["lease-ttl"]} is shorter than 5s; agents could not renew in time. Use at least 5s`);
  if (ttl > 30 * 86_400_000) throw usageError(`--lease-ttl: ${f["lease-ttl"]} is longer than 30 days; dead nodes would keep their subnets for that long. Use at most 30d (24h is usual)`);

  if (!["trace", "debug", "info", "warn", "error", "fatal", "silent"].includes(f["log-level"])) {
    throw usageError(`--log-level: ${JSON.stringify(f["log-level"])} is not a level; use trace, debug, info, warn or error`);
  }

  const [host, port] = parseHostPort(f.listen, "listen");
  const [httpHost, httpPort] = parseHostPort(f["http-listen"], "http-listen");
  const adminToken = f["admin-token-file"] === undefined ? undefined : readAdminTokenFile(f["admin-token-file"]);
  if (!!f["http-tls-cert"] !== !!f["http-tls-key"]) throw usageError("--http-tls-cert and --http-tls-key go together; pass both to serve the REST API over HTTPS, or neither");
  if (f["admin-client-ca"] && !f["http-tls-cert"]) throw usageError("--admin-client-ca needs HTTPS: pass --http-tls-cert and --http-tls-key too (client certificates only exist over TLS)");
  const httpTls: TlsFiles | undefined = f["http-tls-cert"] ? {
    cert: readFlagFile("http-tls-cert", f["http-tls-cert"]),
    key: readFlagFile("http-tls-key", f["http-tls-key"]!),
    clientCa: f["admin-client-ca"] ? readFlagFile("admin-client-ca", f["admin-client-ca"]) : undefined,
  } : undefined;
  assertAdminExposure(httpHost, { token: adminToken, clientCertificates: !!httpTls?.clientCa });

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

  if (f.insecure && (f["ca-cert"] || f["ca-key"])) throw usageError("--ca-cert/--ca-key need TLS on the gRPC port: pass --tls-cert/--tls-key instead of --insecure");
  if (!!f["ca-cert"] !== !!f["ca-key"]) throw usageError("--ca-cert and --ca-key go together; pass both, or neither to use the CA in --state-dir");
  const validity = parseDuration(f["node-cert-validity"]);
  if (validity === undefined || validity < 60_000 || validity > 365 * 86_400_000) {
    throw usageError(`--node-cert-validity: ${JSON.stringify(f["node-cert-validity"])} is not a duration from 1m to 365d; write it like 30d`);
  }
  const identity: IdentityConfig = {
    stateDir: f["state-dir"], nodeCertValidityMs: validity,
    ...(f["ca-cert"] && f["ca-key"] ? {
      caCert: { path: f["ca-cert"], pem: readFlagFile("ca-cert", f["ca-cert"]) },
      caKey: { path: f["ca-key"], pem: readFlagFile("ca-key", f["ca-key"]) },
    } : {}),
  };

  // With etcd, a missing default file means: the config lives in etcd (Flannel's way).
  const explicit = given.has("network-config");
  let network: NetworkConfig | undefined;
  if (store.kind === "sqlite" || explicit || existsSync(f["network-config"])) {
    const text = readFlagFile("network-config", f["network-config"]).toString("utf8");
    try {
      network = parseNetworkConfig(text);
    } catch (err) {
      if (err instanceof WeftError) throw usageError(`--network-config ${f["network-config"]}: ${err.message.replace(/^network config: /, "")}`);
      throw err;
    }
  }

  return deepFreeze({
    store, network, networkSource: network ? `--network-config ${f["network-config"]}` : `etcd key ${(store as { prefix: string }).prefix}/config`, listen: { host, port }, httpListen: { host: httpHost, port: httpPort }, adminToken, httpTls,
    leaseTtlMs: ttl, allowLinkLocalPublicIp: !!f["allow-link-local-public-ip"], tls, identity, logLevel: f["log-level"], initStore: !!f["init-store"],
    limits: {
      maxConnectionsPerClient: parseLimit("max-connections-per-client", f["max-connections-per-client"]),
      maxWatchesPerClient: parseLimit("max-watches-per-client", f["max-watches-per-client"]),
      maxRpcsPerClient: parseLimit("max-rpcs-per-client", f["max-rpcs-per-client"]),
    },
  });
}

type Flags = ParsedFlags<typeof FLAGS>["values"];

function parseStore(f: Flags): StoreConfig {
  const sqlite = /^sqlite:(.+)$/.exec(f.store);
  if (sqlite) return { kind: "sqlite", path: sqlite[1]! };
  const etcd = /^etcd:(.+)$/.exec(f.store);
  if (!etcd) throw usageError(`--store: ${JSON.stringify(f.store)} is not a store; use --store sqlite:/var/lib/weft/leases.db or --store etcd:http://127.0.0.1:2379`);
  const endpoints = etcd[1]!.split(",").map((e) => e.trim()).filter(Boolean);
  for (const e of endpoints) {
    let u: URL | undefined;
    try { u = new URL(e); } catch { /* below */ }
    if (!u || (u.protocol !== "http:" && u.protocol !== "https:") || !u.port || u.pathname !== "/") {
      throw usageError(`--store: etcd endpoint ${JSON.stringify(e)} is not http(s)://HOST:PORT; write e.g. --store etcd:https://10.0.0.1:2379,https://10.0.0.2:2379`);
    }
  }
  const prefix = f["etcd-prefix"];
  if (!/^\/[^\s]*[^/\s]$/.test(prefix)) throw usageError(`--etcd-prefix: ${JSON.stringify(prefix)} is not a key prefix; write it like /weft/network (or /coreos.com/network to share Flannel's)`);
  const anyTls = f["etcd-cafile"] || f["etcd-certfile"] || f["etcd-keyfile"];
  if (!!f["etcd-certfile"] !== !!f["etcd-keyfile"]) throw usageError("--etcd-certfile and --etcd-keyfile go together; pass both for client certificates, or neither");
  const https = endpoints.some((e) => e.startsWith("https:"));
  if (anyTls && !https) throw usageError("--etcd-cafile/--etcd-certfile/--etcd-keyfile need https:// endpoints in --store");
  if (https && !anyTls) throw usageError("--store has https:// etcd endpoints: pass --etcd-cafile (and --etcd-certfile/--etcd-keyfile for client certificates)");
  if (!!f["etcd-username"] !== !!f["etcd-password-file"]) throw usageError("--etcd-username and --etcd-password-file go together");
  return {
    kind: "etcd", endpoints, prefix,
    ...(anyTls ? {
      tls: {
        ...(f["etcd-cafile"] ? { ca: readFlagFile("etcd-cafile", f["etcd-cafile"]) } : {}),
        ...(f["etcd-certfile"] ? { cert: readFlagFile("etcd-certfile", f["etcd-certfile"]), key: readFlagFile("etcd-keyfile", f["etcd-keyfile"]!) } : {}),
      },
    } : {}),
    ...(f["etcd-username"] ? { auth: { username: f["etcd-username"], password: readFlagFile("etcd-password-file", f["etcd-password-file"]!).toString("utf8").trim() } } : {}),
  };
}
