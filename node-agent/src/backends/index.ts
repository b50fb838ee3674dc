// Backends by network-config type. The agent looks its backend up here and
// never names a backend class; a new backend is one entry (the Record makes a
// type without one a compile error).
import type { BackendType } from "../../../lib/src/net-config.js";
import type { Backend, BackendDeps } from "./backend.js";
import { HostGwBackend } from "./host-gw.js";
import { VxlanBackend } from "./vxlan.js";
import { WireguardBackend } from "./wireguard.js";

const BACKENDS: Record<BackendType, (deps: BackendDeps) => Backend> = {
  vxlan: (deps) => new VxlanBackend(deps),
  "host-gw": (deps) => new HostGwBackend(deps),
  wireguard: (deps) => new WireguardBackend(deps),
};

export function createBackend(deps: BackendDeps): Backend {
  return BACKENDS[deps.network.backend.type](deps);
}
