// The WireGuard seam. weft configures a WireGuard device through one small
// interface, whether the kernel has WireGuard (generic netlink, kernel-control.ts)
// or the device is wireguard-go's (its UAPI socket, uapi.ts). Everything above
// it (the backend, its peer table, key rotation) is one code path.
//
// Keys are base64, as `wg` prints them; each implementation converts.

export interface WgPeerConfig {
  /** base64 Curve25519 public key: the peer's identity on the device. */
  readonly publicKey: string;
  /** "198.18.0.2:51820". */
  readonly endpoint: string;
  /** IPv4 CIDRs in canonical form, sorted. */
  readonly allowedIPs: readonly string[];
  /** Persistent keepalive in seconds; 0 = off. */
  readonly keepalive: number;
  /** base64 pre-shared key; undefined = none. */
  readonly presharedKey?: string;
}

export interface WgPeerStatus extends WgPeerConfig {
  /** Unix ms of the last completed handshake; 0 = never. */
  readonly lastHandshakeMs: number;
  readonly rxBytes: number;
  readonly txBytes: number;
}

export interface WgDeviceStatus {
  /** Public key of the device's private key; undefined while it has none. */
  readonly publicKey?: string;
  readonly listenPort: number;
  readonly peers: readonly WgPeerStatus[];
}

export type WgPeerOp =
  /** Creates or updates the peer; its allowed IPs are replaced, not added to. */
  | { readonly op: "put"; readonly peer: WgPeerConfig }
  | { readonly op: "remove"; readonly publicKey: string };

export interface WgDeviceSet {
  /** base64 private key. */
  readonly privateKey?: string;
  readonly listenPort?: number;
  /** Applied in order; other peers are left alone. */
  readonly peers?: readonly WgPeerOp[];
}

/** One WireGuard device, by name. Errors are WeftErrors (DATAPLANE_OP_FAILED with the device's answer). */
export interface WgControl {
  readonly mode: "kernel" | "userspace";
  get(): Promise<WgDeviceStatus>;
  set(s: WgDeviceSet): Promise<void>;
  close(): void;
}

/** Identity and full value of a peer's configuration, for the reconciler. */
export const wgPeerKey = (p: WgPeerConfig): string =>
  `${p.publicKey}|${p.endpoint}|${p.allowedIPs.join(",")}|${p.keepalive}|${p.presharedKey ?? ""}`;
