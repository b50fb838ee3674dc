import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { leaseServerOpenApi } from "../src/openapi.js";

describe("api-docs", () => {
  it("api-docs/lease-server.openapi.json matches the route schemas (run npm run openapi after changing a route)", async () => {
    const doc = await leaseServerOpenApi();
    const committed = readFileSync(join(import.meta.dirname, "../../api-docs/lease-server.openapi.json"), "utf8");
    expect(committed).toBe(doc);
    const paths = Object.keys(JSON.parse(doc).paths);
    expect(paths).toEqual(expect.arrayContaining(["/healthz", "/readyz", "/v1/leases", "/v1/leases/{subnet}", "/v1/network", "/v1/reservations", "/v1/reservations/{subnet}", "/metrics"]));
  });
});
