// A REST API over a real SQLite store (in memory) for the HTTP tests; listen() gives a real socket.
import { parseNetworkConfig } from "../../lib/src/net-config.js";
import { buildHttpApi, type HttpApiDeps } from "../src/http-api.js";
import { LeaseManager } from "../src/lease-manager.js";
import { createServerMetrics } from "../src/metrics.js";
import { SqliteLeaseStore } from "../src/store/sqlite-lease-store.js";
import type { LeaseStore } from "../src/store/lease-store.js";
import { memoryLogger } from "./helpers.js";
import { Fleet } from "../src/fleet.js";

export async function httpApi(over: Partial<Omit<HttpApiDeps, "manager" | "metrics" | "log">> & { store?: LeaseStore } = {}) {
  const { log, lines } = memoryLogger();
  const store = over.store ?? new SqliteLeaseStore(":memory:");
  const manager = new LeaseManager({ store, network: parseNetworkConfig('{"Network":"10.244.0.0/16"}'), ttlMs: 60_000, log });
  const metrics = createServerMetrics();
  const fleet = over.fleet ?? new Fleet({ revision: () => 0, leases: () => [] });
  const app = await buildHttpApi({ ready: () => true, ...over, store, manager, metrics, log, fleet });
  return {
    app, store, manager, metrics, lines,
    /** Starts a real listener on 127.0.0.1; returns its base URL. */
    async listen(): Promise<string> {
      await app.listen({ host: "127.0.0.1", port: 0 });
      const { port } = app.server.address() as { port: number };
      return `${over.https ? "https" : "http"}://127.0.0.1:${port}`;
    },
    async close() {
      await app.close();
      fleet.close();
      await store.close();
    },
    async rejections(limit: string): Promise<number> {
      const m = (await metrics.limitRejections.get()).values.find((v) => v.labels.limit === limit);
      return m?.value ?? 0;
    },
  };
}

export const TOKEN = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
