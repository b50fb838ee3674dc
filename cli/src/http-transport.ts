// The fetch that weftctl's openapi-fetch clients use: node:http(s) rather
// than the global fetch, whose undici agent cannot take a CA or a client
// certificate on Node 20 without the undici package. Network failures come
// back as TransportError with the errno-style code, so callers can say
// what to fix (refused, timeout, TLS) instead of "fetch failed".
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";

export interface TlsMaterial {
  /** PEM of the CA that signed the server's certificate (default: the system's). */
  readonly ca?: Buffer;
  /** PEM client certificate and key, e.g. an admin certificate (--admin-client-ca on the server). */
  readonly cert?: Buffer;
  readonly key?: Buffer;
}

export class TransportError extends Error {
  constructor(readonly url: string, readonly code: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TransportError";
  }
}

export type Fetch = (req: Request) => Promise<Response>;

export function nodeFetch(o: { readonly tls?: TlsMaterial; readonly timeoutMs: number }): Fetch {
  return async (req) => {
    const url = new URL(req.url);
    const body = req.body ? Buffer.from(await req.arrayBuffer()) : undefined;
    const headers: Record<string, string> = {};
    req.headers.forEach((v, k) => { headers[k] = v; });
    if (body) headers["content-length"] = String(body.length);
    const send = url.protocol === "https:" ? httpsRequest : httpRequest;
    const tls = url.protocol === "https:" ? { ca: o.tls?.ca, cert: o.tls?.cert, key: o.tls?.key } : {};
    return new Promise<Response>((resolve, reject) => {
      const r = send(url, { method: req.method, headers, timeout: o.timeoutMs, ...tls }, (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", (err) => reject(new TransportError(req.url, "ECONNRESET", err.message, { cause: err })));
        res.on("end", () => {
          const status = res.statusCode ?? 502;
          const h = new Headers();
          for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) h.set(k, Array.isArray(v) ? v.join(", ") : v);
          const noBody = status === 204 || status === 304 || req.method === "HEAD";
          resolve(new Response(noBody ? null : Buffer.concat(chunks), { status, statusText: res.statusMessage ?? "", headers: h }));
        });
      });
      r.on("timeout", () => r.destroy(Object.assign(new Error(`no answer within ${o.timeoutMs} ms`), { code: "ETIMEDOUT" })));
      r.on("error", (err: NodeJS.ErrnoException) => reject(new TransportError(req.url, err.code ?? "EUNKNOWN", err.message, { cause: err })));
      r.end(body);
    });
  };
}
