// The lease server's node CA: it signs the client certificates agents get
// with a join token (kubelet TLS bootstrap's way). Either the operator's
// (--ca-cert/--ca-key) or one made on first start in --state-dir (ca.crt,
// ca.key, both 0600). Several lease servers on one etcd must share one CA,
// or a node bootstrapped by one would be a stranger to the others.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { X509Certificate, createPrivateKey, createPublicKey, randomBytes, webcrypto, type KeyObject } from "node:crypto";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { WeftError, errorMessage } from "../../../lib/src/errors.js";
import { writeFileAtomic } from "../../../lib/src/atomic-file.js";
import type { Logger } from "../../../lib/src/logger.js";

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const CA_VALIDITY_MS = 10 * 365 * 86_400_000;
/**
 * Node certificates start a little in the past: a node whose clock lags must not see a "not yet valid"
 * certificate. At most a tenth of the lifetime, so renewal at 2/3 of it stays after the issue.
 */
const BACKDATE_MS = 5 * 60_000;

type SigningAlgorithm = EcdsaParams & EcKeyImportParams | RsaHashedImportParams;

export interface IssuedCertificate {
  readonly pem: string;
  readonly notAfter: Date;
  readonly serial: string;
}

/** A positive serial of 128 random bits, hex (RFC 5280 allows up to 20 octets). */
function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x01;
  return b.toString("hex");
}

/** The signature algorithm for a CA key: ECDSA P-256/P-384 or RSA. */
function signingAlgorithm(key: KeyObject): SigningAlgorithm {
  const type = key.asymmetricKeyType;
  const curve = key.asymmetricKeyDetails?.namedCurve;
  if (type === "ec" && curve === "prime256v1") return { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
  if (type === "ec" && curve === "secp384r1") return { name: "ECDSA", namedCurve: "P-384", hash: "SHA-384" };
  if (type === "rsa") return { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
  throw new Error(`a ${type}${curve ? ` ${curve}` : ""} key cannot sign here; use an ECDSA P-256/P-384 or RSA key`);
}

export class NodeCa {
  private constructor(
    /** The CA certificate (PEM): what the gRPC port trusts for client certificates, and what nodes are told. */
    readonly certPem: string,
    private readonly cert: x509.X509Certificate,
    private readonly key: CryptoKey,
    private readonly alg: SigningAlgorithm,
    /** Where it came from, for messages. */
    readonly source: string,
  ) {}

  /** Checks that the pair is a usable CA (a CA certificate, the key belongs to it, not expired). `what` names the source in errors. */
  static async fromPem(certPem: string, keyPem: string, what: { cert: string; key: string }): Promise<NodeCa> {
    let nodeCert: X509Certificate;
    try {
      nodeCert = new X509Certificate(certPem);
    } catch (err) {
      throw new WeftError("CONFIG_INVALID", `${what.cert}: not a PEM certificate (${errorMessage(err)}); pass the CA certificate`, { cause: err });
    }
    if (!nodeCert.ca) throw new WeftError("CONFIG_INVALID", `${what.cert}: ${nodeCert.subject.replace(/\n/g, ", ")} is not a CA certificate (no basicConstraints CA:TRUE); pass a CA that may sign node certificates`);
    if (Date.parse(nodeCert.validTo) <= Date.now()) throw new WeftError("CONFIG_INVALID", `${what.cert}: the CA expired on ${new Date(nodeCert.validTo).toISOString()}; make a new CA`);
    let keyObject: KeyObject;
    try {
      keyObject = createPrivateKey(keyPem);
    } catch (err) {
      throw new WeftError("CONFIG_INVALID", `${what.key}: not a usable unencrypted PEM private key (${errorMessage(err)}); pass the CA's key`, { cause: err });
    }
    const spki = (k: KeyObject) => k.export({ type: "spki", format: "der" });
    if (!spki(createPublicKey(keyObject)).equals(spki(nodeCert.publicKey))) {
      throw new WeftError("CONFIG_INVALID", `${what.key} does not belong to the CA certificate in ${what.cert}; pass the matching key`);
    }
    let alg: SigningAlgorithm;
    try {
      alg = signingAlgorithm(keyObject);
    } catch (err) {
      throw new WeftError("CONFIG_INVALID", `${what.key}: ${errorMessage(err)}`);
    }
    const pkcs8 = keyObject.export({ type: "pkcs8", format: "der" });
    const key = await webcrypto.subtle.importKey("pkcs8", pkcs8, alg, false, ["sign"]);
    return new NodeCa(nodeCert.toString(), new x509.X509Certificate(nodeCert.raw), key, alg, what.cert);
  }

  /**
   * The operator's CA when given, else the one in `stateDir` (made on first start).
   * ca.key is written before ca.crt, and nothing is signed before both exist, so a
   * lone ca.key is an interrupted first start and is replaced.
   */
  static async loadOrCreate(o: { caCert?: { path: string; pem: Buffer }; caKey?: { path: string; pem: Buffer }; stateDir: string; log: Logger }): Promise<NodeCa> {
    if (o.caCert && o.caKey) return NodeCa.fromPem(o.caCert.pem.toString("utf8"), o.caKey.pem.toString("utf8"), { cert: `--ca-cert ${o.caCert.path}`, key: `--ca-key ${o.caKey.path}` });
    const certPath = join(o.stateDir, "ca.crt");
    const keyPath = join(o.stateDir, "ca.key");
    if (existsSync(certPath)) {
      if (!existsSync(keyPath)) {
        throw new WeftError("CONFIG_INVALID", `${certPath} exists but ${keyPath} does not; restore ca.key, or remove ca.crt to make a new CA (every node must then join again with a join token)`);
      }
      return NodeCa.fromPem(readFileSync(certPath, "utf8"), readFileSync(keyPath, "utf8"), { cert: certPath, key: keyPath });
    }
    const { certPem, keyPem } = await generateCa();
    try {
      mkdirSync(o.stateDir, { recursive: true, mode: 0o700 });
      await writeFileAtomic(keyPath, keyPem, 0o600);
      await writeFileAtomic(certPath, certPem, 0o600);
    } catch (err) {
      throw new WeftError("CONFIG_INVALID", `--state-dir ${o.stateDir}: cannot write the node CA (${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}); make the directory writable, or pass --ca-cert/--ca-key`, { cause: err });
    }
    o.log.info({ caCert: certPath }, "made a node CA for join tokens; give every lease server on this store the same ca.crt and ca.key");
    return NodeCa.fromPem(certPem, keyPem, { cert: certPath, key: keyPath });
  }

  /** A client certificate for exactly `nodeName` (CN and DNS SAN), for TLS client authentication only. */
  async sign(nodeName: string, publicKey: x509.PublicKey, now: number, validityMs: number): Promise<IssuedCertificate> {
    // Certificates hold whole seconds; the answer's not_after must be the certificate's.
    const notAfter = new Date(Math.floor(Math.min(now + validityMs, this.cert.notAfter.getTime()) / 1000) * 1000);
    const serial = randomSerial();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial,
      subject: new x509.Name([{ CN: [nodeName] }]),
      issuer: this.cert.subjectName,
      notBefore: new Date(now - Math.min(BACKDATE_MS, validityMs / 10)),
      notAfter,
      signingAlgorithm: this.alg,
      publicKey,
      signingKey: this.key,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
        new x509.SubjectAlternativeNameExtension([{ type: "dns", value: nodeName }]),
        await x509.AuthorityKeyIdentifierExtension.create(this.cert, false),
        await x509.SubjectKeyIdentifierExtension.create(publicKey),
      ],
    });
    return { pem: cert.toString("pem") + "\n", notAfter, serial };
  }
}

async function generateCa(): Promise<{ certPem: string; keyPem: string }> {
  const alg = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
  const keys = await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"]) as CryptoKeyPair;
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: new x509.Name([{ CN: [`weft node CA ${randomBytes(4).toString("hex")}`] }]),
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(now + CA_VALIDITY_MS),
    signingAlgorithm: alg,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.toString("base64").replace(/(.{64})/g, "$1\n").replace(/\n?$/, "\n")}-----END PRIVATE KEY-----\n`;
  return { certPem: cert.toString("pem") + "\n", keyPem };
}
