// An in-memory WireGuard device behind the WgControl seam: what the kernel
// (or wireguard-go) would keep, with a log of every set and injectable failures.
import { WeftError } from "../../../lib/src/errors.js";
import type { WgControl, WgDeviceSet, WgDeviceStatus, WgPeerStatus } from "../../src/wireguard/control.js";
import { publicKeyOf } from "../../src/wireguard/keys.js";

export class FakeWgControl implements WgControl {
  readonly mode: "kernel" | "userspace";
  privateKey: string | undefined;
  listenPort = 0;
  readonly peers = new Map<string, WgPeerStatus>();
  readonly sets: WgDeviceSet[] = [];
  /** Called before each set is applied (e.g. to fail it). */
  beforeSet: ((s: WgDeviceSet) => void) | undefined;

  constructor(mode: "kernel" | "userspace" = "kernel") {
    this.mode = mode;
  }

  async get(): Promise<WgDeviceStatus> {
    return { publicKey: this.privateKey && publicKeyOf(this.privateKey), listenPort: this.listenPort, peers: [...this.peers.values()] };
  }

  async set(s: WgDeviceSet): Promise<void> {
    this.beforeSet?.(s);
    this.sets.push(s);
    if (s.privateKey) this.privateKey = s.privateKey;
    if (s.listenPort !== undefined) this.listenPort = s.listenPort;
    for (const op of s.peers ?? []) {
      if (op.op === "remove") {
        this.peers.delete(op.publicKey);
        continue;
      }
      // As WireGuard does: an allowed IP belongs to one peer; giving it to another takes it away.
      for (const [k, p] of this.peers) {
        if (k !== op.peer.publicKey) this.peers.set(k, { ...p, allowedIPs: p.allowedIPs.filter((a) => !op.peer.allowedIPs.includes(a)) });
      }
      const old = this.peers.get(op.peer.publicKey);
      // Every put carries the whole config: a pre-shared key left out is cleared.
      this.peers.set(op.peer.publicKey, { lastHandshakeMs: old?.lastHandshakeMs ?? 0, rxBytes: old?.rxBytes ?? 0, txBytes: old?.txBytes ?? 0, ...op.peer });
    }
  }

  /** Makes every set fail, as a refusing kernel would. */
  failSets(why = "injected failure"): void {
    this.beforeSet = () => { throw new WeftError("DATAPLANE_OP_FAILED", `wireguard: set: ${why}`); };
  }

  close(): void {}
}
