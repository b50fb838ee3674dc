// compose.yaml's one-shot init: makes what the lease servers need before
// their first start, so `docker compose up` works on the first try:
//   admin-token            the REST admin credential (0600)
//   tls-ca.crt, tls-ca.key a CA for the servers' gRPC certificate; agents get tls-ca.crt (--tls-ca)
//   server.crt, server.key the servers' certificate, for the names agents dial
//   node-ca.crt, node-ca.key  the node CA that signs join-token certificates, one for every
//                          server (a node joined through one server must be known to the others)
// Files that exist are kept. The server certificate is issued again when the
// names change (WEFT_SERVER_NAMES, comma-separated host names or addresses).
// Usage: node init.mjs DIR
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { randomBytes, webcrypto } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { isIP } from "node:net";
import { join } from "node:path";

x509.cryptoProvider.set(webcrypto);
const dir = process.argv[2];
if (!dir) throw new Error("usage: node init.mjs DIR");
mkdirSync(dir, { recursive: true, mode: 0o700 });
const path = (name) => join(dir, name);
const ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
const YEAR_MS = 365 * 86_400_000;
// The compose service names, for clients inside the compose network, plus loopback.
const BUILT_IN = ["lease-server", "lease-server-1", "lease-server-2", "localhost", "127.0.0.1"];

function write(name, text) {
  const tmp = path(`.${name}.tmp`);
  writeFileSync(tmp, text, { mode: 0o600 });
  renameSync(tmp, path(name));
}

const pem = async (key, format) => x509.PemConverter.encode(await webcrypto.subtle.exportKey(format, key), "PRIVATE KEY");
const serial = () => randomBytes(16).toString("hex").replace(/^./, "1");

async function makeCa(name, cn) {
  if (existsSync(path(`${name}.crt`)) && existsSync(path(`${name}.key`))) return loadCa(name);
  const keys = await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"]);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(), name: `CN=${cn}`, notBefore: new Date(Date.now() - 300_000), notAfter: new Date(Date.now() + 10 * YEAR_MS),
    signingAlgorithm: ALG, keys,
    extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true)],
  });
  write(`${name}.key`, await pem(keys.privateKey, "pkcs8"));
  write(`${name}.crt`, cert.toString("pem"));
  console.log(`made ${path(`${name}.crt`)}`);
  return { cert, key: keys.privateKey };
}

async function loadCa(name) {
  const cert = new x509.X509Certificate(readFileSync(path(`${name}.crt`), "utf8"));
  const der = x509.PemConverter.decodeFirst(readFileSync(path(`${name}.key`), "utf8"));
  return { cert, key: await webcrypto.subtle.importKey("pkcs8", der, ALG, false, ["sign"]) };
}

async function ensureServerCert(ca, names) {
  if (existsSync(path("server.crt")) && existsSync(path("server-names")) && readFileSync(path("server-names"), "utf8") === names.join(",")) return;
  const keys = await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"]);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(), subject: `CN=${names[0]}`, issuer: ca.cert.subject, notBefore: new Date(Date.now() - 300_000), notAfter: new Date(Date.now() + 2 * YEAR_MS),
    signingAlgorithm: ALG, publicKey: keys.publicKey, signingKey: ca.key,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(names.map((n) => ({ type: isIP(n) ? "ip" : "dns", value: n }))),
    ],
  });
  write("server.key", await pem(keys.privateKey, "pkcs8"));
  write("server.crt", `${cert.toString("pem")}\n${ca.cert.toString("pem")}\n`);
  write("server-names", names.join(","));
  console.log(`issued ${path("server.crt")} for ${names.join(", ")}`);
}

const extra = (process.env.WEFT_SERVER_NAMES ?? "").split(",").map((s) => s.trim()).filter(Boolean);
const names = [...new Set([...extra, ...BUILT_IN])];
if (!existsSync(path("admin-token"))) {
  write("admin-token", `${randomBytes(32).toString("base64")}\n`);
  console.log(`made ${path("admin-token")}`);
}
await ensureServerCert(await makeCa("tls-ca", "weft compose gRPC CA"), names);
await makeCa("node-ca", "weft compose node CA");
