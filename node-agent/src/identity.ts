// The node's client certificate, obtained as kubelet's TLS bootstrap does:
// with a join token the agent sends a certificate request for its node name
// (over TLS that checks the server with --tls-ca, with no client certificate
// yet), gets back a certificate signed by the lease server's CA, and keeps it
// in the state dir. It renews at 2/3 of the lifetime with the current
// certificate and no token, each time with a new key. A refusal
// (PERMISSION_DENIED and the like) is final and carries the server's reason;
// an unreachable server is retried, on the next --server address first.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { X509Certificate, webcrypto } from "node:crypto";
import { readFileSync } from "node:fs";
import { credentials as grpcCredentials, Metadata, status, type ChannelCredentials, type ServiceError } from "@grpc/grpc-js";
import { NodeIdentityServiceClient, type IssueCertificateResponse } from "../../gen/weft/v1/lease.js";
import { WeftError, errorMessage, type ErrorCode } from "../../lib/src/errors.js";
import type { Logger } from "../../lib/src/logger.js";
import { backoffDelay, clampTimerMs, sleep } from "./backoff.js";
import { readNodeCertificate, renewAt, writeNodeCertificate, type NodeCertificate } from "./identity-files.js";
import type { TlsFiles } from "./lease-client.js";

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const KEY_ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
/** Retries of a failed renewal back off up to this, so an expiring certificate is still tried often. */
const RENEW_RETRY_MAX_MS = 5 * 60_000;

const RETRYABLE = new Set<number>([status.UNAVAILABLE, status.DEADLINE_EXCEEDED, status.CANCELLED, status.RESOURCE_EXHAUSTED]);
const CODES: Partial<Record<number, ErrorCode>> = {
  [status.PERMISSION_DENIED]: "PERMISSION_DENIED",
  [status.UNAUTHENTICATED]: "PERMISSION_DENIED",
  [status.INVALID_ARGUMENT]: "INVALID_ARGUMENT",
  [status.FAILED_PRECONDITION]: "FAILED_PRECONDITION",
  [status.UNIMPLEMENTED]: "NOT_SUPPORTED",
};

export interface NodeIdentityOptions {
  readonly nodeName: string;
  readonly stateDir: string;
  readonly servers: readonly string[];
  /** --tls-ca: the CA of the lease server's certificate. */
  readonly caFile: string;
  readonly joinToken?: string;
  readonly log: Logger;
  readonly callTimeoutMs?: number;
  readonly now?: () => number;
}

function pem(label: string, der: ArrayBuffer): string {
  return `-----BEGIN ${label}-----\n${Buffer.from(der).toString("base64").replace(/(.{64})/g, "$1\n").replace(/\n?$/, "\n")}-----END ${label}-----\n`;
}

export class NodeIdentity {
  private current?: NodeCertificate;
  private server = 0;
  private readonly now: () => number;

  constructor(private readonly o: NodeIdentityOptions) {
    this.now = o.now ?? Date.now;
  }

  /** For LeaseClient: the server CA and this node's certificate files. Valid after ensure(). */
  get tls(): TlsFiles {
    if (!this.current) throw new Error("NodeIdentity.ensure() has not run");
    return { ca: this.o.caFile, cert: this.current.certPath, key: this.current.keyPath };
  }

  get certificate(): NodeCertificate | undefined {
    return this.current;
  }

  /**
   * A usable certificate: the one in the state dir (renewed first when past its renewal time), or one
   * obtained with the join token. Retries while servers are unreachable, until `signal` aborts.
   */
  async ensure(signal: AbortSignal): Promise<void> {
    const found = readNodeCertificate(this.o.stateDir, this.o.nodeName, this.now());
    if (found.ok) {
      this.current = found.cert;
      this.o.log.info({ cert: found.cert.certPath, notAfter: new Date(found.cert.notAfter).toISOString() }, "using the node certificate from the state dir");
      if (this.now() >= renewAt(found.cert)) {
        try {
          await this.issue(false, signal, 1);
        } catch (err) {
          // The certificate still works; the renewal loop keeps trying.
          this.o.log.warn({ err: errorMessage(err) }, "node certificate is due for renewal and renewing failed; using it meanwhile");
        }
      }
      return;
    }
    if (!this.o.joinToken) {
      throw new WeftError("CONFIG_INVALID", `no usable node certificate (${found.reason}) and no join token to get one; put a new token (POST /v1/join-tokens) into the --join-token-file`);
    }
    this.o.log.info({ reason: found.reason, token: this.o.joinToken.slice(0, 6) }, "joining with the join token");
    await this.issue(true, signal);
  }

  /** Renews at 2/3 of each certificate's lifetime until `signal` aborts; `onRenewed` switches connections to the new one. */
  async runRenewal(signal: AbortSignal, onRenewed: () => void): Promise<void> {
    let failures = 0;
    while (!signal.aborted) {
      const cur = this.current!;
      const wait = failures ? Math.min(backoffDelay(failures, 5000, RENEW_RETRY_MAX_MS), Math.max(1000, cur.notAfter - this.now())) : renewAt(cur) - this.now();
      // Timers stop at 24.8 days: a longer wait is slept in parts.
      await sleep(clampTimerMs(wait), signal);
      if (signal.aborted) return;
      if (!failures && this.now() < renewAt(cur)) continue;
      const expired = this.now() >= cur.notAfter;
      try {
        // An expired certificate cannot renew itself; the token (if it still has uses) is the way back.
        await this.issue(expired && !!this.o.joinToken, signal, 1);
        failures = 0;
        onRenewed();
      } catch (err) {
        if (signal.aborted) return;
        failures++;
        this.o.log[expired ? "error" : "warn"]({ err: errorMessage(err), notAfter: new Date(cur.notAfter).toISOString(), failures },
          expired ? "node certificate expired and could not be renewed; the lease server will refuse this node until it is (a new join token helps)" : "node certificate renewal failed; will retry");
      }
    }
  }

  /**
   * One IssueCertificate exchange: a new key, a CSR, the call (with the token, or with the current
   * certificate), the files written. `rounds` bounds the passes over the servers while they are unreachable.
   */
  private async issue(withToken: boolean, signal: AbortSignal, rounds = Infinity): Promise<void> {
    const keys = await webcrypto.subtle.generateKey(KEY_ALG, true, ["sign", "verify"]) as CryptoKeyPair;
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({
      name: new x509.Name([{ CN: [this.o.nodeName] }]), keys, signingAlgorithm: KEY_ALG,
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: "dns", value: this.o.nodeName }])],
    });
    const req = { nodeName: this.o.nodeName, csrPem: csr.toString("pem"), joinToken: withToken ? this.o.joinToken ?? "" : "" };
    const creds = this.credentials(withToken);
    const res = await this.callAnyServer(creds, req, signal, rounds);
    const certPem = res.certificatePem;
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(certPem);
    } catch (err) {
      throw new WeftError("INTERNAL", `the lease server sent a certificate that does not parse (${errorMessage(err)})`);
    }
    const spki = Buffer.from(await webcrypto.subtle.exportKey("spki", keys.publicKey));
    if (!cert.publicKey.export({ type: "spki", format: "der" }).equals(spki) || !cert.checkHost(this.o.nodeName, { subject: "always", wildcards: false })) {
      throw new WeftError("INTERNAL", `the lease server sent a certificate for another key or name (${cert.subject.replace(/\n/g, ", ")})`);
    }
    const keyPem = pem("PRIVATE KEY", await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
    await writeNodeCertificate(this.o.stateDir, keyPem, certPem.endsWith("\n") ? certPem : `${certPem}\n`);
    const found = readNodeCertificate(this.o.stateDir, this.o.nodeName, this.now());
    if (!found.ok) throw new WeftError("INTERNAL", `the new node certificate is not usable: ${found.reason}`);
    this.current = found.cert;
    this.o.log.info({ cert: found.cert.certPath, notAfter: new Date(found.cert.notAfter).toISOString(), via: withToken ? "join token" : "renewal" }, "node certificate issued");
  }

  private credentials(bootstrap: boolean): ChannelCredentials {
    const ca = readFileSync(this.o.caFile);
    if (bootstrap || !this.current) return grpcCredentials.createSsl(ca);
    return grpcCredentials.createSsl(ca, readFileSync(this.current.keyPath), readFileSync(this.current.certPath));
  }

  private async callAnyServer(creds: ChannelCredentials, req: { nodeName: string; csrPem: string; joinToken: string }, signal: AbortSignal, rounds: number): Promise<IssueCertificateResponse> {
    const servers = this.o.servers;
    for (let attempt = 0; ; attempt++) {
      const server = servers[this.server % servers.length]!;
      try {
        return await this.call(server, creds, req);
      } catch (err) {
        const e = err as ServiceError;
        const detail = e.details || errorMessage(err);
        if (!RETRYABLE.has(e.code)) {
          throw new WeftError(CODES[e.code] ?? "INTERNAL", `lease server ${server} refused the node certificate: ${detail}`, { cause: err });
        }
        this.server++;
        if (attempt + 1 >= rounds * servers.length) throw new WeftError("SERVER_UNAVAILABLE", `cannot reach a lease server for the node certificate (${server}: ${detail})`, { cause: err });
        const delay = backoffDelay(Math.floor(attempt / servers.length));
        this.o.log.warn({ server, err: detail, retryInMs: delay }, "lease server unreachable for the node certificate; retrying");
        await sleep(delay, signal);
        if (signal.aborted) throw new WeftError("SERVER_UNAVAILABLE", "stopped while waiting for a lease server");
      }
    }
  }

  private call(server: string, creds: ChannelCredentials, req: { nodeName: string; csrPem: string; joinToken: string }): Promise<IssueCertificateResponse> {
    const client = new NodeIdentityServiceClient(server, creds, { "grpc.initial_reconnect_backoff_ms": 500, "grpc.max_reconnect_backoff_ms": 5000 });
    return new Promise<IssueCertificateResponse>((resolve, reject) => {
      client.issueCertificate(req, new Metadata(), { deadline: Date.now() + (this.o.callTimeoutMs ?? 10_000) }, (err, res) => (err ? reject(err) : resolve(res)));
    }).finally(() => client.close());
  }
}
