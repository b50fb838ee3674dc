// The status page at /ui/: three static files (lease-server/ui/) read once at
// start-up and served with a strict Content-Security-Policy. The page itself
// reads GET /v1/network and the event stream GET /v1/events; it needs nothing
// from outside this server, so the policy allows only 'self'.
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { FastifyInstance } from "fastify";
import { WeftError } from "../../lib/src/errors.js";

// From the sources (lease-server/src/) the files are ../ui; from the compiled
// module (dist/lease-server/src/) they are the checkout's (or image's) lease-server/ui.
const CANDIDATE_DIRS = [resolve(import.meta.dirname, "../ui"), resolve(import.meta.dirname, "../../../lease-server/ui")];

const FILES = {
  "index.html": "text/html; charset=utf-8",
  "app.js": "text/javascript; charset=utf-8",
  "style.css": "text/css; charset=utf-8",
} as const;
type UiFile = keyof typeof FILES;

const HEADERS = {
  "content-security-policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "cache-control": "no-cache",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
};

/** The directory holding the status page, or undefined when it is not installed. */
export function uiDir(): string | undefined {
  return CANDIDATE_DIRS.find((d) => Object.keys(FILES).every((f) => existsSync(join(d, f))));
}

export function registerUiRoutes(app: FastifyInstance): void {
  const dir = uiDir();
  const files = dir ? new Map((Object.keys(FILES) as UiFile[]).map((f) => [f, readFileSync(join(dir, f))])) : undefined;
  if (!files) {
    // The API matters more than the page: serve it, and say on /ui/ what is missing.
    app.log.warn({ looked: CANDIDATE_DIRS }, "status page files not found; /ui/ will answer 404");
  }
  const hide = { schema: { hide: true } };
  app.get("/ui", hide, async (_req, reply) => reply.redirect("/ui/", 301));
  const serve = (file: UiFile, url: string) => app.get(url, hide, async (_req, reply) => {
    const body = files?.get(file);
    if (!body) throw new WeftError("NOT_FOUND", `the status page is not installed: ${file} is in none of ${CANDIDATE_DIRS.join(", ")}; install lease-server/ui/ with the server`);
    return reply.headers(HEADERS).type(FILES[file]).send(body);
  });
  serve("index.html", "/ui/");
  serve("app.js", "/ui/app.js");
  serve("style.css", "/ui/style.css");
}
