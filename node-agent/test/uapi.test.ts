// wireguard-go's UAPI: the request text we send, the answers we parse, and
// UapiControl against a unix socket server in a temp dir that answers as
// wireguard-go does (one key=value per line, keys in hex, "errno=N" and a blank
// line at the end, the connection left open for more requests).
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { WeftError } from "../../lib/src/errors.js";
import type { WgDeviceSet } from "../src/wireguard/control.js";
import { encodeSet, parseGet, UapiControl, uapiSocketPath, UAPI_DIR } from "../src/wireguard/uapi.js";

// Verified with `wg pubkey`; hex as `xxd -p` prints the base64-decoded key.
const PRIV = "qGqWgGaKmC3G4q+nn7w4tpp0NKndW7JVHttEmHM5b3Q=";
const PRIV_HEX = "a86a9680668a982dc6e2afa79fbc38b69a7434a9dd5bb2551edb449873396f74";
const PUB = "4gWfAxuBB2AecKbmbl1MM43Eyka2iRj0xeV0PkkLr3Q=";
const PUB_HEX = "e2059f031b8107601e70a6e66e5d4c338dc4ca46b68918f4c5e5743e490baf74";
const PEER_B = Buffer.alloc(32, 0x11).toString("base64");
const PEER_B_HEX = "11".repeat(32);
const PSK = Buffer.alloc(32, 0xab).toString("base64");
const PSK_HEX = "ab".repeat(32);
const ZEROS = "0".repeat(64);

describe("encodeSet", () => {
  it("encodes the device key and port, a put and a remove exactly", () => {
    const s: WgDeviceSet = {
      privateKey: PRIV,
      listenPort: 51820,
      peers: [
        { op: "put", peer: { publicKey: PUB, endpoint: "198.18.0.2:51820", allowedIPs: ["10.244.2.0/24", "10.244.9.0/24"], keepalive: 25 } },
        { op: "remove", publicKey: PEER_B },
      ],
    };
    expect(encodeSet(s)).toBe([
      "set=1",
      `private_key=${PRIV_HEX}`,
      "listen_port=51820",
      `public_key=${PUB_HEX}`,
      "replace_allowed_ips=true",
      "endpoint=198.18.0.2:51820",
      "persistent_keepalive_interval=25",
      `preshared_key=${ZEROS}`,
      "allowed_ip=10.244.2.0/24",
      "allowed_ip=10.244.9.0/24",
      `public_key=${PEER_B_HEX}`,
      "remove=true",
      "",
    ].join("\n"));
  });

  it("sends a pre-shared key in hex, keepalive 0, and leaves out what is not set", () => {
    expect(encodeSet({ peers: [{ op: "put", peer: { publicKey: PEER_B, endpoint: "198.18.0.3:51821", allowedIPs: ["10.244.3.0/24"], keepalive: 0, presharedKey: PSK } }] })).toBe([
      "set=1",
      `public_key=${PEER_B_HEX}`,
      "replace_allowed_ips=true",
      "endpoint=198.18.0.3:51821",
      "persistent_keepalive_interval=0",
      `preshared_key=${PSK_HEX}`,
      "allowed_ip=10.244.3.0/24",
      "",
    ].join("\n"));
    expect(encodeSet({})).toBe("set=1\n");
    expect(encodeSet({ listenPort: 0 })).toBe("set=1\nlisten_port=0\n");
    // A put with no allowed IPs still replaces (clears) them.
    expect(encodeSet({ peers: [{ op: "put", peer: { publicKey: PEER_B, endpoint: "198.18.0.3:51821", allowedIPs: [], keepalive: 1 } }] }))
      .toBe(`set=1\npublic_key=${PEER_B_HEX}\nreplace_allowed_ips=true\nendpoint=198.18.0.3:51821\npersistent_keepalive_interval=1\npreshared_key=${ZEROS}\n`);
  });
});

/** A get answer as wireguard-go writes it (device/uapi.go IpcGetOperation). */
const GET_ANSWER = [
  `private_key=${PRIV_HEX}`,
  "listen_port=51820",
  "fwmark=0",
  `public_key=${PUB_HEX}`,
  `preshared_key=${PSK_HEX}`,
  "protocol_version=1",
  "endpoint=198.18.0.2:51820",
  "last_handshake_time_sec=1700000000",
  "last_handshake_time_nsec=123456789",
  "tx_bytes=1000",
  "rx_bytes=2000",
  "persistent_keepalive_interval=25",
  "allowed_ip=10.244.9.0/24",
  "allowed_ip=fd00:1::/64",
  "allowed_ip=10.244.2.0/24",
  `public_key=${PEER_B_HEX}`,
  `preshared_key=${ZEROS}`,
  "protocol_version=1",
  "endpoint=198.18.0.3:51821",
  "last_handshake_time_sec=0",
  "last_handshake_time_nsec=0",
  "tx_bytes=0",
  "rx_bytes=0",
  "persistent_keepalive_interval=0",
  "allowed_ip=10.244.3.0/24",
  "errno=0",
  "",
  "",
].join("\n");

const GET_STATUS = {
  publicKey: PUB,
  listenPort: 51820,
  peers: [
    { publicKey: PUB, presharedKey: PSK, endpoint: "198.18.0.2:51820", lastHandshakeMs: 1_700_000_000_123, txBytes: 1000, rxBytes: 2000, keepalive: 25, allowedIPs: ["10.244.2.0/24", "10.244.9.0/24"] },
    { publicKey: PEER_B, endpoint: "198.18.0.3:51821", lastHandshakeMs: 0, txBytes: 0, rxBytes: 0, keepalive: 0, allowedIPs: ["10.244.3.0/24"] },
  ],
};

describe("parseGet", () => {
  it("maps every field of a wireguard-go answer", () => {
    const st = parseGet(GET_ANSWER);
    expect(st).toStrictEqual(GET_STATUS);
    expect(st.peers[1]!.presharedKey).toBeUndefined();
  });

  it("a device without a private key (or an all-zero one) has no public key", () => {
    expect(parseGet("listen_port=0\nfwmark=0\nerrno=0\n\n")).toStrictEqual({ publicKey: undefined, listenPort: 0, peers: [] });
    expect(parseGet(`private_key=${ZEROS}\nlisten_port=1234\nerrno=0\n\n`)).toStrictEqual({ publicKey: undefined, listenPort: 1234, peers: [] });
  });

  it("a peer's handshake time does not leak into the next peer", () => {
    const st = parseGet([
      `public_key=${PUB_HEX}`, "last_handshake_time_sec=10", "last_handshake_time_nsec=999999999",
      `public_key=${PEER_B_HEX}`, "errno=0", "", "",
    ].join("\n"));
    expect(st.peers.map((p) => p.lastHandshakeMs)).toEqual([10_999, 0]);
  });
});

// ---- UapiControl against a socket server ----

type Handler = (request: string, sock: Socket) => void;

interface FakeUapi {
  readonly dir: string;
  readonly requests: string[];
  readonly server: Server;
}

const dirs: string[] = [];
const servers: Server[] = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const s of servers.splice(0)) await new Promise<void>((r) => s.close(() => r()));
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), "weft-uapi-"));
  dirs.push(d);
  return d;
}

/** Serves `device`'s UAPI socket in a temp dir; `handler` gets each whole request (up to its blank line). */
async function serve(device: string, handler: Handler): Promise<FakeUapi> {
  const dir = tempDir();
  const requests: string[] = [];
  const server = createServer((sock) => {
    let buf = "";
    sock.on("data", (d) => {
      buf += d.toString("utf8");
      const end = buf.indexOf("\n\n");
      if (end < 0) return;
      const req = buf.slice(0, end + 2);
      buf = buf.slice(end + 2);
      requests.push(req);
      handler(req, sock);
    });
    sock.on("error", () => {});
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(uapiSocketPath(device, dir), resolve));
  return { dir, requests, server };
}

/** Writes `parts` one at a time, each after a pause, leaving the connection open (as wireguard-go does). */
function writeSlowly(sock: Socket, parts: readonly string[], pauseMs = 15): void {
  let i = 0;
  const next = () => {
    if (i >= parts.length || sock.destroyed) return;
    sock.write(parts[i++]!);
    setTimeout(next, pauseMs);
  };
  next();
}

async function errorOf(p: Promise<unknown>): Promise<WeftError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(WeftError);
    return err as WeftError;
  }
  throw new Error("expected a rejection");
}

describe("UapiControl", () => {
  it("puts its socket at /var/run/wireguard/<device>.sock by default", () => {
    expect(UAPI_DIR).toBe("/var/run/wireguard");
    expect(new UapiControl("weft-wg").path).toBe("/var/run/wireguard/weft-wg.sock");
    expect(new UapiControl("weft-wg", "/tmp/x").path).toBe("/tmp/x/weft-wg.sock");
    expect(new UapiControl("weft-wg").mode).toBe("userspace");
  });

  it("get() sends get=1 and parses the answer", async () => {
    const f = await serve("wg-test", (_req, sock) => { sock.write(GET_ANSWER); });
    const c = new UapiControl("wg-test", f.dir);
    expect(await c.get()).toStrictEqual(GET_STATUS);
    expect(f.requests).toEqual(["get=1\n\n"]);
  });

  it("set() sends the encoded request with its blank line and resolves on errno=0", async () => {
    const f = await serve("wg-test", (_req, sock) => { sock.write("errno=0\n\n"); });
    const c = new UapiControl("wg-test", f.dir);
    const s: WgDeviceSet = { listenPort: 51820, peers: [{ op: "put", peer: { publicKey: PUB, endpoint: "198.18.0.2:51820", allowedIPs: ["10.244.2.0/24"], keepalive: 25 } }] };
    await expect(c.set(s)).resolves.toBeUndefined();
    expect(f.requests).toEqual([`${encodeSet(s)}\n`]);
  });

  it("set() rejects with DATAPLANE_OP_FAILED naming the errno when wireguard-go refuses", async () => {
    const f = await serve("wg-test", (_req, sock) => { sock.write("errno=-22\n\n"); });
    const err = await errorOf(new UapiControl("wg-test", f.dir).set({ listenPort: 1 }));
    expect(err.code).toBe("DATAPLANE_OP_FAILED");
    expect(err.message).toMatch(/errno -22\b/);
    expect(err.message).toContain("wg-test");
    expect(err.message).toMatch(/\bset\b/);
  });

  it("get() rejects on a non-zero errno", async () => {
    const f = await serve("wg-test", (_req, sock) => { sock.write("errno=-5\n\n"); });
    const err = await errorOf(new UapiControl("wg-test", f.dir).get());
    expect(err.code).toBe("DATAPLANE_OP_FAILED");
    expect(err.message).toMatch(/errno -5\b/);
  });

  it("waits for the whole answer when it arrives in chunks (split inside the final blank line)", async () => {
    const cut = GET_ANSWER.length - 1; // "...errno=0\n" | "\n"
    const f = await serve("wg-test", (req, sock) => {
      if (req.startsWith("get=1")) writeSlowly(sock, [GET_ANSWER.slice(0, 200), GET_ANSWER.slice(200, cut), GET_ANSWER.slice(cut)]);
      else writeSlowly(sock, ["errno=0", "\n", "\n"]);
    });
    const c = new UapiControl("wg-test", f.dir);
    expect(await c.get()).toStrictEqual(GET_STATUS);
    await expect(c.set({ listenPort: 2 })).resolves.toBeUndefined();
  });

  it("waits for the whole answer when it arrives one line per chunk", async () => {
    // "\n" ending one chunk and the next chunk starting with a key must not end the answer.
    const lines = GET_ANSWER.split("\n");
    const parts = lines.slice(0, -2).map((l) => `${l}\n`).concat("\n");
    const f = await serve("wg-test", (_req, sock) => writeSlowly(sock, parts, 2));
    expect(await new UapiControl("wg-test", f.dir).get()).toStrictEqual(GET_STATUS);
  });

  it("parses a large answer (3,000 peers) completely", async () => {
    const n = 3000;
    const keyHex = (i: number) => i.toString(16).padStart(64, "0");
    const lines = [`private_key=${PRIV_HEX}`, "listen_port=51820", "fwmark=0"];
    for (let i = 1; i <= n; i++) {
      lines.push(`public_key=${keyHex(i)}`, `preshared_key=${ZEROS}`, "protocol_version=1", `endpoint=198.18.${i >> 8}.${i & 255}:51820`,
        `last_handshake_time_sec=${1_700_000_000 + i}`, "last_handshake_time_nsec=0", `tx_bytes=${i}`, `rx_bytes=${2 * i}`,
        "persistent_keepalive_interval=25", `allowed_ip=10.${100 + (i >> 8)}.${i & 255}.0/24`, "allowed_ip=fd00::/64");
    }
    const answer = `${lines.join("\n")}\nerrno=0\n\n`;
    expect(answer.length).toBeGreaterThan(1_000_000);
    const f = await serve("wg-big", (_req, sock) => { sock.write(answer); });
    const st = await new UapiControl("wg-big", f.dir).get();
    expect(st.publicKey).toBe(PUB);
    expect(st.peers).toHaveLength(n);
    expect(st.peers[0]).toStrictEqual({ publicKey: Buffer.from(keyHex(1), "hex").toString("base64"), endpoint: "198.18.0.1:51820", allowedIPs: ["10.100.1.0/24"], keepalive: 25, lastHandshakeMs: 1_700_000_001_000, txBytes: 1, rxBytes: 2 });
    expect(st.peers[n - 1]).toStrictEqual({ publicKey: Buffer.from(keyHex(n), "hex").toString("base64"), endpoint: `198.18.${n >> 8}.${n & 255}:51820`, allowedIPs: [`10.${100 + (n >> 8)}.${n & 255}.0/24`], keepalive: 25, lastHandshakeMs: (1_700_000_000 + n) * 1000, txBytes: n, rxBytes: 2 * n });
    expect(new Set(st.peers.map((p) => p.publicKey)).size).toBe(n);
  });

  it("no socket: DATAPLANE_OP_FAILED saying wireguard-go is not running for the device", async () => {
    const dir = tempDir();
    const c = new UapiControl("wg-gone", dir);
    for (const p of [c.get(), c.set({ listenPort: 1 })]) {
      const err = await errorOf(p);
      expect(err.code).toBe("DATAPLANE_OP_FAILED");
      expect(err.message).toContain("wg-gone");
      expect(err.message).toMatch(/wireguard-go is not running for this device/);
      expect(err.message).toContain("ENOENT");
      expect(err.message).toContain(join(dir, "wg-gone.sock"));
    }
  });

  it("a stale socket path nobody listens on says the same (ECONNREFUSED)", async () => {
    const dir = tempDir();
    writeFileSync(join(dir, "wg-stale.sock"), "");
    const err = await errorOf(new UapiControl("wg-stale", dir).get());
    expect(err.code).toBe("DATAPLANE_OP_FAILED");
    expect(err.message).toMatch(/wireguard-go is not running for this device \(ECONNREFUSED/);
  });

  it("the server closing without a whole answer: answer cut short", async () => {
    const f = await serve("wg-test", (_req, sock) => { sock.end(GET_ANSWER.slice(0, 300)); });
    const c = new UapiControl("wg-test", f.dir);
    for (const p of [c.get(), c.set({ listenPort: 1 })]) {
      const err = await errorOf(p);
      expect(err.code).toBe("DATAPLANE_OP_FAILED");
      expect(err.message).toMatch(/answer cut short/);
    }
    // Even when what came ends in one newline of the two.
    const g = await serve("wg-test2", (_req, sock) => { sock.end("errno=0\n"); });
    expect((await errorOf(new UapiControl("wg-test2", g.dir).set({ listenPort: 1 }))).message).toMatch(/answer cut short/);
  });

  it("gives up after 5 s without an answer", async () => {
    let connected!: () => void;
    const seen = new Promise<void>((r) => { connected = r; });
    const f = await serve("wg-hung", () => connected());
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const p = errorOf(new UapiControl("wg-hung", f.dir).get());
    await seen;
    vi.advanceTimersByTime(4999);
    vi.advanceTimersByTime(1);
    const err = await p;
    expect(err.code).toBe("DATAPLANE_OP_FAILED");
    expect(err.message).toMatch(/no answer within 5000 ms/);
  });
});
