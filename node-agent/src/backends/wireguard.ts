// WireGuard backend: an encrypted overlay, Flannel's `wireguard` type and
// better. One device (--wireguard-device, default weft-wg), in the kernel when
// it has WireGuard, else run by wireguard-go (started, adopted after an agent
// restart and restarted when it dies); both are driven through one WgControl.
// The device has our subnet's network address /32 and the route for the whole
// cluster network: traffic to a node we have no peer for is dropped by the
// device instead of leaking in plaintext to the default route. Each remote
// node is one WireGuard peer: its lease's public key, endpoint = its public IP
// and listen port, AllowedIPs = its subnet, our pre-shared key if one is set.
//
// Unlike Flannel, the device survives an agent restart (no dropped packets),
// the private key survives a reboot (state dir, not tmpfs), peers no lease
// backs are removed, and the key can be rotated (rotateKey): the device
// switches to the new key first and publishes it second, so each peer, when it
// learns the key, at once starts a handshake that this node can answer.
// Packets this node sends in between wait in the device's queue instead of
// being lost. If the key cannot be published, the old one is put back.
import { formatCidr, parseCidr, type Ipv4Net } from "../../../lib/src/cidr.js";
import { WeftError, errorMessage, isWeftError } from "../../../lib/src/errors.js";
import type { BackendAttrs, Lease } from "../../../lib/src/lease.js";
import type { WireguardBackendConfig } from "../../../lib/src/net-config.js";
import type { KernelChange, Link, Route } from "../dataplane/dataplane.js";
import type { WgControl, WgDeviceStatus, WgPeerConfig } from "../wireguard/control.js";
import { KernelWgControl } from "../wireguard/kernel-control.js";
import { KeyStore } from "../wireguard/key-store.js";
import { isKey, type KeyPair } from "../wireguard/keys.js";
import { UapiControl } from "../wireguard/uapi.js";
import { WgPeerTable } from "../wireguard/wg-peers.js";
import { WireguardGo } from "../wireguard/wireguard-go.js";
import { NODE_ENTRY, desiredEntry, type Backend, type BackendDeps, type DesiredEntry, type DesiredState, type KeyRotation, type LocalNode, type PeerHealth, type WireguardOptions } from "./backend.js";
import { ensureOwnedLink, ensureSoleAddress, isOwned, ownerAlias, touchesDevice } from "./owned-devices.js";
import { screenPeers } from "./screen-peers.js";

/** Outer IPv6 header (40, the worst case) + UDP (8) + WireGuard (32): Flannel's 80. */
export const WIREGUARD_OVERHEAD = 80;
/** How long a programmed peer may go without its first handshake before /v1/peers calls it a problem (wireguard-go retries every 5 s). */
const HANDSHAKE_GRACE_MS = 15_000;
/** The previous key is forgotten at the latest this long after a rotation, even if some peer never shook hands again. */
const PREVIOUS_KEY_MAX_MS = 10 * 60_000;

export class WireguardBackend implements Backend {
  readonly type = "wireguard" as const;
  readonly deviceName: string;
  readonly devices: readonly string[];
  private readonly config: WireguardBackendConfig;
  private readonly options: WireguardOptions;
  private readonly store: KeyStore;
  private readonly peerTable: WgPeerTable;
  private mode: "kernel" | "userspace" | undefined;
  private control: WgControl | undefined;
  private wgGo: WireguardGo | undefined;
  private keys: KeyPair | undefined;
  private link: Link | undefined;
  private local: LocalNode | undefined;
  private ownSubnet: Ipv4Net | undefined;
  /** When each peer key was first wanted on the device: a handshake is due within the grace period. */
  private wantedSince = new Map<string, number>();
  /** Set while the previous key is kept after a rotation. */
  private rotatedAt: number | undefined;
  private deviceOps: Promise<unknown> = Promise.resolve();

  constructor(private readonly deps: BackendDeps) {
    this.config = deps.network.backend as WireguardBackendConfig;
    this.options = deps.wireguard ?? { device: "weft-wg", stateDir: "/var/lib/weft" };
    this.deviceName = this.options.device;
    this.devices = [this.deviceName];
    this.store = new KeyStore(this.options.stateDir, this.deviceName);
    this.peerTable = new WgPeerTable(() => this.wg());
  }

  private wg(): WgControl {
    if (!this.control) throw new WeftError("INTERNAL", "wireguard backend used before init()");
    return this.control;
  }

  private get deviceIndex(): number {
    if (!this.link) throw new WeftError("INTERNAL", "wireguard backend used before init()");
    return this.link.index;
  }

  mtu(): number {
    return (this.config.mtu || this.local?.iface.mtu || 1500) - WIREGUARD_OVERHEAD;
  }

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.deviceOps.then(fn);
    this.deviceOps = p.catch(() => undefined);
    return p;
  }

  private attrs(): BackendAttrs {
    return { type: "wireguard", publicKey: this.keys!.publicKey, listenPort: this.config.listenPort };
  }

  init(local: LocalNode): Promise<BackendAttrs> {
    return this.serialized(async () => {
      if (this.deviceName === local.iface.name) {
        throw new WeftError("CONFIG_INVALID", `--wireguard-device ${this.deviceName} is the underlay interface itself; pick another device name (default weft-wg)`);
      }
      this.local = local;
      this.keys = await this.store.load();
      if (await this.store.previous()) this.rotatedAt = Date.now();
      const fixed = await this.ensureDevice();
      this.deps.log.info({ device: this.deviceName, mode: this.mode, setup: fixed.length ? fixed : "adopted as it was", publicKey: this.keys.publicKey, listenPort: this.config.listenPort, mtu: this.mtu(), presharedKey: !!this.options.presharedKey }, "wireguard device ready");
      return this.attrs();
    });
  }

  private useMode(mode: "kernel" | "userspace"): WgControl {
    if (this.mode === mode && this.control) return this.control;
    this.control?.close();
    this.mode = mode;
    this.control = this.options.openControl?.(mode, this.deviceName)
      ?? (mode === "kernel" ? new KernelWgControl(this.deviceName) : new UapiControl(this.deviceName));
    this.wgGo = mode === "userspace" ? new WireguardGo({
      device: this.deviceName, control: this.control, logFile: `${this.options.stateDir}/wireguard-go-${this.deviceName}.log`,
      log: this.deps.log,
    }) : undefined;
    return this.control;
  }

  /**
   * Makes the device exist and match its spec (link, key, port); returns what it had to do, for drift
   * counting. The kernel's WireGuard is used when it has one; the choice sticks to an existing device.
   */
  private async ensureDevice(): Promise<string[]> {
    const dp = this.deps.dataplane;
    const fixed: string[] = [];
    const spec = { name: this.deviceName, kind: "wireguard", mtu: this.mtu(), alias: ownerAlias("wireguard") };
    let link = await dp.getLink(this.deviceName);
    if (link && link.kind !== "wireguard" && link.kind !== "tun") {
      throw new WeftError("CONFIG_INVALID", `interface ${this.deviceName} exists and is a ${link.kind ?? "plain"} link, not WireGuard; pick another name with --wireguard-device, or delete that interface if it is a leftover`);
    }
    if (!link && this.mode !== "userspace") {
      try {
        await dp.createLink(spec);
        fixed.push("device");
        this.useMode("kernel");
      } catch (err) {
        if (!isWeftError(err, "NOT_SUPPORTED")) throw err;
        this.useMode("userspace");
      }
      link = await dp.getLink(this.deviceName);
    }
    if (link?.kind === "wireguard" || this.mode === "kernel") {
      const control = this.useMode("kernel");
      const { link: l } = await ensureOwnedLink(dp, spec, { incompatible: () => undefined, flag: "--wireguard-device", ours: () => this.link?.index === link?.index });
      if (l.index !== link?.index) fixed.push("device");
      this.link = l;
      fixed.push(...await this.configure(control));
    } else {
      const control = this.useMode("userspace");
      // One read answers three questions: is wireguard-go running, is an unmarked tun ours (our key, or
      // no key yet: we died right after starting it), and are key and port right. At 5,000 peers a read
      // is a megabyte, and this runs on every resync.
      const have = await control.get().catch(() => undefined);
      const ours = have !== undefined && (have.publicKey === undefined || have.publicKey === this.keys!.publicKey);
      if (link && !isOwned(link) && link.index !== this.link?.index && !ours) {
        throw new WeftError("CONFIG_INVALID", `interface ${this.deviceName} exists but was not created by weft (a tun device without the "weft:" alias); weft will not adopt it. Pick another name with --wireguard-device, or stop whatever runs it`);
      }
      if (!have && await this.wgGo!.ensureRunning() === "started") fixed.push("device");
      link = await dp.getLink(this.deviceName);
      if (!link) {
        throw new WeftError("CONFIG_INVALID", `wireguard-go answers for ${this.deviceName}, but the interface is not in this network namespace: another namespace on this host runs a WireGuard device of that name (wireguard-go's sockets in /var/run/wireguard are shared by all namespaces); give this node another --wireguard-device`);
      }
      // The key first: the device must not come up (and answer peers) with no or a stale key.
      fixed.push(...await this.configure(control, have));
      const change = { ...(link.mtu !== spec.mtu ? { mtu: spec.mtu } : {}), ...(link.alias !== spec.alias ? { alias: spec.alias } : {}) };
      if (Object.keys(change).length) await dp.setLink(link.index, change);
      if (!link.up) await dp.setLink(link.index, { up: true });
      if (change.mtu !== undefined && !fixed.includes("device")) fixed.push("mtu");
      if (!link.up && !fixed.includes("device")) fixed.push("state");
      this.link = (await dp.getLink(this.deviceName)) ?? link;
    }
    return fixed;
  }

  /** Puts our private key and listen port on the device if it has others (`status`: read just before, if so). */
  private async configure(control: WgControl, status?: WgDeviceStatus): Promise<string[]> {
    const have = status ?? await control.get();
    const keyOk = have.publicKey === this.keys!.publicKey;
    const portOk = have.listenPort === this.config.listenPort;
    if (keyOk && portOk) return [];
    try {
      await control.set({ ...(keyOk ? {} : { privateKey: this.keys!.privateKey }), ...(portOk ? {} : { listenPort: this.config.listenPort }) });
    } catch (err) {
      if (portOk) throw err;
      throw new WeftError("DATAPLANE_OP_FAILED", `${errorMessage(err)}; if UDP port ${this.config.listenPort} is taken by another program, free it or set ListenPort in the network config`, { cause: err });
    }
    return [...(keyOk ? [] : ["key"]), ...(portOk ? [] : ["port"])];
  }

  configureSubnet(lease: Lease): Promise<void> {
    const net = parseCidr(lease.subnet);
    if (!net) throw new WeftError("INTERNAL", `lease subnet ${lease.subnet} is not a CIDR`);
    this.ownSubnet = net;
    return this.serialized(async () => { await ensureSoleAddress(this.deps.dataplane, this.deviceIndex, net); });
  }

  repair(): Promise<string[]> {
    return this.serialized(async () => {
      if (!this.local || !this.keys) return [];
      const fixed = await this.ensureDevice();
      if (fixed.length) this.deps.log.warn({ device: this.deviceName, fixed }, "wireguard device drifted; repaired");
      if (this.ownSubnet) fixed.push(...await ensureSoleAddress(this.deps.dataplane, this.deviceIndex, this.ownSubnet));
      await this.forgetPreviousKeyWhenUnused();
      return fixed;
    });
  }

  concerns(c: KernelChange): boolean {
    return touchesDevice(c, this.deviceName, this.link?.index, (l) => !l.up || l.mtu !== this.mtu() || l.alias !== ownerAlias("wireguard"));
  }

  pathTo(): string {
    return "wireguard";
  }

  desired(peers: readonly Lease[]): DesiredState {
    const { usable, rejected } = screenPeers(peers, "wireguard", this.ownSubnet, this.deps.network);
    const entries: DesiredEntry<WgPeerConfig>[] = [];
    // One key on two leases (a cloned state dir) would make the device move the AllowedIPs back and forth: the older lease keeps it.
    const holder = new Map<string, Lease>();
    for (const { lease: p } of [...usable].sort((a, b) => a.lease.revision - b.lease.revision)) {
      if (p.attrs.type !== "wireguard") continue;
      const { publicKey, listenPort } = p.attrs;
      const clash = publicKey === this.keys!.publicKey ? "this node" : holder.get(publicKey)?.nodeName;
      if (!isKey(publicKey)) rejected.set(p.subnet, { reason: "invalid_key", detail: "public key is not a base64 Curve25519 key" });
      else if (clash) rejected.set(p.subnet, { reason: "invalid_key", detail: `public key ${publicKey} is already used by ${clash} (state dir cloned from it?); give this node its own state dir` });
      else {
        holder.set(publicKey, p);
        entries.push(desiredEntry(p.subnet, {
          publicKey, endpoint: `${p.publicIP}:${listenPort || this.config.listenPort}`, allowedIPs: [p.subnet],
          keepalive: this.config.persistentKeepaliveInterval, ...(this.options.presharedKey ? { presharedKey: this.options.presharedKey } : {}),
        }));
      }
    }
    const now = Date.now();
    this.wantedSince = new Map(entries.map((e) => [e.value.publicKey, this.wantedSince.get(e.value.publicKey) ?? now]));
    const route: Route = { dst: formatCidr(this.deps.network.network), oif: this.deviceIndex, onlink: false };
    return {
      stages: [[{ table: this.peerTable, entries }, { table: this.deps.dataplane.routes, entries: [desiredEntry(NODE_ENTRY, route)] }]],
      rejected,
      listEveryPass: true,
    };
  }

  async peerHealth(fresh: boolean): Promise<(peer: Lease) => PeerHealth | undefined> {
    const status: WgDeviceStatus | undefined = fresh ? await this.wg().get() : this.peerTable.last;
    const byKey = new Map(status?.peers.map((p) => [p.publicKey, p]));
    const now = Date.now();
    return (peer) => {
      if (peer.attrs.type !== "wireguard") return undefined;
      const st = byKey.get(peer.attrs.publicKey);
      if (!st) return undefined;
      const since = this.wantedSince.get(st.publicKey) ?? now;
      const details = {
        publicKey: st.publicKey, endpoint: st.endpoint, lastHandshake: st.lastHandshakeMs ? new Date(st.lastHandshakeMs).toISOString() : null,
        rxBytes: st.rxBytes, txBytes: st.txBytes,
      };
      if (st.lastHandshakeMs || now - since < HANDSHAKE_GRACE_MS) return { details };
      const psk = this.options.presharedKey ? "the same pre-shared key (--wireguard-psk-file)" : "no pre-shared key (or the same one)";
      return {
        details,
        problem: `no WireGuard handshake with this peer in the ${Math.round((now - since) / 1000)} s since it was programmed: check that both nodes use ${psk} and that UDP port ${st.endpoint.split(":").pop()} reaches ${st.endpoint}`,
      };
    };
  }

  rotateKey(): Promise<KeyRotation> {
    return this.serialized(async () => {
      const old = this.keys!;
      const next = await this.store.rotate(old);
      const switchedAt = Date.now();
      try {
        await this.wg().set({ privateKey: next.privateKey });
      } catch (err) {
        await this.store.restorePrevious();
        throw err;
      }
      this.keys = next;
      try {
        if (!this.deps.announce) throw new WeftError("INTERNAL", "no way to publish backend attributes");
        await this.deps.announce(this.attrs());
      } catch (err) {
        // The peers still know only the old key: keep using it rather than cut this node off.
        await this.wg().set({ privateKey: old.privateKey });
        await this.store.restorePrevious();
        this.keys = old;
        throw new WeftError(isWeftError(err) ? err.code : "INTERNAL", `key rotation undone, the old key stays in use: the new public key could not be published in the lease (${errorMessage(err)})`, { cause: err });
      }
      this.rotatedAt = switchedAt;
      this.deps.log.info({ device: this.deviceName, publicKey: next.publicKey, previousPublicKey: old.publicKey }, "wireguard key rotated and published");
      return { publicKey: next.publicKey, previousPublicKey: old.publicKey };
    });
  }

  close(): void {
    this.control?.close();
  }

  /** Deletes the previous private key once every peer has shaken hands with the new one (or after PREVIOUS_KEY_MAX_MS). */
  private async forgetPreviousKeyWhenUnused(): Promise<void> {
    const at = this.rotatedAt;
    if (at === undefined) return;
    const peers = this.peerTable.last?.peers ?? [];
    if (Date.now() - at < PREVIOUS_KEY_MAX_MS && !peers.every((p) => p.lastHandshakeMs >= at)) return;
    await this.store.forgetPrevious();
    this.rotatedAt = undefined;
    this.deps.log.info({ device: this.deviceName, peers: peers.length }, "previous wireguard key deleted: no peer uses it any more");
  }
}
