// Writes api-docs/lease-server.openapi.json from the route schemas.
import { writeFileSync } from "node:fs";
import { leaseServerOpenApi } from "../lease-server/src/openapi.js";

const out = new URL("../../api-docs/lease-server.openapi.json", import.meta.url);
writeFileSync(out, await leaseServerOpenApi());
console.log(`wrote ${out.pathname}`);
