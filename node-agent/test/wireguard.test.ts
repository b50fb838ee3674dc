// The wireguard backend against a fake dataplane and a fake WireGuard device
// (the WgControl seam): device set-up in kernel mode, keys, peers, the network
// route, rejections, key rotation and handshake health.
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { WeftError } from "../../lib/src/errors.js";
import type { BackendAttrs, Lease } from "../../lib/src/lease.js";
import { parseNetworkConfig } from "../../lib/src/net-config.js";
import type { BackendDeps } from "../src/backends/backend.js";
import { WireguardBackend } from "../src/backends/wireguard.js";
import { Reconciler } from "../src/reconciler.js";
import { generateKeyPair, publicKeyOf } from "../src/wireguard/keys.js";
import { FakeDataplane } from "./helpers/fake-dataplane.js";
import { FakeWgControl } from "./helpers/fake-wg-control.js";
import { backendDeps, localNode, silentLog, tmpDir } from "./helpers/fixtures.js";

const net = parseNetworkConfig('{"Network": "10.244.0.0/16", "Backend": {"Type": "wireguard", "PersistentKeepaliveInterval": 25}}');
const local = { ...localNode, network: net };
const PSK = generateKeyPair().privateKey;
const keys = Array.from({ length: 6 }, () => generateKeyPair());
/** One expiry for every lease here, so two wgPeer(i) compare equal. */
const EXPIRES_AT = Date.now() + 600_000;

function wgPeer(i: number, over: Partial<Lease> = {}, key = keys[i]!.publicKey): Lease {
  return {
    subnet: `10.244.${i}.0/24`, nodeName: `node-${i}`, publicIP: `198.18.0.${i}`,
    attrs: { type: "wireguard", publicKey: key, listenPort: 51820 }, expiresAt: EXPIRES_AT, revision: i, ...over,
  };
}

interface Setup {
  dp: FakeDataplane;
  wg: FakeWgControl;
  b: WireguardBackend;
  attrs: BackendAttrs;
  stateDir: string;
  announced: BackendAttrs[];
  modes: string[];
}

async function setup(o: { stateDir?: string; dp?: FakeDataplane; wg?: FakeWgControl; psk?: string; announce?: BackendDeps["announce"] } = {}): Promise<Setup> {
  const dp = o.dp ?? new FakeDataplane();
  const wg = o.wg ?? new FakeWgControl();
  const stateDir = o.stateDir ?? tmpDir();
  const announced: BackendAttrs[] = [];
  const modes: string[] = [];
  const b = new WireguardBackend(backendDeps(dp, {
    net, log: silentLog,
    wireguard: { device: "weft-wg", stateDir, presharedKey: o.psk, openControl: (mode) => { modes.push(mode); return wg; } },
    announce: o.announce ?? (async (a) => { announced.push(a); }),
  }));
  const attrs = await b.init(local);
  await b.configureSubnet(wgPeer(1));
  return { dp, wg, b, attrs, stateDir, announced, modes };
}

const reconcile = (b: WireguardBackend, peers: Lease[]) => new Reconciler(silentLog).reconcile(b.desired(peers));

afterEach(() => {
  vi.useRealTimers();
});

describe("wireguard device", () => {
  it("uses the kernel's WireGuard: a marked link with MTU - 80, our key and port, address .0/32", async () => {
    const { dp, wg, attrs, stateDir, modes } = await setup();
    expect(modes).toEqual(["kernel"]);
    const link = dp.links.get("weft-wg")!;
    expect(link).toMatchObject({ kind: "wireguard", mtu: 1420, alias: "weft:wireguard", up: true });
    const keyFile = join(stateDir, "wireguard-weft-wg.key");
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    const priv = readFileSync(keyFile, "utf8").trim();
    expect(attrs).toEqual({ type: "wireguard", publicKey: publicKeyOf(priv), listenPort: 51820 });
    expect(wg.privateKey).toBe(priv);
    expect(wg.listenPort).toBe(51820);
    expect(dp.addresses).toEqual([{ index: link.index, ip: "10.244.1.0", prefix: 32 }]);
  });

  it("adopts its device after a restart without touching it (same key, no set, no new link)", async () => {
    const first = await setup();
    const setsBefore = first.wg.sets.length;
    first.dp.calls.length = 0;
    const again = await setup({ stateDir: first.stateDir, dp: first.dp, wg: first.wg });
    expect(again.attrs).toEqual(first.attrs);
    expect(first.wg.sets.length).toBe(setsBefore);
    expect(first.dp.calls.filter((c) => !c.startsWith("list"))).toEqual([]);
  });

  it("refuses a WireGuard link of that name that weft did not make, and a link of another kind", async () => {
    const dp = new FakeDataplane();
    await dp.createLink({ name: "weft-wg", kind: "wireguard", mtu: 1420, alias: "" });
    await expect(setup({ dp })).rejects.toMatchObject({ code: "CONFIG_INVALID", message: expect.stringMatching(/not created by weft.*--wireguard-device/) });
    const dp2 = new FakeDataplane();
    await dp2.createLink({ name: "weft-wg", kind: "vxlan", mtu: 1450, alias: "weft:vxlan" });
    await expect(setup({ dp: dp2 })).rejects.toMatchObject({ code: "CONFIG_INVALID", message: expect.stringMatching(/is a vxlan link, not WireGuard; pick another name with --wireguard-device/) });
  });

  it("repairs a deleted device: new link, key and port again, address", async () => {
    const { dp, wg, b } = await setup();
    await dp.deleteLink(dp.links.get("weft-wg")!.index);
    wg.privateKey = undefined;
    wg.listenPort = 0;
    expect(await b.repair()).toEqual(["device", "key", "port", "address"]);
    expect(dp.links.get("weft-wg")).toMatchObject({ up: true, alias: "weft:wireguard" });
    expect(wg.listenPort).toBe(51820);
    expect(await b.repair()).toEqual([]);
  });

  it("names the port when the device cannot listen on it", async () => {
    const wg = new FakeWgControl();
    wg.failSets("EADDRINUSE");
    await expect(setup({ wg })).rejects.toThrow(/UDP port 51820 is taken by another program, free it or set ListenPort/);
  });
});

describe("wireguard peers", () => {
  it("programs one peer per lease (endpoint, subnet, keepalive, PSK) and routes the whole network through the device", async () => {
    const { dp, wg, b } = await setup({ psk: PSK });
    const r = await reconcile(b, [wgPeer(2), wgPeer(3, { publicIP: "198.18.5.3", attrs: { type: "wireguard", publicKey: keys[3]!.publicKey, listenPort: 51999 } })]);
    expect([...r.programmed].sort()).toEqual(["10.244.2.0/24", "10.244.3.0/24"]);
    expect(wg.peers.get(keys[2]!.publicKey)).toMatchObject({ endpoint: "198.18.0.2:51820", allowedIPs: ["10.244.2.0/24"], keepalive: 25, presharedKey: PSK });
    expect(wg.peers.get(keys[3]!.publicKey)).toMatchObject({ endpoint: "198.18.5.3:51999" });
    expect([...dp.routeMap.values()]).toEqual([{ dst: "10.244.0.0/16", oif: dp.links.get("weft-wg")!.index, onlink: false }]);
  });

  it("kicks a handshake with every new peer (keepalive 1 s first) and leaves known ones alone", async () => {
    const { wg, b } = await setup();
    const before = wg.sets.length;
    await reconcile(b, [wgPeer(2)]);
    const ops = wg.sets.slice(before).flatMap((s) => s.peers ?? []);
    expect(ops.map((o) => (o.op === "put" ? o.peer.keepalive : "remove"))).toEqual([1, 25]);
    const n = wg.sets.length;
    await reconcile(b, [wgPeer(2)]);
    expect(wg.sets.length).toBe(n);
  });

  it("follows a key change (the subnet moves to the new key, the old peer goes) and removes peers no lease backs", async () => {
    const { wg, b } = await setup();
    await reconcile(b, [wgPeer(2), wgPeer(3)]);
    wg.peers.set(keys[5]!.publicKey, { publicKey: keys[5]!.publicKey, endpoint: "", allowedIPs: [], keepalive: 0, lastHandshakeMs: 0, rxBytes: 0, txBytes: 0 });
    const r = await reconcile(b, [wgPeer(2, { revision: 9 }, keys[4]!.publicKey), wgPeer(3)]);
    expect(r.programmed.size).toBe(2);
    expect([...wg.peers.keys()].sort()).toEqual([keys[3]!.publicKey, keys[4]!.publicKey].sort());
    expect(wg.peers.get(keys[4]!.publicKey)!.allowedIPs).toEqual(["10.244.2.0/24"]);
  });

  it("updates a peer whose node moved (new endpoint) in place, and clears a pre-shared key that was removed", async () => {
    const s = await setup({ psk: PSK });
    await reconcile(s.b, [wgPeer(2)]);
    await reconcile(s.b, [wgPeer(2, { publicIP: "198.18.0.77", revision: 20 })]);
    expect(s.wg.peers.get(keys[2]!.publicKey)).toMatchObject({ endpoint: "198.18.0.77:51820", presharedKey: PSK });
    const noPsk = await setup({ stateDir: s.stateDir, dp: s.dp, wg: s.wg });
    await reconcile(noPsk.b, [wgPeer(2, { publicIP: "198.18.0.77", revision: 20 })]);
    expect(s.wg.peers.get(keys[2]!.publicKey)!.presharedKey).toBeUndefined();
  });

  it("rejects a peer with our key or with a key another lease already has (the older lease keeps it)", async () => {
    const { wg, b, attrs } = await setup();
    const own = (attrs as { publicKey: string }).publicKey;
    const r = await reconcile(b, [wgPeer(2, {}, own), wgPeer(3, { revision: 30 }, keys[4]!.publicKey), wgPeer(4, { revision: 4 })]);
    expect(r.rejected.get("10.244.2.0/24")).toMatchObject({ reason: "invalid_key", detail: expect.stringMatching(/already used by this node/) });
    expect(r.rejected.get("10.244.3.0/24")).toMatchObject({ reason: "invalid_key", detail: expect.stringMatching(/already used by node-4/) });
    expect(wg.peers.get(keys[4]!.publicKey)!.allowedIPs).toEqual(["10.244.4.0/24"]);
  });
});

describe("wireguard handshake health", () => {
  it("reports a programmed peer without a handshake after the grace period, naming the PSK and the port", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    const { wg, b } = await setup({ psk: PSK });
    await reconcile(b, [wgPeer(2), wgPeer(3)]);
    wg.peers.set(keys[3]!.publicKey, { ...wg.peers.get(keys[3]!.publicKey)!, lastHandshakeMs: Date.now() });
    expect((await b.peerHealth(true))(wgPeer(2))!.problem).toBeUndefined();
    vi.setSystemTime(Date.now() + 16_000);
    const h = await b.peerHealth(true);
    expect(h(wgPeer(2))).toMatchObject({
      details: { publicKey: keys[2]!.publicKey, endpoint: "198.18.0.2:51820", lastHandshake: null },
      problem: expect.stringMatching(/no WireGuard handshake .* the same pre-shared key \(--wireguard-psk-file\) and that UDP port 51820 reaches 198.18.0.2:51820/),
    });
    expect(h(wgPeer(3))!.problem).toBeUndefined();
    expect(h(wgPeer(3))!.details.lastHandshake).toMatch(/^\d{4}-/);
  });
});

describe("wireguard key rotation", () => {
  it("switches the device to the new key before publishing it, keeps the old key until every peer shook hands", async () => {
    const s = await setup();
    await reconcile(s.b, [wgPeer(2)]);
    const old = (s.attrs as { publicKey: string }).publicKey;
    let deviceKeyAtAnnounce: string | undefined;
    const b2 = await setup({ stateDir: s.stateDir, dp: s.dp, wg: s.wg, announce: async (a) => { deviceKeyAtAnnounce = (await s.wg.get()).publicKey; s.announced.push(a); } });
    await reconcile(b2.b, [wgPeer(2)]);
    const r = await b2.b.rotateKey();
    expect(r.previousPublicKey).toBe(old);
    expect(r.publicKey).not.toBe(old);
    expect(deviceKeyAtAnnounce).toBe(r.publicKey);
    expect(s.announced).toEqual([{ type: "wireguard", publicKey: r.publicKey, listenPort: 51820 }]);
    const previous = join(s.stateDir, "wireguard-weft-wg.key.previous");
    expect(existsSync(previous)).toBe(true);
    // The peer has not shaken hands with the new key yet: the old one stays.
    await reconcile(b2.b, [wgPeer(2)]);
    await b2.b.repair();
    expect(existsSync(previous)).toBe(true);
    s.wg.peers.set(keys[2]!.publicKey, { ...s.wg.peers.get(keys[2]!.publicKey)!, lastHandshakeMs: Date.now() + 1 });
    await reconcile(b2.b, [wgPeer(2)]);
    await b2.b.repair();
    expect(existsSync(previous)).toBe(false);
  });

  it("puts the old key back when the new one cannot be published", async () => {
    const s = await setup({ announce: async () => { throw new WeftError("SERVER_UNAVAILABLE", "no lease server reachable"); } });
    const old = (s.attrs as { publicKey: string }).publicKey;
    await expect(s.b.rotateKey()).rejects.toMatchObject({ code: "SERVER_UNAVAILABLE", message: expect.stringMatching(/key rotation undone, the old key stays in use.*no lease server reachable/) });
    expect((await s.wg.get()).publicKey).toBe(old);
    expect(publicKeyOf(readFileSync(join(s.stateDir, "wireguard-weft-wg.key"), "utf8").trim())).toBe(old);
    expect(existsSync(join(s.stateDir, "wireguard-weft-wg.key.previous"))).toBe(false);
  });
});
