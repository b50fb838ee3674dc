// Admin routes of the lease server's REST API: bearer token or admin client
// certificate; 401 without credentials, 403 with wrong ones; read-only routes
// stay open; start-up refuses admin routes beyond loopback without credentials.
import { execFileSync } from "node:child_process";
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { loadServerConfig } from "../src/config.js";
import { httpApi, TOKEN } from "./http-fixture.js";
import { runBin, startServer, writeNetConf } from "./server-process.js";
import { tempDir } from "./helpers.js";
import { requireTools } from "../../test/tools.js";

const dir = tempDir("weft-http-auth-");
afterAll(() => dir.cleanup());

function tokenFile(name: string, content: string, mode = 0o600): string {
  const path = join(dir.path, name);
  writeFileSync(path, content);
  chmodSync(path, mode);
  return path;
}

const reservation = (n: number) => ({ subnet: `10.244.${n}.0/24`, nodeName: `node-${n}` });

describe("admin routes with a bearer token", () => {
  let api: Awaited<ReturnType<typeof httpApi>>;
  afterEach(async () => api.close());

  it("401 without credentials (WWW-Authenticate: Bearer), 403 with a wrong token, success with the right one", async () => {
    api = await httpApi({ admin: { token: TOKEN } });
    const routes = [
      { method: "POST" as const, url: "/v1/reservations", payload: reservation(5) },
      { method: "DELETE" as const, url: "/v1/reservations/10.244.5.0-24" },
      { method: "DELETE" as const, url: "/v1/leases/10.244.5.0-24" },
    ];
    for (const r of routes) {
      const none = await api.app.inject(r);
      expect(none.statusCode, r.url).toBe(401);
      expect(none.headers["www-authenticate"]).toMatch(/^Bearer/);
      expect(none.headers["content-type"]).toBe("application/problem+json; charset=utf-8");
      expect(none.json()).toMatchObject({ status: 401, code: "UNAUTHENTICATED", type: "https://weft.dev/problems/unauthenticated", detail: expect.stringMatching(/Authorization: Bearer/) });
      const basic = await api.app.inject({ ...r, headers: { authorization: "Basic YWRtaW46YWRtaW4=" } });
      expect(basic.statusCode, r.url).toBe(401);
      for (const wrong of [`Bearer ${TOKEN.slice(0, -1)}x`, `Bearer ${TOKEN}x`, "Bearer short"]) {
        const w = await api.app.inject({ ...r, headers: { authorization: wrong } });
        expect(w.statusCode, `${r.url} ${wrong}`).toBe(403);
        expect(w.json()).toMatchObject({ status: 403, code: "PERMISSION_DENIED", detail: expect.stringMatching(/does not match/) });
        expect(w.headers["www-authenticate"]).toBeUndefined();
      }
    }
    expect(await api.store.listReservations()).toEqual([]);

    const ok = { authorization: `Bearer ${TOKEN}` };
    expect((await api.app.inject({ ...routes[0]!, headers: ok })).statusCode).toBe(201);
    expect((await api.app.inject({ ...routes[1]!, headers: { authorization: `bearer  ${TOKEN} ` } })).statusCode).toBe(204);
    expect((await api.app.inject({ ...routes[2]!, headers: ok })).statusCode).toBe(404);

    // Each refusal is logged at warn with route and address, never the token.
    const refused = api.lines.filter((l) => l.msg === "admin request refused");
    expect(refused.length).toBe(routes.length * 5);
    expect(refused[0]).toMatchObject({ level: 40, route: "POST /v1/reservations", remote: "127.0.0.1", code: "UNAUTHENTICATED" });
    expect(JSON.stringify(api.lines)).not.toContain(TOKEN.slice(0, 20));
  });

  it("read-only routes and /metrics need no credentials", async () => {
    api = await httpApi({ admin: { token: TOKEN } });
    for (const url of ["/healthz", "/readyz", "/v1/leases", "/v1/network", "/v1/reservations", "/metrics"]) {
      expect((await api.app.inject(url)).statusCode, url).toBe(200);
    }
  });

  it("without any admin credentials configured, admin routes answer 401 saying how to configure them", async () => {
    api = await httpApi();
    const r = await api.app.inject({ method: "POST", url: "/v1/reservations", payload: reservation(5) });
    expect(r.statusCode).toBe(401);
    expect(r.json()).toMatchObject({ code: "UNAUTHENTICATED", detail: expect.stringMatching(/no admin credentials configured.*--admin-token-file FILE.*chmod 600/) });
    const t = await api.app.inject({ method: "POST", url: "/v1/reservations", payload: reservation(5), headers: { authorization: `Bearer ${TOKEN}` } });
    expect(t.statusCode).toBe(403);
    expect(t.json()).toMatchObject({ code: "PERMISSION_DENIED", detail: expect.stringMatching(/no --admin-token-file/) });
    expect((await api.app.inject("/v1/reservations")).statusCode).toBe(200);
    expect(await api.store.listReservations()).toEqual([]);
  });
});

describe("admin credentials in the configuration", () => {
  const netconf = writeNetConf(dir.path);
  const base = ["--insecure", "--network-config", netconf, "--store", `sqlite:${join(dir.path, "cfg.db")}`];
  const load = (...args: string[]) => () => loadServerConfig([...base, ...args]);

  it("refuses admin routes on a non-loopback address without credentials, naming --http-listen and the fix", () => {
    expect(load("--http-listen", "0.0.0.0:7601")).toThrow(/--http-listen 0\.0\.0\.0: .*open to anyone.*--admin-token-file FILE/);
    expect(load("--http-listen", "198.18.0.1:7601")).toThrow(expect.objectContaining({ code: "CONFIG_INVALID" }));
    for (const host of ["127.0.0.1", "127.0.0.53", "[::1]", "localhost"]) expect(load("--http-listen", `${host}:7601`)).not.toThrow();
    expect(load("--http-listen", "0.0.0.0:7601", "--admin-token-file", tokenFile("ok", `${TOKEN}\n`))()!.adminToken).toBe(TOKEN);
  });

  it("checks the token file: present, private (mode 600) and at least 32 characters", () => {
    expect(load("--admin-token-file", join(dir.path, "absent"))).toThrow(/--admin-token-file: cannot read .*absent \(ENOENT\).*head -c 32 \/dev\/urandom \| base64/);
    expect(load("--admin-token-file", tokenFile("shared", TOKEN, 0o644))).toThrow(/readable by others \(mode 644\).*chmod 600/);
    expect(load("--admin-token-file", tokenFile("group", TOKEN, 0o640))).toThrow(/readable by others/);
    expect(load("--admin-token-file", tokenFile("short", "tooshort\n"))).toThrow(/8 characters, fewer than 32.*head -c 32/);
    expect(load("--admin-token-file", tokenFile("spaces", `${TOKEN} ${TOKEN}`))).toThrow(/whitespace/);
    expect(load("--admin-token-file", tokenFile("owner-only", ` ${TOKEN}\n`, 0o400))()!.adminToken).toBe(TOKEN);
  });

  it("--admin-client-ca needs HTTPS, and --http-tls-cert/--http-tls-key go together", () => {
    const f = tokenFile("ca.pem", "x");
    expect(load("--admin-client-ca", f)).toThrow(/--admin-client-ca needs HTTPS/);
    expect(load("--http-tls-cert", f)).toThrow(/go together/);
  });
});

describe.skipIf(!requireTools({ openssl: "openssl" }, "the admin certificate tests"))("admin client certificates over HTTPS", () => {
  const pki = (f: string) => join(dir.path, f);
  const pem = (f: string) => readFileSync(pki(f));
  beforeAll(() => {
    const ssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir.path, stdio: "pipe" });
    const ca = (name: string) => ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.crt`, "-subj", `/CN=${name}`, "-days", "1");
    const leaf = (name: string, signer: string, ext: string) => {
      ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`);
      writeFileSync(pki(`${name}.ext`), `${ext}\n`);
      ssl("x509", "-req", "-in", `${name}.csr`, "-CA", `${signer}.crt`, "-CAkey", `${signer}.key`, "-CAcreateserial", "-out", `${name}.crt`, "-days", "1", "-extfile", `${name}.ext`);
    };
    ca("server-ca");
    ca("admin-ca");
    ca("other-ca");
    leaf("server", "server-ca", "subjectAltName=IP:127.0.0.1");
    leaf("admin", "admin-ca", "extendedKeyUsage=clientAuth");
    leaf("intruder", "other-ca", "extendedKeyUsage=clientAuth");
  });

  function call(base: string, method: string, path: string, client?: string, headers: Record<string, string> = {}, body?: unknown): Promise<{ status: number; body: string; wwwAuth?: string }> {
    return new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : JSON.stringify(body);
      const req = request(`${base}${path}`, {
        method, ca: pem("server-ca.crt"), ...(client ? { cert: pem(`${client}.crt`), key: pem(`${client}.key`) } : {}),
        headers: { ...headers, ...(data ? { "content-type": "application/json" } : {}) }, agent: false,
      }, (res) => {
        let text = "";
        res.on("data", (d) => (text += d));
        res.on("end", () => resolve({ status: res.statusCode!, body: text, wwwAuth: res.headers["www-authenticate"] }));
      });
      req.on("error", reject);
      req.setTimeout(10_000, () => req.destroy(new Error("timed out")));
      req.end(data);
    });
  }

  it("a certificate signed by --admin-client-ca is an admin; another CA's is 403; none is 401; a token works too", async () => {
    const api = await httpApi({ admin: { token: TOKEN, clientCertificates: true }, https: { cert: pem("server.crt"), key: pem("server.key"), clientCa: pem("admin-ca.crt") } });
    try {
      const base = await api.listen();
      expect(base).toMatch(/^https:/);
      expect((await call(base, "POST", "/v1/reservations", "admin", {}, reservation(3))).status).toBe(201);
      const intruder = await call(base, "DELETE", "/v1/reservations/10.244.3.0-24", "intruder");
      expect(intruder.status).toBe(403);
      expect(JSON.parse(intruder.body)).toMatchObject({ code: "PERMISSION_DENIED", detail: expect.stringMatching(/subject intruder.*--admin-client-ca/) });
      const none = await call(base, "DELETE", "/v1/reservations/10.244.3.0-24");
      expect(none.status).toBe(401);
      expect(none.wwwAuth).toMatch(/^Bearer/);
      expect(JSON.parse(none.body).detail).toMatch(/Authorization: Bearer.*client certificate signed by --admin-client-ca/);
      // Read-only routes over HTTPS need no certificate, and an intruder's certificate does not stop them.
      expect((await call(base, "GET", "/v1/reservations")).status).toBe(200);
      expect((await call(base, "GET", "/v1/reservations", "intruder")).status).toBe(200);
      expect((await call(base, "DELETE", "/v1/reservations/10.244.3.0-24", undefined, { authorization: `Bearer ${TOKEN}` })).status).toBe(204);
    } finally {
      await api.close();
    }
  });

  it("end to end: the binary serves HTTPS with admin certificates", async () => {
    const s = await startServer(["--insecure", "--store", `sqlite:${pki("https.db")}`, "--network-config", writeNetConf(dir.path), "--http-tls-cert", pki("server.crt"), "--http-tls-key", pki("server.key"), "--admin-client-ca", pki("admin-ca.crt")]);
    try {
      const base = s.httpUrl.replace(/^http:/, "https:");
      expect((await call(base, "POST", "/v1/reservations", "admin", {}, reservation(4))).status).toBe(201);
      expect((await call(base, "DELETE", "/v1/reservations/10.244.4.0-24", "intruder")).status).toBe(403);
      expect((await call(base, "DELETE", "/v1/reservations/10.244.4.0-24")).status).toBe(401);
      expect((await call(base, "GET", "/v1/reservations")).status).toBe(200);
    } finally {
      await s.stop();
    }
  }, 30_000);
});

describe("weft-lease-server binary: admin API end to end", () => {
  it("refuses without a token, works with it, and keeps read-only routes open", async () => {
    const token = tokenFile("e2e-token", `${TOKEN}\n`);
    const s = await startServer(["--insecure", "--store", `sqlite:${join(dir.path, "e2e.db")}`, "--network-config", writeNetConf(dir.path), "--admin-token-file", token]);
    try {
      const post = (headers: Record<string, string>) => fetch(`${s.httpUrl}/v1/reservations`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(reservation(6)) });
      const none = await post({});
      expect(none.status).toBe(401);
      expect(none.headers.get("www-authenticate")).toMatch(/^Bearer/);
      expect(none.headers.get("content-type")).toBe("application/problem+json; charset=utf-8");
      expect(await none.json()).toMatchObject({ code: "UNAUTHENTICATED" });
      expect((await post({ authorization: "Bearer wrong-wrong-wrong-wrong-wrong-wrong" })).status).toBe(403);
      expect((await post({ authorization: `Bearer ${TOKEN}` })).status).toBe(201);
      expect(await (await fetch(`${s.httpUrl}/v1/reservations`)).json()).toEqual([reservation(6)]);
      expect((await fetch(`${s.httpUrl}/metrics`)).status).toBe(200);
      expect(s.output()).toMatch(/"msg":"admin request refused"/);
      expect(s.output()).not.toContain(TOKEN);
    } finally {
      await s.stop();
    }
  }, 30_000);

  it("exits at start on 0.0.0.0 without admin credentials, and on a token file others can read", async () => {
    const args = ["--insecure", "--store", `sqlite:${join(dir.path, "refused.db")}`, "--network-config", writeNetConf(dir.path), "--listen", "127.0.0.1:0"];
    const open = await runBin([...args, "--http-listen", "0.0.0.0:0"]);
    expect(open.code).toBe(2);
    expect(open.stderr).toMatch(/--http-listen 0\.0\.0\.0: .*--admin-token-file FILE/);
    const shared = await runBin([...args, "--http-listen", "127.0.0.1:0", "--admin-token-file", tokenFile("e2e-shared", TOKEN, 0o644)]);
    expect(shared.code).toBe(2);
    expect(shared.stderr).toMatch(/readable by others.*chmod 600/);
  }, 30_000);
});
