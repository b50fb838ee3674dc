// Backends by network-config type. The agent looks its backend up here and
// never names a backend class; a new backend is one entry (the Record makes a
// type without one a compile error). Only the configured backend's module is
// loaded: an agent holds one backend for its life, and the others' code would
// be resident memory for nothing (WireGuard's brings its UAPI, generic netlink
// and key handling).
import type { BackendType } from "../../../lib/src/net-config.js";
import type { Backend, BackendDeps } from "./backend.js";

const BACKENDS: Record<BackendType, (deps: BackendDeps) => Promise<Backend>> = {
  vxlan: async (deps) => new (await import("./vxlan.js")).VxlanBackend(deps),
  "host-gw": async (deps) => new (await import("./host-gw.js")).HostGwBackend(deps),
  wireguard: async (deps) => new (await import("./wireguard.js")).WireguardBackend(deps),
};

export function createBackend(deps: BackendDeps): Promise<Backend> {
  return BACKENDS[deps.network.backend.type](deps);
}
