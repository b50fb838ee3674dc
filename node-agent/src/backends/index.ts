// Backends by network-config type. The agent looks its backend up here and
// never names a backend class; a new backend is one entry.
import { WeftError } from "../../../lib/src/errors.js";
import { BACKEND_TYPES, type BackendType } from "../../../lib/src/net-config.js";
import type { Backend, BackendDeps } from "./backend.js";
import { HostGwBackend } from "./host-gw.js";
import { VxlanBackend } from "./vxlan.js";

const BACKENDS: Partial<Record<BackendType, (deps: BackendDeps) => Backend>> = {
  vxlan: (deps) => new VxlanBackend(deps),
  "host-gw": (deps) => new HostGwBackend(deps),
};

export function createBackend(deps: BackendDeps): Backend {
  const type = deps.network.backend.type;
  const make = BACKENDS[type];
  if (!make) {
    const have = BACKEND_TYPES.filter((t) => BACKENDS[t]).join(", ");
    throw new WeftError("CONFIG_INVALID", `backend ${type} is not supported by this agent yet; the lease server's network config must use one of: ${have}`);
  }
  return make(deps);
}
