// NodeIdentityService.IssueCertificate: a node trades a join token (first
// time) or its current certificate (renewal) and a CSR for a client
// certificate naming exactly its node name. A token never takes over the name
// of a node that holds a live lease: that would let anyone with a token act
// for that node. Nothing is spent until every check has passed.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { createPublicKey } from "node:crypto";
import type * as grpc from "@grpc/grpc-js";
import { NodeIdentityServiceService, type IssueCertificateRequest, type IssueCertificateResponse, type NodeIdentityServiceServer } from "../../../gen/weft/v1/lease.js";
import { WeftError, errorMessage, invalid } from "../../../lib/src/errors.js";
import { validateNodeName } from "../../../lib/src/lease.js";
import type { Logger } from "../../../lib/src/logger.js";
import { certNodeNames, toServiceError } from "../grpc-service.js";
import type { LeaseStore } from "../store/lease-store.js";
import type { NodeCa } from "./ca.js";
import type { Clock, JoinTokenRecord, JoinTokens } from "./join-tokens.js";

const MAX_CSR_BYTES = 16 * 1024;

export interface IdentityServiceDeps {
  readonly ca: NodeCa;
  readonly tokens: JoinTokens;
  readonly store: Pick<LeaseStore, "getLeaseByNode">;
  readonly log: Logger;
  readonly validityMs: number;
  readonly clock?: Clock;
}

/** Parses and checks a CSR; INVALID_ARGUMENT naming the problem. */
export async function checkCsr(pem: string, nodeName: string): Promise<x509.PublicKey> {
  const fix = "send a PKCS#10 request (PEM) for CN=<node_name> signed by its own ECDSA P-256/P-384 or RSA (2048+ bit) key";
  if (!pem) throw invalid("csr_pem", "is empty", fix);
  if (pem.length > MAX_CSR_BYTES) throw invalid("csr_pem", `is ${pem.length} bytes, more than ${MAX_CSR_BYTES}`, fix);
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(pem);
  } catch (err) {
    throw invalid("csr_pem", `does not parse (${errorMessage(err).slice(0, 200)})`, fix);
  }
  let signed = false;
  try {
    signed = await csr.verify();
  } catch { /* an unsupported algorithm is a bad signature too */ }
  if (!signed) throw invalid("csr_pem", "its signature does not verify with its own public key", fix);
  const cns = csr.subjectName.getField("CN");
  if (cns.length !== 1 || cns[0] !== nodeName) {
    throw invalid("csr_pem", `its subject is ${JSON.stringify(csr.subject)}, not CN=${nodeName}`, "the certificate request must name the node it is for");
  }
  const key = createPublicKey({ key: Buffer.from(csr.publicKey.rawData), format: "der", type: "spki" });
  const curve = key.asymmetricKeyDetails?.namedCurve;
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  const sane = (key.asymmetricKeyType === "ec" && (curve === "prime256v1" || curve === "secp384r1"))
    || (key.asymmetricKeyType === "rsa" && bits >= 2048 && bits <= 8192);
  if (!sane) throw invalid("csr_pem", `its key (${key.asymmetricKeyType}${curve ? ` ${curve}` : ""}${bits ? ` ${bits} bit` : ""}) is not accepted`, fix);
  return csr.publicKey;
}

/** The service definition with tolerant decoding: a garbled request is INVALID_ARGUMENT, not INTERNAL. */
export const identityServiceDefinition = {
  issueCertificate: {
    ...NodeIdentityServiceService.issueCertificate,
    requestDeserialize: (b: Buffer): IssueCertificateRequest => {
      try {
        return NodeIdentityServiceService.issueCertificate.requestDeserialize(b);
      } catch {
        return { nodeName: "", csrPem: "", joinToken: "", undecodable: true } as IssueCertificateRequest;
      }
    },
  },
} as unknown as typeof NodeIdentityServiceService;

export function createIdentityService(deps: IdentityServiceDeps): NodeIdentityServiceServer {
  const { ca, tokens, log } = deps;
  const clock = deps.clock ?? Date;

  const issue = async (call: grpc.ServerUnaryCall<IssueCertificateRequest, IssueCertificateResponse>): Promise<IssueCertificateResponse> => {
    const r = call.request;
    if ((r as { undecodable?: boolean }).undecodable) throw invalid("request", "cannot be decoded", "send a valid weft.v1.IssueCertificateRequest");
    validateNodeName(r.nodeName);
    const certNames = certNodeNames(call) ?? [];
    const ownCert = certNames.includes(r.nodeName);
    // A node's own verified certificate is the stronger credential: with it this is a renewal, and no token is spent.
    let token: JoinTokenRecord | undefined;
    if (!ownCert) {
      if (!r.joinToken) {
        throw new WeftError("PERMISSION_DENIED", certNames.length
          ? `renewing needs a certificate for node ${JSON.stringify(r.nodeName)}; this one is for ${certNames.join(", ")}`
          : `no join token and no verified client certificate for node ${JSON.stringify(r.nodeName)}; send a join token (POST /v1/join-tokens makes one), or renew with the node's current certificate before it expires`);
      }
      token = await tokens.check(r.joinToken);
    }
    const via = token ? `join token ${token.id}` : "renewal";
    const publicKey = await checkCsr(r.csrPem, r.nodeName);
    if (token) {
      const lease = await deps.store.getLeaseByNode(r.nodeName);
      const now = clock.now();
      if (lease && (lease.expiresAt === 0 || lease.expiresAt > now)) {
        throw new WeftError("PERMISSION_DENIED", `node ${JSON.stringify(r.nodeName)} is held by a live node (lease ${lease.subnet}${lease.expiresAt ? ` until ${new Date(lease.expiresAt).toISOString()}` : ""}); a join token cannot take over a live node's name: pick another --node-name, or revoke that lease (DELETE /v1/leases/${lease.subnet.replace("/", "-")}) if the node is gone`);
      }
      await tokens.spend(token);
    }
    const cert = await ca.sign(r.nodeName, publicKey, clock.now(), deps.validityMs);
    log.info({ nodeId: r.nodeName, serial: cert.serial, notAfter: cert.notAfter.toISOString(), via }, "issued node certificate");
    return { certificatePem: cert.pem, caPem: ca.certPem, notAfter: cert.notAfter };
  };

  return {
    issueCertificate: (call, callback) => {
      issue(call).then((res) => callback(null, res), (err) => {
        if (err instanceof WeftError && err.code !== "INTERNAL") {
          log.info({ nodeId: call.request.nodeName.slice(0, 80), err: err.message }, "refused certificate request");
        }
        callback(toServiceError(err, log) as grpc.ServiceError);
      });
    },
  };
}
