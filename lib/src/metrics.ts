import { collectDefaultMetrics, type Registry } from "prom-client";

/**
 * Node's default process metrics, minus the three gauges prom-client names
 * with a "_total" suffix: promtool's linter rejects those, and dashboards
 * scrape /metrics through promtool-clean pipelines.
 */
export function registerProcessMetrics(registry: Registry, prefix: string): void {
  collectDefaultMetrics({ register: registry, prefix });
  for (const name of ["nodejs_active_handles_total", "nodejs_active_requests_total", "nodejs_active_resources_total"]) {
    registry.removeSingleMetric(prefix + name);
  }
}
