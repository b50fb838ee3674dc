// REST routes for join tokens: make one (its text is in this answer only),
// list them (never the secret), delete one. All admin routes (config.admin:
// http-auth.ts checks the caller first).
import type { FastifyInstance } from "fastify";
import { Type, type TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import { WeftError, invalid } from "../../../lib/src/errors.js";
import { formatDuration, parseDuration } from "../../../lib/src/duration.js";
import type { JoinTokenRecord, JoinTokens } from "./join-tokens.js";
import { TOKEN_ID_RE } from "./join-tokens.js";

const TTL_MIN_MS = 60_000;
const TTL_MAX_MS = 30 * 86_400_000;
const USES_MAX = 10_000;

const CreateBody = Type.Object({
  ttl: Type.Optional(Type.String({ description: "how long the token can be used, 1m to 30d, e.g. 30m, 1h, 7d (default 1h)", examples: ["1h"] })),
  uses: Type.Optional(Type.Integer({ minimum: 1, maximum: USES_MAX, description: "how many nodes may join with it (default 1)", examples: [10] })),
}, { additionalProperties: false });
const TokenInfo = Type.Object({
  id: Type.String({ description: "the public part of the token (before the dot)" }),
  expiresAt: Type.String({ format: "date-time" }),
  uses: Type.Integer({ description: "uses it was made with" }),
  usesLeft: Type.Integer(),
  createdAt: Type.String({ format: "date-time" }),
});
const Created = Type.Object({
  token: Type.String({ description: "<id>.<secret>; shown only here: give it to the agent with --join-token-file" }),
  id: Type.String(),
  expiresAt: Type.String({ format: "date-time" }),
  uses: Type.Integer(),
});
const IdParam = Type.Object({ id: Type.String({ description: "the token id (6 characters a-z, 0-9)" }) });

const info = (t: JoinTokenRecord) => ({
  id: t.id, expiresAt: new Date(t.expiresAt).toISOString(), uses: t.uses, usesLeft: Math.max(0, t.usesLeft), createdAt: new Date(t.createdAt).toISOString(),
});

/** What http-api.ts shares with every admin route: auth config, security and error responses for the OpenAPI document. */
export interface AdminRouteParts {
  readonly config: Record<string, unknown>;
  readonly security: readonly Record<string, readonly string[]>[];
  readonly responses: Record<number, unknown>;
}

/** `tokens` undefined: the gRPC port has no TLS, so there is nothing to join; the routes say so. */
export function registerJoinTokenRoutes(app: FastifyInstance, tokens: JoinTokens | undefined, admin: AdminRouteParts, problems: Record<number, unknown>): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const need = (): JoinTokens => {
    if (!tokens) throw new WeftError("FAILED_PRECONDITION", "join tokens need TLS on the gRPC port: start the lease server with --tls-cert/--tls-key instead of --insecure");
    return tokens;
  };
  const errors = { ...problems, ...admin.responses };
  const security = [...admin.security];

  r.post("/v1/join-tokens", {
    config: admin.config,
    schema: { summary: "Make a join token: a new node trades it for its client certificate (agent --join-token-file)", security, body: CreateBody, response: { 201: Created, ...errors } },
  }, async (req, reply) => {
    const ttlText = req.body.ttl ?? "1h";
    const ttl = parseDuration(ttlText);
    if (ttl === undefined || ttl < TTL_MIN_MS || ttl > TTL_MAX_MS) {
      throw invalid("ttl", `${JSON.stringify(ttlText)} is not a duration from 1m to 30d`, "write it like 30m, 1h or 7d");
    }
    const uses = req.body.uses ?? 1;
    const { token, record } = await need().create(ttl, uses);
    req.log.info({ id: record.id, ttl: formatDuration(ttl), uses }, "join token made");
    return reply.code(201).send({ token, id: record.id, expiresAt: new Date(record.expiresAt).toISOString(), uses });
  });

  r.get("/v1/join-tokens", {
    config: admin.config,
    schema: { summary: "Join tokens (ids, expiry and uses left; never the secret), expired ones for a day after", security, response: { 200: Type.Array(TokenInfo), ...errors } },
  }, async () => (await need().list()).map(info));

  r.delete("/v1/join-tokens/:id", {
    config: admin.config,
    schema: { summary: "Delete a join token; nodes that joined with it keep their certificates", security, params: IdParam, response: { 204: Type.Null(), ...errors } },
  }, async (req, reply) => {
    if (!TOKEN_ID_RE.test(req.params.id)) throw invalid("id", `${JSON.stringify(req.params.id.slice(0, 40))} is not a token id`, "pass the 6 characters before the dot; GET /v1/join-tokens lists them");
    if (!(await need().delete(req.params.id))) throw new WeftError("NOT_FOUND", `no join token ${req.params.id}; GET /v1/join-tokens lists them`);
    return reply.code(204).send(null);
  });
}
