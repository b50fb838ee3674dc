// The WireGuard peers of our device as a kernel table for the reconciler: the
// device is weft's, so every peer on it is ours, and one no lease backs is
// removed (Flannel and k3s pile up thousands of stale peers after key changes).
//
// Puts and removes issued in the same tick go to the device as one request
// (the reconciler keeps up to 64 in flight), so a snapshot of 5,000 peers is
// about 80 requests, not 5,000; if a batch fails, its operations are retried
// one by one so the failure lands on the right peer.
//
// A peer that is new on the device is told to shake hands at once: it is put
// with a 1 s keepalive (a keepalive going from off to on is sent immediately,
// and with no session it starts a handshake), then with its configured one.
// So a tunnel is up before the first packet needs it, and after a peer's key
// rotation the handshake with its new key does not wait for a retry timer.
import type { KernelTable } from "../dataplane/dataplane.js";
import { wgPeerKey, type WgControl, type WgDeviceStatus, type WgPeerConfig, type WgPeerOp } from "./control.js";

interface Batch {
  readonly ops: WgPeerOp[][];
  readonly settle: Array<{ resolve: () => void; reject: (e: unknown) => void }>;
}

export class WgPeerTable implements KernelTable<WgPeerConfig> {
  readonly kind = "wg_peer" as const;
  private batch: Batch | undefined;
  /** What the device had at the last list(): peers new since then get a handshake kick. */
  private known: ReadonlySet<string> = new Set();
  /** The device as last listed (handshakes, traffic), for /v1/peers. */
  last: WgDeviceStatus | undefined;

  constructor(private readonly control: () => WgControl) {}

  async list(): Promise<WgPeerConfig[]> {
    const status = await this.control().get();
    this.last = status;
    this.known = new Set(status.peers.map((p) => p.publicKey));
    return status.peers.map(({ publicKey, endpoint, allowedIPs, keepalive, presharedKey }) =>
      ({ publicKey, endpoint, allowedIPs, keepalive, ...(presharedKey ? { presharedKey } : {}) }));
  }

  id(p: WgPeerConfig): string {
    return p.publicKey;
  }

  key(p: WgPeerConfig): string {
    return wgPeerKey(p);
  }

  put(p: WgPeerConfig): Promise<void> {
    const ops: WgPeerOp[] = this.known.has(p.publicKey) || p.keepalive === 1
      ? [{ op: "put", peer: p }]
      : [{ op: "put", peer: { ...p, keepalive: 1 } }, { op: "put", peer: p }];
    return this.enqueue(ops);
  }

  remove(p: WgPeerConfig): Promise<void> {
    return this.enqueue([{ op: "remove", publicKey: p.publicKey }]);
  }

  private enqueue(ops: WgPeerOp[]): Promise<void> {
    if (!this.batch) {
      const b: Batch = { ops: [], settle: [] };
      this.batch = b;
      setImmediate(() => {
        if (this.batch === b) this.batch = undefined;
        void this.flush(b);
      });
    }
    const b = this.batch;
    return new Promise<void>((resolve, reject) => {
      b.ops.push(ops);
      b.settle.push({ resolve, reject });
    });
  }

  private async flush(b: Batch): Promise<void> {
    let control: WgControl;
    try {
      control = this.control();
      await control.set({ peers: b.ops.flat() });
      for (const s of b.settle) s.resolve();
    } catch (err) {
      if (b.ops.length === 1 || !control!) return b.settle.forEach((s) => s.reject(err));
      await Promise.all(b.ops.map((ops, i) => control.set({ peers: ops }).then(b.settle[i]!.resolve, b.settle[i]!.reject)));
    }
  }
}
