// Node identity wiring for server.ts: the CA, the token store beside the
// leases, the NodeIdentityService and the gRPC port's TLS credentials.
import * as grpc from "@grpc/grpc-js";
import { WeftError } from "../../../lib/src/errors.js";
import type { Logger } from "../../../lib/src/logger.js";
import type { ServerConfig } from "../config.js";
import { EtcdLeaseStore } from "../store/etcd-lease-store.js";
import type { LeaseStore } from "../store/lease-store.js";
import { SqliteLeaseStore } from "../store/sqlite-lease-store.js";
import { NodeCa } from "./ca.js";
import { EtcdJoinTokenStore } from "./etcd-join-token-store.js";
import { createIdentityService, identityServiceDefinition } from "./identity-service.js";
import { JoinTokens, type Clock, type JoinTokenStore } from "./join-tokens.js";
import { SqliteJoinTokenStore } from "./sqlite-join-token-store.js";

/**
 * TLS that asks every client for a certificate but lets one without a
 * certificate in: a node that is joining has none yet. Node rejects a
 * certificate that does not verify against `trusted` only when
 * rejectUnauthorized is set, so that is off too; such a connection has no
 * verified identity (grpc-js reports none), and every LeaseService call then
 * refuses it (grpc-service.ts identify).
 */
class RequestClientCertCredentials extends grpc.ServerCredentials {
  constructor(trusted: Buffer, cert: Buffer, key: Buffer) {
    super({ requestCert: true, rejectUnauthorized: false }, { ca: trusted, cert: [cert], key: [key] });
  }

  override _equals(other: grpc.ServerCredentials): boolean {
    return other === this;
  }
}

export interface NodeIdentity {
  readonly ca: NodeCa;
  readonly tokens: JoinTokens;
  readonly credentials: grpc.ServerCredentials;
  addTo(server: grpc.Server): void;
}

function tokenStoreFor(store: LeaseStore): JoinTokenStore {
  if (store instanceof SqliteLeaseStore) return new SqliteJoinTokenStore(store.database);
  if (store instanceof EtcdLeaseStore) return new EtcdJoinTokenStore(store.client, store.prefix);
  throw new WeftError("CONFIG_INVALID", "join tokens need the SQLite or etcd lease store");
}

/** undefined without TLS: there is no client identity to give. */
export async function setupNodeIdentity(cfg: ServerConfig, store: LeaseStore, log: Logger, clock?: Clock): Promise<NodeIdentity | undefined> {
  if (!cfg.tls) return undefined;
  const id = cfg.identity;
  const ca = await NodeCa.loadOrCreate({ caCert: id.caCert, caKey: id.caKey, stateDir: id.stateDir, log });
  if (store instanceof EtcdLeaseStore && !id.caCert) {
    log.warn({ caCert: ca.source }, "node CA from --state-dir with an etcd store: every lease server must use the same CA (copy ca.crt and ca.key, or pass --ca-cert/--ca-key), or nodes joined through one are refused by the others");
  }
  const tokens = new JoinTokens(tokenStoreFor(store), clock);
  // Hand-made node certificates (--tls-client-ca) keep working beside the ones this CA issues.
  const trusted = Buffer.concat([Buffer.from(ca.certPem), ...(cfg.tls.clientCa ? [Buffer.from("\n"), cfg.tls.clientCa] : [])]);
  const service = createIdentityService({ ca, tokens, store, log: log.child({ component: "identity" }), validityMs: id.nodeCertValidityMs, clock });
  return {
    ca, tokens,
    credentials: new RequestClientCertCredentials(trusted, cfg.tls.cert, cfg.tls.key),
    addTo: (server) => server.addService(identityServiceDefinition, service),
  };
}
