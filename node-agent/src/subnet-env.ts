// subnet.env in Flannel's exact format, read by the Flannel CNI plugin and
// Docker integrations. Written atomically (temp file + rename) so a reader
// never sees half a file; dir 0755, file 0644 regardless of umask.
import { chmod, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname, join, basename } from "node:path";
import { formatCidr, formatIpv4, parseCidr, type Ipv4Net } from "../../lib/src/cidr.js";

export interface SubnetEnv {
  readonly network: Ipv4Net;
  readonly subnet: Ipv4Net;
  readonly mtu: number;
  readonly ipMasq: boolean;
}

export function formatSubnetEnv(e: SubnetEnv): string {
  // FLANNEL_SUBNET is the first usable address (network + 1) with the subnet's length.
  return [
    `FLANNEL_NETWORK=${formatCidr(e.network)}`,
    `FLANNEL_SUBNET=${formatIpv4((e.subnet.ip + 1) >>> 0)}/${e.subnet.prefix}`,
    `FLANNEL_MTU=${e.mtu}`,
    `FLANNEL_IPMASQ=${e.ipMasq}`,
    "",
  ].join("\n");
}

export async function writeSubnetEnv(path: string, e: SubnetEnv): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const tmp = join(dir, `.${basename(path)}.${process.pid}.tmp`);
  await writeFile(tmp, formatSubnetEnv(e), { mode: 0o644 });
  await chmod(tmp, 0o644);
  await rename(tmp, path);
}

/** KEY=VALUE lines, as godotenv reads them (comments, blanks and quotes tolerated). */
export function parseEnvFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
    if (m) out[m[1]!] = m[2]!.replace(/^(['"])(.*)\1$/, "$2");
  }
  return out;
}

/**
 * The subnet from an existing file's FLANNEL_SUBNET, as a network CIDR ("10.244.3.0/24"),
 * or undefined when absent, unreadable, a list, or invalid (Flannel treats those as "none").
 */
export async function readPreviousSubnet(path: string): Promise<string | undefined> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    return undefined;
  }
  const v = parseEnvFile(text).FLANNEL_SUBNET;
  if (!v || v.includes(",")) return undefined;
  const n = parseCidr(v, false);
  return n ? formatCidr(n) : undefined;
}
