// The node's client certificate and key in the state dir (node.crt,
// node.key, 0600). A renewal brings a new key, and two files cannot be
// replaced in one step: the new key goes to node.key.next first, then the
// certificate replaces node.crt, then node.key.next replaces node.key. A crash
// in between leaves a certificate that matches node.key.next, and the next
// read finishes the move.
import { X509Certificate, createPrivateKey } from "node:crypto";
import { existsSync, readFileSync, renameSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { writeFileAtomic } from "../../lib/src/atomic-file.js";

export const NODE_CERT_FILE = "node.crt";
export const NODE_KEY_FILE = "node.key";
const NEXT_KEY_FILE = "node.key.next";
/** kubeadm's bootstrap token form; the lease server makes them (POST /v1/join-tokens). */
export const JOIN_TOKEN_RE = /^[a-z0-9]{6}\.[a-z0-9]{16}$/;

export interface NodeCertificate {
  readonly certPath: string;
  readonly keyPath: string;
  readonly notBefore: number;
  readonly notAfter: number;
}

export type CertificateState =
  | { readonly ok: true; readonly cert: NodeCertificate }
  | { readonly ok: false; readonly reason: string };

function matches(cert: X509Certificate, keyPem: string): boolean {
  try {
    return cert.checkPrivateKey(createPrivateKey(keyPem));
  } catch {
    return false;
  }
}

/** The certificate in `dir` if it is for `nodeName`, matches its key and has not expired at `now`. */
export function readNodeCertificate(dir: string, nodeName: string, now: number): CertificateState {
  const certPath = join(dir, NODE_CERT_FILE);
  const keyPath = join(dir, NODE_KEY_FILE);
  if (!existsSync(certPath)) return { ok: false, reason: `no ${certPath}` };
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(readFileSync(certPath));
  } catch (err) {
    return { ok: false, reason: `${certPath} is not a PEM certificate (${(err as Error).message})` };
  }
  const nextPath = join(dir, NEXT_KEY_FILE);
  let keyPem = existsSync(keyPath) ? readFileSync(keyPath, "utf8") : "";
  if (!matches(cert, keyPem) && existsSync(nextPath) && matches(cert, readFileSync(nextPath, "utf8"))) {
    renameSync(nextPath, keyPath);
    keyPem = readFileSync(keyPath, "utf8");
  }
  if (!matches(cert, keyPem)) return { ok: false, reason: `${keyPath} is missing or does not belong to ${certPath}` };
  if (!cert.checkHost(nodeName, { subject: "always", wildcards: false })) {
    return { ok: false, reason: `${certPath} is for ${cert.subject.replace(/\n/g, ", ")}, not node ${nodeName}` };
  }
  const notBefore = Date.parse(cert.validFrom);
  const notAfter = Date.parse(cert.validTo);
  if (notAfter <= now) return { ok: false, reason: `${certPath} expired at ${new Date(notAfter).toISOString()}` };
  return { ok: true, cert: { certPath, keyPath, notBefore, notAfter } };
}

export async function writeNodeCertificate(dir: string, keyPem: string, certPem: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(join(dir, NEXT_KEY_FILE), keyPem, 0o600);
  await writeFileAtomic(join(dir, NODE_CERT_FILE), certPem, 0o600);
  renameSync(join(dir, NEXT_KEY_FILE), join(dir, NODE_KEY_FILE));
}

/** When to renew: at 2/3 of the lifetime, as kubelet does (between 70 % and 90 %, there with jitter). */
export function renewAt(c: Pick<NodeCertificate, "notBefore" | "notAfter">): number {
  return c.notBefore + ((c.notAfter - c.notBefore) * 2) / 3;
}
