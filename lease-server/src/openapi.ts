// The lease server's OpenAPI document, generated from the fastify route
// schemas (no port is opened). `npm run openapi` writes it to api-docs/.
import { Writable } from "node:stream";
import { createLogger } from "../../lib/src/logger.js";
import { parseNetworkConfig } from "../../lib/src/net-config.js";
import { buildHttpApi } from "./http-api.js";
import { LeaseManager } from "./lease-manager.js";
import { createServerMetrics } from "./metrics.js";
import { SqliteLeaseStore } from "./store/sqlite-lease-store.js";
import { Fleet } from "./fleet.js";

export async function leaseServerOpenApi(): Promise<string> {
  const log = createLogger("openapi", "silent", new Writable({ write: (_c, _e, cb) => cb() }));
  const store = new SqliteLeaseStore(":memory:");
  const manager = new LeaseManager({ store, network: parseNetworkConfig('{"Network":"10.244.0.0/16"}'), ttlMs: 86_400_000, log });
  const fleet = new Fleet({ revision: () => 0, leases: () => [] });
  const app = await buildHttpApi({ manager, store, metrics: createServerMetrics(), log, ready: () => true, fleet });
  await app.ready();
  const doc = JSON.stringify(app.swagger(), null, 2) + "\n";
  await app.close();
  fleet.close();
  await store.close();
  return doc;
}
