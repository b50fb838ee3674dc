// Flags -> one validated, frozen agent config. Nothing else reads argv or env.
import { hostname } from "node:os";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { X509Certificate } from "node:crypto";
import { createSecureContext } from "node:tls";
import { isIpv4 } from "../../lib/src/cidr.js";
import { parseDuration } from "../../lib/src/duration.js";
import { parseHostPort, readFlags, usageError, type Env, type FlagSpec, type ParsedFlags } from "../../lib/src/flags.js";
import { validateNodeName, validatePublicIp } from "../../lib/src/lease.js";
import { deepFreeze } from "../../lib/src/net-config.js";
import { isWeftError } from "../../lib/src/errors.js";
import { isLoopbackHost, readAdminTokenFile } from "../../lib/src/admin-token.js";
import type { TlsFiles } from "./lease-client.js";
import { isKey } from "./wireguard/keys.js";
import { JOIN_TOKEN_RE, NODE_CERT_FILE } from "./identity-files.js";

export const BIN = "weft-agent";

export const FLAGS = {
  server: { type: "string", value: "HOST:PORT[,HOST:PORT...]", help: "lease server gRPC address(es); the next one is tried when one is unreachable" },
  "node-name": { type: "string", value: "NAME", help: "this node's name in its lease (default: the hostname)" },
  iface: { type: "string", value: "NAME|IP", help: "underlay interface for the tunnel (default: the interface of the default route)" },
  "public-ip": { type: "string", value: "IP", help: "address advertised to other nodes (default: the interface's address)" },
  "subnet-file": { type: "string", value: "PATH", default: "/run/flannel/subnet.env", help: "where to write FLANNEL_NETWORK/SUBNET/MTU/IPMASQ" },
  "state-dir": { type: "string", value: "DIR", default: "/var/lib/weft", help: "state kept across restarts (the VTEP MAC, the WireGuard private key)" },
  "http-listen": { type: "string", value: "HOST:PORT", default: "127.0.0.1:9464", help: "REST API: /healthz, /readyz, /v1/lease, /v1/peers, /metrics, POST /v1/wireguard/rotate-key" },
  "metrics-listen": { type: "string", value: "HOST:PORT", help: "read-only listener for Prometheus and probes: GET /metrics, /healthz and /readyz, nothing else; any address is fine, e.g. 0.0.0.0:9465 (default: off)" },
  "vxlan-device": { type: "string", value: "NAME", help: "VXLAN device name (default: weft.<VNI>)" },
  "wireguard-device": { type: "string", value: "NAME", default: "weft-wg", help: "WireGuard device name (wireguard-go's UAPI socket path is shared by all network namespaces: give each node on one host its own)" },
  "wireguard-psk-file": { type: "string", value: "FILE", help: "file with a WireGuard pre-shared key (base64, as wg genpsk prints) used with every peer; every node needs the same one" },
  "wireguard-key-rotation": { type: "string", value: "DURATION", help: "make and publish a new WireGuard key pair this often (at least 1m; default: never, POST /v1/wireguard/rotate-key does it on demand)" },
  "ip-masq": { type: "boolean", help: "masquerade pod traffic leaving the cluster network with the node's address (nftables table ip weft); writes FLANNEL_IPMASQ=true" },
  "forward-rules": { type: "boolean", default: "true", help: "accept forwarding to and from the cluster network (nftables, and iptables FORWARD where iptables exists: Docker sets its policy to DROP); --forward-rules=false to leave forwarding alone" },
  cleanup: { type: "boolean", help: "remove all of weft's kernel state from this node (weft devices, weft routes, firewall rules) and exit" },
  "watch-kernel": { type: "boolean", default: "true", help: "repair drift (a deleted route, ARP or FDB entry, address, device, a changed MTU) as soon as the kernel announces it; =false leaves repairs to the resync timer" },
  "resync-interval": { type: "string", value: "DURATION", default: "10s", help: "how often the kernel state is compared with the peers even without changes (1s to 1h)" },
  insecure: { type: "boolean", help: "talk to the lease server in plaintext (trusted networks and tests only)" },
  "tls-ca": { type: "string", value: "FILE", help: "CA (PEM) that signed the lease server's certificate" },
  "tls-cert": { type: "string", value: "FILE", help: "client certificate (PEM) for mTLS; its name must be the node name" },
  "tls-key": { type: "string", value: "FILE", help: "client private key (PEM) for mTLS" },
  "join-token-file": { type: "string", value: "FILE", help: "file with a join token (POST /v1/join-tokens on the lease server); the agent trades it once for its own client certificate, kept in --state-dir (node.crt, node.key) and renewed without the token; needs --tls-ca" },
  "admin-token-file": { type: "string", value: "FILE", help: "bearer token (32+ characters, file mode 600) that POST /v1/wireguard/rotate-key then requires; needed when --http-listen is not loopback. Make one with: head -c 32 /dev/urandom | base64 > FILE" },
  "log-level": { type: "string", value: "LEVEL", default: "info", help: "trace, debug, info, warn or error" },
  help: { type: "boolean", help: "print this help" },
} as const satisfies Record<string, FlagSpec>;

/** --cleanup: nothing but the log level matters. */
export interface CleanupConfig {
  readonly cleanup: true;
  readonly logLevel: string;
}

export interface AgentConfig {
  readonly cleanup: false;
  readonly servers: readonly string[];
  readonly nodeName: string;
  readonly iface?: string;
  readonly publicIP?: string;
  readonly subnetFile: string;
  readonly stateDir: string;
  /** `name`: how the operator set it (--http-listen or WEFT_HTTP_LISTEN), for bind errors. */
  readonly httpListen: { readonly host: string; readonly port: number; readonly name: string };
  /** --metrics-listen; `name` is how it was set (--metrics-listen or WEFT_METRICS_LISTEN), for bind errors. */
  readonly metricsListen?: { readonly host: string; readonly port: number; readonly name: string };
  readonly vxlanDevice?: string;
  readonly wireguardDevice: string;
  /** base64; from --wireguard-psk-file. */
  readonly wireguardPsk?: string;
  /** 0 = no timer. */
  readonly wireguardKeyRotationMs: number;
  readonly ipMasq: boolean;
  readonly forwardRules: boolean;
  readonly watchKernel: boolean;
  readonly resyncIntervalMs: number;
  /** undefined = insecure. */
  readonly tls?: TlsFiles;
  /** From --admin-token-file: the REST API's POST routes need it. */
  readonly adminToken?: string;
  /**
   * --join-token-file: the client certificate is the one in the state dir, obtained with the token
   * (undefined when the file is gone but a certificate from an earlier join is there).
   */
  readonly join?: { readonly file: string; readonly token?: string };
  readonly logLevel: string;
}

const RESYNC_MIN_MS = 1000;
const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];
const RESYNC_MAX_MS = 3_600_000;
const ROTATION_MIN_MS = 60_000;
/** Node's timers stop at 2^31 ms (24.8 days). */
const ROTATION_MAX_MS = 24 * 86_400_000;

function readFlagFile(flag: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw usageError(`--${flag}: cannot read ${path} (${code ?? (err as Error).message}); check the path and its permissions`);
  }
}

/** A WireGuard pre-shared key file: one base64 key of 32 bytes. */
function readPsk(path: string): string {
  if (!existsSync(path)) throw usageError(`--wireguard-psk-file: ${path} does not exist; make the key once with wg genpsk > ${path} and copy the same file to every node`);
  const text = readFlagFile("wireguard-psk-file", path).toString("utf8").trim();
  if (!isKey(text)) throw usageError(`--wireguard-psk-file: ${path} does not hold a WireGuard key (44 base64 characters); make one with wg genpsk > ${path}`);
  return text;
}

/** Reads the TLS files and checks they parse (and that key and certificate match), so start-up fails with a usage error, not a stack. */
function validateTls(t: TlsFiles): void {
  if (t.ca) {
    const pem = readFlagFile("tls-ca", t.ca).toString("utf8");
    const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
    if (blocks.length === 0) throw usageError(`--tls-ca: ${t.ca} holds no PEM certificate; pass the CA certificate (-----BEGIN CERTIFICATE-----) that signed the lease server's`);
    for (const b of blocks) {
      try {
        new X509Certificate(b);
      } catch (err) {
        throw usageError(`--tls-ca: ${t.ca} has a certificate that does not parse (${(err as Error).message}); pass a valid PEM CA certificate`);
      }
    }
  }
  if (t.cert && t.key) {
    const cert = readFlagFile("tls-cert", t.cert);
    const key = readFlagFile("tls-key", t.key);
    try {
      new X509Certificate(cert);
    } catch (err) {
      throw usageError(`--tls-cert: ${t.cert} is not a PEM certificate (${(err as Error).message}); pass the node's client certificate`);
    }
    try {
      createSecureContext({ cert, key });
    } catch (err) {
      const msg = (err as Error).message;
      if (/mismatch/i.test(msg)) throw usageError(`--tls-key: ${t.key} does not belong to the certificate in ${t.cert} (${msg}); pass the matching key`);
      throw usageError(`--tls-key: ${t.key} is not a usable PEM private key (${msg}); pass the unencrypted key for --tls-cert`);
    }
  }
}

const isWildcard = (host: string) => host === "0.0.0.0" || host === "::";

/** The token, checked for form; a missing file is fine once the state dir has a certificate from an earlier join. */
function readJoinToken(path: string, stateDir: string): { file: string; token?: string } {
  if (!existsSync(path) && existsSync(join(stateDir, NODE_CERT_FILE))) return { file: path };
  const token = readFlagFile("join-token-file", path).toString("utf8").trim();
  if (!JOIN_TOKEN_RE.test(token)) {
    throw usageError(`--join-token-file: ${path} does not hold a join token (<6 characters>.<16 characters> of a-z, 0-9, as POST /v1/join-tokens answers); write the token alone into the file`);
  }
  return { file: path, token };
}

/**
 * Returns undefined for --help; throws CONFIG_INVALID naming the flag (or its WEFT_* variable) and the fix.
 * `env`: main() passes process.env; WEFT_<FLAG> sets --<flag> unless argv sets it too. `warn` hears
 * about WEFT_* variables that are no flag.
 */
export function loadAgentConfig(argv: readonly string[], env: Env = {}, warn?: (message: string) => void): AgentConfig | CleanupConfig | undefined {
  const flags = readFlags(argv, FLAGS, BIN, env, warn);
  return flags.explain(() => fromFlags(flags));
}

function fromFlags({ values: f, nameOf }: ParsedFlags<typeof FLAGS>): AgentConfig | CleanupConfig | undefined {
  if (f.help) return undefined;
  if (!LOG_LEVELS.includes(f["log-level"])) {
    throw usageError(`--log-level: ${JSON.stringify(f["log-level"])} is not a level; use trace, debug, info, warn or error`);
  }
  if (f.cleanup) return deepFreeze({ cleanup: true as const, logLevel: f["log-level"] });

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

  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(f["wireguard-device"])) {
    throw usageError(`--wireguard-device: ${JSON.stringify(f["wireguard-device"])} is not a valid interface name (1-15 of letters, digits, _ . -)`);
  }
  const wireguardPsk = f["wireguard-psk-file"] === undefined ? undefined : readPsk(f["wireguard-psk-file"]);
  let wireguardKeyRotationMs = 0;
  if (f["wireguard-key-rotation"] !== undefined) {
    const d = parseDuration(f["wireguard-key-rotation"]);
    if (d === undefined || d < ROTATION_MIN_MS || d > ROTATION_MAX_MS) throw usageError(`--wireguard-key-rotation: ${JSON.stringify(f["wireguard-key-rotation"])} is not a duration from 1m to 24d; write it like 24h, or leave the flag out to rotate only on demand`);
    wireguardKeyRotationMs = d;
  }

  const resync = parseDuration(f["resync-interval"]);
  if (resync === undefined || resync < RESYNC_MIN_MS || resync > RESYNC_MAX_MS) {
    throw usageError(`--resync-interval: ${JSON.stringify(f["resync-interval"])} is not a duration from 1s to 1h; write it like 10s`);
  }
  const [host, port] = parseHostPort(f["http-listen"], "http-listen");
  const adminToken = f["admin-token-file"] === undefined ? undefined : readAdminTokenFile(f["admin-token-file"]);
  if (!adminToken && !isLoopbackHost(host)) {
    throw usageError(`--http-listen ${host}: POST /v1/wireguard/rotate-key would be open to anyone who reaches this address; pass --admin-token-file FILE (head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE), or listen on 127.0.0.1`);
  }
  // Any address: it serves nothing that changes state.
  let metricsListen: AgentConfig["metricsListen"];
  if (f["metrics-listen"] !== undefined) {
    const [mHost, mPort] = parseHostPort(f["metrics-listen"], "metrics-listen");
    if (mPort !== 0 && mPort === port && (mHost === host || isWildcard(mHost) || isWildcard(host))) {
      throw usageError(`--metrics-listen ${f["metrics-listen"]} and --http-listen ${f["http-listen"]} use the same port; give --metrics-listen another one, e.g. ${mHost.includes(":") ? `[${mHost}]` : mHost}:${port + 1}`);
    }
    metricsListen = { host: mHost, port: mPort, name: nameOf("metrics-listen") };
  }

  const tokenFile = f["join-token-file"];
  if (tokenFile !== undefined && f.insecure) throw usageError("--join-token-file conflicts with --insecure: joining needs TLS; pass --tls-ca with the CA of the lease server's certificate");
  if (tokenFile !== undefined && (f["tls-cert"] || f["tls-key"])) throw usageError("--join-token-file conflicts with --tls-cert/--tls-key: the node gets its certificate with the token; pass one or the other");
  if (tokenFile !== undefined && !f["tls-ca"]) throw usageError("--join-token-file needs --tls-ca: the CA (PEM) of the lease server's certificate, so the token goes only to the real server");
  const joining = tokenFile === undefined ? undefined : readJoinToken(tokenFile, f["state-dir"]);

  let tls: TlsFiles | undefined;
  const anyTls = f["tls-ca"] || f["tls-cert"] || f["tls-key"];
  if (f.insecure && anyTls) throw usageError("--insecure conflicts with --tls-ca/--tls-cert/--tls-key; pass one or the other");
  if (!f.insecure) {
    if (!anyTls) throw usageError("the lease server connection needs TLS: pass --tls-ca (and --tls-cert/--tls-key for mTLS), or --insecure for plaintext on a trusted network");
    if (!!f["tls-cert"] !== !!f["tls-key"]) throw usageError("--tls-cert and --tls-key go together; pass both for mTLS or neither");
    tls = { ca: f["tls-ca"], cert: f["tls-cert"], key: f["tls-key"] };
    validateTls(tls);
  }

  return deepFreeze({
    cleanup: false as const, servers, nodeName, iface: f.iface, publicIP: f["public-ip"], subnetFile: f["subnet-file"], stateDir: f["state-dir"],
    httpListen: { host, port, name: nameOf("http-listen") }, metricsListen, vxlanDevice: f["vxlan-device"], wireguardDevice: f["wireguard-device"], wireguardPsk, wireguardKeyRotationMs, ipMasq: f["ip-masq"], forwardRules: f["forward-rules"], watchKernel: f["watch-kernel"], resyncIntervalMs: resync, tls, adminToken, join: joining, logLevel: f["log-level"],
  });
}
