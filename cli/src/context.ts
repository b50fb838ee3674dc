// One weftctl run's options, checked once: output format, timeout, and for
// commands that talk to the lease server its URL, TLS files and admin
// credentials. commander resolves each flag and its WEFT_* variable; errors
// here name whichever of the two the operator used.
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { parseDuration } from "../../lib/src/duration.js";
import { expectOk, serverClient, type Credentials, type Endpoint, type ServerClient } from "./api-client.js";
import { usage } from "./exit-codes.js";
import { nodeFetch, type TlsMaterial } from "./http-transport.js";

export const DEFAULT_SERVER_URL = "http://127.0.0.1:7601";

export interface Io {
  readonly out: (s: string) => void;
  readonly err: (s: string) => void;
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly now: () => number;
}

interface GlobalOptions {
  serverUrl: string;
  adminTokenFile?: string;
  ca?: string;
  cert?: string;
  key?: string;
  output: "table" | "json";
  timeout: string;
}

/** How an option was set, for messages: "--server-url" or "WEFT_SERVER_URL". */
export function sourceName(cmd: Command, key: string, flag: string, env: string): string {
  return cmd.getOptionValueSourceWithGlobals(key) === "env" ? env : flag;
}

function readFile(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw usage(`${what}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? String(err)}); check the path`);
  }
}

export function parseUrl(raw: string, name: string, example: string): string {
  let u: URL | undefined;
  try {
    u = new URL(raw);
  } catch { /* below */ }
  if (!u || (u.protocol !== "http:" && u.protocol !== "https:") || (u.pathname !== "/" && u.pathname !== "") || u.search) {
    throw usage(`${name}: ${JSON.stringify(raw)} is not an http:// or https:// base URL; write it like ${example}`);
  }
  return u.origin;
}

/** The lease server as one command uses it: typed client, and expectOk with the credentials for messages. */
export interface LeaseServer {
  readonly client: ServerClient;
  ok<T>(call: Promise<{ data?: T; error?: unknown; response: Response }>): Promise<T>;
}

/** One run's options, checked once. The lease server's are read only by commands that talk to it. */
export class Context {
  readonly json: boolean;
  readonly timeoutMs: number;
  readonly #cmd: Command;
  readonly #io: Io;

  constructor(cmd: Command, io: Io) {
    this.#cmd = cmd;
    this.#io = io;
    const o = cmd.optsWithGlobals<GlobalOptions>();
    this.json = o.output === "json";
    const timeoutMs = parseDuration(o.timeout);
    if (timeoutMs === undefined) throw usage(`--timeout: ${JSON.stringify(o.timeout)} is not a duration; write it like 10s or 500ms`);
    this.timeoutMs = timeoutMs;
  }

  /** `admin`: the command's name when it changes state; it is refused before sending when no credential could work. */
  leaseServer(admin?: string): LeaseServer {
    const o = this.#cmd.optsWithGlobals<GlobalOptions>();
    const urlName = sourceName(this.#cmd, "serverUrl", "--server-url", "WEFT_SERVER_URL");
    const url = parseUrl(o.serverUrl, urlName, DEFAULT_SERVER_URL);
    if (!!o.cert !== !!o.key) throw usage("--cert and --key go together: pass the admin client certificate and its key, or neither");
    if ((o.ca || o.cert) && !url.startsWith("https:")) throw usage(`--${o.ca ? "ca" : "cert"} is for HTTPS, but ${urlName} is ${url}; use an https:// URL, or drop the TLS flags`);
    const tls: TlsMaterial = { ca: o.ca ? readFile(o.ca, "--ca") : undefined, cert: o.cert ? readFile(o.cert, "--cert") : undefined, key: o.key ? readFile(o.key, "--key") : undefined };
    const creds = this.#credentials(o);
    if (admin && !creds.token && !tls.cert) {
      throw usage(`${admin} changes state and needs the lease server's admin token: pass --admin-token-file FILE (or set WEFT_ADMIN_TOKEN_FILE, or WEFT_ADMIN_TOKEN to the token itself), or over HTTPS an admin client certificate with --cert FILE --key FILE`);
    }
    const endpoint: Endpoint = { url, what: "the lease server", urlFlag: urlName, timeoutMs: this.timeoutMs };
    return {
      client: serverClient(endpoint, nodeFetch({ tls, timeoutMs: this.timeoutMs }), creds),
      ok: (call) => expectOk(endpoint, call, creds),
    };
  }

  #credentials(o: GlobalOptions): Credentials {
    if (o.adminTokenFile) {
      const name = sourceName(this.#cmd, "adminTokenFile", "--admin-token-file", "WEFT_ADMIN_TOKEN_FILE");
      const token = readFile(o.adminTokenFile, name).toString("utf8").trim();
      if (!token || /\s/.test(token)) throw usage(`${name}: ${o.adminTokenFile} must hold one token on one line (the lease server's --admin-token-file)`);
      return { token, tokenSource: `${name} ${o.adminTokenFile}` };
    }
    const token = this.#io.env.WEFT_ADMIN_TOKEN?.trim();
    return token ? { token, tokenSource: "WEFT_ADMIN_TOKEN" } : {};
  }

  print(data: unknown, table: () => string): void {
    this.#io.out(this.json ? `${JSON.stringify(data, null, 2)}\n` : table());
  }
}

