// weftctl's commands (commander): what each one asks the lease server or the
// agent, and how it prints the answer.
import { readFileSync } from "node:fs";
import { Command, Option } from "commander";
import { parseCidr, formatCidr } from "../../lib/src/cidr.js";
import { parseDuration } from "../../lib/src/duration.js";
import { isWeftError } from "../../lib/src/errors.js";
import { validateNodeName } from "../../lib/src/lease.js";
import { agentClient, expectOk, type Endpoint } from "./api-client.js";
import { Context, DEFAULT_SERVER_URL, parseUrl, sourceName, type Io } from "./context.js";
import { CliError, EXIT, EXIT_CODES_HELP, usage } from "./exit-codes.js";
import { nodeFetch } from "./http-transport.js";
import { leasesView, networkView, nodesView, peersView, reservationsView, type NodesBody } from "./views.js";

export const BIN = "weftctl";
const DEFAULT_AGENT_URL = "http://127.0.0.1:9464";
const POLL_MS = 500;

/** "10.244.3.0/24" or Flannel's "10.244.3.0-24"; anything else is a usage error naming the argument. */
export function parseSubnetArg(raw: string, arg = "SUBNET"): string {
  const s = /-\d{1,2}$/.test(raw) ? raw.replace(/-(\d{1,2})$/, "/$1") : raw;
  const net = parseCidr(s);
  if (net) return formatCidr(net);
  const loose = parseCidr(s, false);
  if (loose) throw usage(`${arg}: ${raw} has host bits set; did you mean ${formatCidr(loose)}?`);
  throw usage(`${arg}: ${JSON.stringify(raw)} is not a subnet; write it like 10.244.7.0/24`);
}

/** The lease server's path form of a subnet: 10.244.3.0/24 -> 10.244.3.0-24 (no %2F through proxies). */
const pathSubnet = (subnet: string) => subnet.replace("/", "-");

const notConverged = (b: NodesBody) => b.nodes.filter((n) => n.state !== "converged");

function describeNotConverged(b: NodesBody): string {
  const list = notConverged(b).slice(0, 10).map((n) => {
    if (n.state === "lagging") return `${n.nodeName} lagging (applied ${n.appliedRevision} of ${b.revision})`;
    if (n.state === "unhealthy") return `${n.nodeName} unhealthy${n.problems[0] ? ` (${n.problems[0]})` : ""}`;
    return `${n.nodeName} ${n.state}`;
  });
  const more = notConverged(b).length - list.length;
  return list.join(", ") + (more > 0 ? ` and ${more} more` : "");
}

export function buildProgram(io: Io): Command {
  const program = new Command(BIN);
  const ctx = (cmd: Command) => new Context(cmd, io);
  program
    .description("Operator CLI of weft: the fleet's nodes and leases, reservations and revocations (lease server REST API), and an agent's peers.")
    .version(`${BIN} ${readVersion()}`, "-V, --version", "print weftctl's version")
    .addOption(new Option("--server-url <url>", "the lease server's REST API (its --http-listen)").env("WEFT_SERVER_URL").default(DEFAULT_SERVER_URL))
    .addOption(new Option("--admin-token-file <file>", "file holding the lease server's admin token, for reserve, unreserve and revoke (or WEFT_ADMIN_TOKEN with the token itself)").env("WEFT_ADMIN_TOKEN_FILE"))
    .addOption(new Option("--ca <file>", "PEM CA that signed the lease server's HTTPS certificate (default: the system's CAs)"))
    .addOption(new Option("--cert <file>", "PEM admin client certificate for HTTPS (one the server's --admin-client-ca signed), instead of a token"))
    .addOption(new Option("--key <file>", "PEM private key of --cert"))
    .addOption(new Option("-o, --output <format>", "table for people, json for scripts (the API's JSON, unchanged)").choices(["table", "json"]).default("table"))
    .addOption(new Option("--timeout <duration>", "give up on a request after this long").default("10s"))
    .showHelpAfterError(`(run ${BIN} --help, or ${BIN} <command> --help)`)
    .exitOverride()
    .configureOutput({
      writeOut: io.out,
      writeErr: io.err,
      outputError: (s, write) => write(`${BIN}: ${s.replace(/^error: /, "")}`),
    })
    .addHelpText("after", `
Environment:
  WEFT_SERVER_URL        --server-url
  WEFT_ADMIN_TOKEN_FILE  --admin-token-file
  WEFT_ADMIN_TOKEN       the admin token itself (when no token file is given)
  WEFT_AGENT_URL         peers --agent-url
A flag on the command line wins over the environment.

${EXIT_CODES_HELP}

Examples:
  ${BIN} nodes
  ${BIN} nodes --wait-converged 30s    # exit 0 once every node applied the newest change, 4 on timeout
  ${BIN} -o json leases | jq -r '.[].subnet'
  ${BIN} --admin-token-file /etc/weft/admin-token reserve 10.244.7.0/24 node-7`);

  const withExitCodes = (c: Command) => c.addHelpText("after", `\n${EXIT_CODES_HELP}`);

  withExitCodes(program.command("nodes")
    .description("every node: its lease, state (converged, lagging, unhealthy, disconnected), applied revision, health and last report; then the fleet summary")
    .option("--check", "exit 4 when some node is not converged")
    .option("--wait-converged <duration>", "poll until every node is converged (exit 0), or exit 4 after this long (e.g. 30s)")
    .action(async (o: { check?: boolean; waitConverged?: string }, cmd: Command) => {
      const c = ctx(cmd);
      const waitMs = o.waitConverged === undefined ? undefined : parseDuration(o.waitConverged);
      if (o.waitConverged !== undefined && waitMs === undefined) throw usage(`--wait-converged: ${JSON.stringify(o.waitConverged)} is not a duration; write it like 30s or 2m`);
      const server = c.leaseServer();
      const get = () => server.ok(server.client.GET("/v1/nodes"));
      let body = await get();
      if (waitMs !== undefined) {
        const deadline = Date.now() + waitMs;
        while (notConverged(body).length > 0 && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, Math.min(POLL_MS, Math.max(0, deadline - Date.now()))));
          body = await get();
        }
      }
      c.print(body, () => nodesView(body, io.now()));
      if ((o.check || waitMs !== undefined) && notConverged(body).length > 0) {
        const after = waitMs !== undefined ? ` after ${o.waitConverged}` : "";
        throw new CliError(EXIT.NOT_CONVERGED, `not converged${after}: ${describeNotConverged(body)}`);
      }
    }));

  withExitCodes(program.command("leases")
    .description("all live leases: subnet, node, public IP, backend, expiry, revision")
    .action(async (_o, cmd: Command) => {
      const c = ctx(cmd);
      const server = c.leaseServer();
      const leases = await server.ok(server.client.GET("/v1/leases"));
      c.print(leases, () => leasesView(leases, io.now()));
    }));

  withExitCodes(program.command("network")
    .description("the cluster network config (net-conf.json with defaults) and how much of it is leased")
    .action(async (_o, cmd: Command) => {
      const c = ctx(cmd);
      const server = c.leaseServer();
      const n = await server.ok(server.client.GET("/v1/network"));
      c.print(n, () => networkView(n));
    }));

  withExitCodes(program.command("reservations")
    .description("subnets reserved for node names")
    .action(async (_o, cmd: Command) => {
      const c = ctx(cmd);
      const server = c.leaseServer();
      const r = await server.ok(server.client.GET("/v1/reservations"));
      c.print(r, () => reservationsView(r));
    }));

  withExitCodes(program.command("reserve")
    .description("reserve SUBNET (e.g. 10.244.7.0/24) for the node named NODE: only that node gets it (needs the admin token)")
    .argument("<subnet>", "a node subnet of the network, e.g. 10.244.7.0/24")
    .argument("<node>", "the node name (as the agent's --node-name)")
    .action(async (rawSubnet: string, node: string, _o, cmd: Command) => {
      const subnet = parseSubnetArg(rawSubnet);
      try {
        validateNodeName(node, "NODE");
      } catch (err) {
        throw isWeftError(err) ? usage(err.message) : err;
      }
      const c = ctx(cmd);
      const server = c.leaseServer("reserve");
      const r = await server.ok(server.client.POST("/v1/reservations", { body: { subnet, nodeName: node } }));
      c.print(r, () => `reserved ${r.subnet} for ${r.nodeName}\n`);
    }));

  withExitCodes(program.command("unreserve")
    .description("delete the reservation of SUBNET (needs the admin token)")
    .argument("<subnet>", "a reserved subnet, e.g. 10.244.7.0/24")
    .action(async (rawSubnet: string, _o, cmd: Command) => {
      const subnet = parseSubnetArg(rawSubnet);
      const c = ctx(cmd);
      const server = c.leaseServer("unreserve");
      await server.ok(server.client.DELETE("/v1/reservations/{subnet}", { params: { path: { subnet: pathSubnet(subnet) } } }));
      // 204: the API returns no JSON, so -o json prints nothing either.
      if (!c.json) io.out(`deleted the reservation of ${subnet}\n`);
    }));

  withExitCodes(program.command("revoke")
    .description("revoke the lease on SUBNET: peers drop the node at once, and its agent re-acquires only after a back-off (needs the admin token)")
    .argument("<subnet>", "a leased subnet, e.g. 10.244.3.0/24")
    .option("--reason <text>", "why (at most 200 printable ASCII characters); the node's agent logs it")
    .action(async (rawSubnet: string, o: { reason?: string }, cmd: Command) => {
      const subnet = parseSubnetArg(rawSubnet);
      const c = ctx(cmd);
      const server = c.leaseServer("revoke");
      const query = o.reason ? { reason: o.reason } : {};
      const l = await server.ok(server.client.DELETE("/v1/leases/{subnet}", { params: { path: { subnet: pathSubnet(subnet) }, query } }));
      c.print(l, () => `revoked the lease of ${l.nodeName} on ${l.subnet}\n`);
    }));

  withExitCodes(program.command("peers")
    .description("an agent's view of the other nodes: programmed in its kernel or not, and why (the agent's REST API, not the lease server)")
    .addOption(new Option("--agent-url <url>", "the agent's REST API (its --http-listen)").env("WEFT_AGENT_URL").default(DEFAULT_AGENT_URL))
    .action(async (o: { agentUrl: string }, cmd: Command) => {
      const c = ctx(cmd);
      const name = sourceName(cmd, "agentUrl", "--agent-url", "WEFT_AGENT_URL");
      const agent: Endpoint = { url: parseUrl(o.agentUrl, name, DEFAULT_AGENT_URL), what: "the agent", urlFlag: name, timeoutMs: c.timeoutMs };
      const peers = await expectOk(agent, agentClient(agent, nodeFetch({ timeoutMs: c.timeoutMs })).GET("/v1/peers"));
      c.print(peers, () => peersView(peers, io.now()));
    }));

  return program;
}

/** weft's package.json version, found from this file in src/ or dist/. */
function readVersion(): string {
  for (const rel of ["../../package.json", "../../../package.json"]) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), "utf8")) as { name?: string; version?: string };
      if (pkg.name === "weft" && pkg.version) return pkg.version;
    } catch { /* try the next level */ }
  }
  return "unknown";
}
