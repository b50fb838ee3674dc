// wireguard-go's configuration protocol (the cross-platform "UAPI": key=value
// lines over a unix socket, one request per connection). Keys travel in hex.
import { createConnection } from "node:net";
import { join } from "node:path";
import { WeftError } from "../../../lib/src/errors.js";
import type { WgControl, WgDeviceSet, WgDeviceStatus, WgPeerStatus } from "./control.js";
import { keyFromHex, keyToHex, publicKeyOf, ZERO_KEY } from "./keys.js";

/** wireguard-go puts its sockets here; the path is the same in every network namespace. */
export const UAPI_DIR = "/var/run/wireguard";
const TIMEOUT_MS = 5000;
const ZERO_HEX = "0".repeat(64);

export const uapiSocketPath = (device: string, dir = UAPI_DIR): string => join(dir, `${device}.sock`);

/** The text of a set request (without the final blank line). */
export function encodeSet(s: WgDeviceSet): string {
  const lines = ["set=1"];
  if (s.privateKey !== undefined) lines.push(`private_key=${keyToHex(s.privateKey)}`);
  if (s.listenPort !== undefined) lines.push(`listen_port=${s.listenPort}`);
  for (const op of s.peers ?? []) {
    if (op.op === "remove") {
      lines.push(`public_key=${keyToHex(op.publicKey)}`, "remove=true");
      continue;
    }
    const p = op.peer;
    lines.push(`public_key=${keyToHex(p.publicKey)}`, "replace_allowed_ips=true", `endpoint=${p.endpoint}`,
      `persistent_keepalive_interval=${p.keepalive}`, `preshared_key=${p.presharedKey ? keyToHex(p.presharedKey) : ZERO_HEX}`,
      ...p.allowedIPs.map((a) => `allowed_ip=${a}`));
  }
  return lines.join("\n") + "\n";
}

/** Parses a get answer (without checking errno). */
export function parseGet(text: string): WgDeviceStatus {
  let privateKey: string | undefined;
  let listenPort = 0;
  const peers: WgPeerStatus[] = [];
  let peer: { -readonly [K in keyof WgPeerStatus]: WgPeerStatus[K] } | undefined;
  let hsSec = 0;
  let hsNsec = 0;
  const endPeer = () => {
    if (!peer) return;
    peer.lastHandshakeMs = hsSec * 1000 + Math.floor(hsNsec / 1e6);
    (peer.allowedIPs as string[]).sort();
    peers.push(peer);
    peer = undefined;
  };
  for (const line of text.split("\n")) {
    const eq = line.indexOf("=");
    if (eq < 0) continue;
    const k = line.slice(0, eq);
    const v = line.slice(eq + 1);
    if (k === "public_key") {
      endPeer();
      peer = { publicKey: keyFromHex(v), endpoint: "", allowedIPs: [], keepalive: 0, lastHandshakeMs: 0, rxBytes: 0, txBytes: 0 };
      hsSec = hsNsec = 0;
    } else if (!peer) {
      if (k === "private_key") privateKey = keyFromHex(v);
      else if (k === "listen_port") listenPort = Number(v);
    } else {
      switch (k) {
        case "endpoint": peer.endpoint = v; break;
        case "allowed_ip": if (!v.includes(":")) (peer.allowedIPs as string[]).push(v); break;
        case "persistent_keepalive_interval": peer.keepalive = Number(v); break;
        case "preshared_key": if (v !== ZERO_HEX) peer.presharedKey = keyFromHex(v); break;
        case "last_handshake_time_sec": hsSec = Number(v); break;
        case "last_handshake_time_nsec": hsNsec = Number(v); break;
        case "rx_bytes": peer.rxBytes = Number(v); break;
        case "tx_bytes": peer.txBytes = Number(v); break;
      }
    }
  }
  endPeer();
  return { publicKey: privateKey && privateKey !== ZERO_KEY ? publicKeyOf(privateKey) : undefined, listenPort, peers };
}

/** The errno= line of an answer (0 = success); undefined when the answer has none (cut short). */
function errnoOf(text: string): number | undefined {
  const m = /(?:^|\n)errno=(-?\d+)\n\n$/.exec(text);
  return m ? Number(m[1]) : undefined;
}

export class UapiControl implements WgControl {
  readonly mode = "userspace" as const;

  constructor(private readonly device: string, private readonly dir = UAPI_DIR) {}

  get path(): string {
    return uapiSocketPath(this.device, this.dir);
  }

  /** One request, one connection; resolves with the whole answer. */
  private exchange(what: string, request: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      const s = createConnection(this.path);
      const done = (err?: Error) => {
        clearTimeout(timer);
        s.destroy();
        if (err) reject(err);
        else resolve(Buffer.concat(chunks).toString("utf8"));
      };
      const timer = setTimeout(() => done(this.error(what, `no answer within ${TIMEOUT_MS} ms (is wireguard-go hung?)`)), TIMEOUT_MS);
      let tail = "";
      s.on("data", (d: Buffer) => {
        chunks.push(d);
        // An answer ends with a blank line; look only at the tail, answers can be megabytes.
        tail = (tail + d.toString("latin1", Math.max(0, d.length - 2))).slice(-2);
        if (tail === "\n\n") done();
      });
      s.on("end", () => done());
      s.on("error", (err: NodeJS.ErrnoException) => {
        const why = err.code === "ENOENT" || err.code === "ECONNREFUSED"
          ? `wireguard-go is not running for this device (${err.code} on ${this.path})`
          : err.message;
        done(this.error(what, why, err));
      });
      s.write(`${request}\n`);
    });
  }

  private error(what: string, why: string, cause?: unknown): WeftError {
    return new WeftError("DATAPLANE_OP_FAILED", `wireguard ${this.device}: ${what}: ${why}`, cause ? { cause } : undefined);
  }

  async get(): Promise<WgDeviceStatus> {
    const text = await this.exchange("get", "get=1\n");
    const errno = errnoOf(text);
    if (errno !== 0) throw this.error("get", errno === undefined ? "answer cut short" : `errno ${errno}`);
    return parseGet(text);
  }

  async set(s: WgDeviceSet): Promise<void> {
    const text = await this.exchange("set", encodeSet(s));
    const errno = errnoOf(text);
    // wireguard-go answers a bad line with a negative errno (-22 EINVAL) and stops at that line.
    if (errno !== 0) throw this.error("set", errno === undefined ? "answer cut short" : `wireguard-go refused the configuration (errno ${errno})`);
  }

  close(): void {}
}
