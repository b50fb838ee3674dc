// Certificates for identity tests, made in-process (@peculiar/x509): a CA for
// the server's own certificate, a CA for hand-made node certificates
// (--tls-client-ca), and certificates signed by them or by nobody.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { webcrypto } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
const DAY = 86_400_000;

export interface Pem {
  readonly cert: string;
  readonly key: string;
}

export async function keyPair(): Promise<CryptoKeyPair> {
  return webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"]) as Promise<CryptoKeyPair>;
}

export async function keyPem(k: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", k));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString("base64").replace(/(.{64})/g, "$1\n").replace(/\n?$/, "\n")}-----END PRIVATE KEY-----\n`;
}

export class TestCa {
  private constructor(readonly cert: x509.X509Certificate, readonly keys: CryptoKeyPair) {}

  static async create(cn: string): Promise<TestCa> {
    const keys = await keyPair();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: "01", name: `CN=${cn}`, notBefore: new Date(Date.now() - DAY), notAfter: new Date(Date.now() + DAY), signingAlgorithm: ALG, keys,
      extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
    });
    return new TestCa(cert, keys);
  }

  get pem(): string {
    return this.cert.toString("pem") + "\n";
  }

  async leaf(cn: string, san: x509.JsonGeneralName[], eku: string): Promise<Pem> {
    const keys = await keyPair();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: String(Date.now() % 1e9), subject: `CN=${cn}`, issuer: this.cert.subject, notBefore: new Date(Date.now() - DAY), notAfter: new Date(Date.now() + DAY),
      signingAlgorithm: ALG, publicKey: keys.publicKey, signingKey: this.keys.privateKey,
      extensions: [new x509.SubjectAlternativeNameExtension(san), new x509.ExtendedKeyUsageExtension([eku])],
    });
    return { cert: cert.toString("pem") + "\n", key: await keyPem(keys.privateKey) };
  }
}

/** A self-signed certificate naming `cn`: trusted by no one. */
export async function selfSigned(cn: string): Promise<Pem> {
  const keys = await keyPair();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "02", name: `CN=${cn}`, notBefore: new Date(Date.now() - DAY), notAfter: new Date(Date.now() + DAY), signingAlgorithm: ALG, keys,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: "dns", value: cn }])],
  });
  return { cert: cert.toString("pem") + "\n", key: await keyPem(keys.privateKey) };
}

/** A CSR (PEM) for `cn` and its key. */
export async function csrFor(cn: string, keys?: CryptoKeyPair): Promise<{ csr: string; keys: CryptoKeyPair }> {
  const k = keys ?? await keyPair();
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${cn}`, keys: k, signingAlgorithm: ALG });
  return { csr: csr.toString("pem"), keys: k };
}

export interface ServerPki {
  /** Files: server-ca.crt, server.crt, server.key, hand-ca.crt. */
  readonly file: (name: string) => string;
  readonly serverCa: TestCa;
  readonly handCa: TestCa;
}

/** The server certificate (for 127.0.0.1 and localhost) and a CA for hand-made node certificates, written to `dir`. */
export async function writeServerPki(dir: string): Promise<ServerPki> {
  const serverCa = await TestCa.create("weft-test-server-ca");
  const handCa = await TestCa.create("weft-test-hand-ca");
  const server = await serverCa.leaf("weft-lease-server", [{ type: "ip", value: "127.0.0.1" }, { type: "dns", value: "localhost" }], x509.ExtendedKeyUsage.serverAuth);
  const file = (name: string) => join(dir, name);
  writeFileSync(file("server-ca.crt"), serverCa.pem);
  writeFileSync(file("server.crt"), server.cert);
  writeFileSync(file("server.key"), server.key, { mode: 0o600 });
  writeFileSync(file("hand-ca.crt"), handCa.pem);
  return { file, serverCa, handCa };
}
