// weft-agent entry point: the only place with signals and exit codes.
import { formatHelp } from "../../lib/src/flags.js";
import { errorMessage, isWeftError } from "../../lib/src/errors.js";
import { createLogger } from "../../lib/src/logger.js";
import { Agent } from "./agent.js";
import { buildApi } from "./api.js";
import { cleanupNode } from "./cleanup.js";
import { BIN, FLAGS, loadAgentConfig } from "./config.js";
import { NetlinkDataplane } from "./dataplane/netlink-dataplane.js";
import { Firewall } from "./firewall/firewall.js";
import { LeaseClient } from "./lease-client.js";
import type { NodeIdentity } from "./identity.js";
import { createAgentMetrics } from "./metrics.js";
import { buildMetricsListener } from "./metrics-listener.js";

/** `env`: the WEFT_<FLAG> variables that set flags; the config loader gets it from here and never reads process.env itself. */
export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<void> {
  let cfg;
  try {
    cfg = loadAgentConfig(argv, env, (warning) => process.stderr.write(`${BIN}: ${warning}\n`));
  } catch (err) {
    if (isWeftError(err)) {
      process.stderr.write(`${BIN}: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  if (!cfg) {
    process.stdout.write(formatHelp(BIN, "Leases this node's subnet from the weft lease server and programs the overlay (VXLAN or host-gw routes) to every other node.", FLAGS));
    return;
  }
  if (cfg.cleanup) {
    const log = createLogger("agent", cfg.logLevel);
    const dp = new NetlinkDataplane();
    try {
      await cleanupNode(dp, log, (l) => Firewall.removeAll(l));
    } catch (err) {
      process.stderr.write(`${BIN} --cleanup: ${errorMessage(err)}\n`);
      process.exit(1);
    } finally {
      dp.close();
    }
    return;
  }
  const log = createLogger("agent", cfg.logLevel).child({ nodeId: cfg.nodeName });
  if (!cfg.tls) log.warn("lease server connection is plaintext (--insecure)");
  const metrics = createAgentMetrics();
  const dataplane = new NetlinkDataplane({
    onSocketError: (err) => log.error({ err }, "netlink socket failed; reopening, next pass resyncs"),
    // An overflow shows as POLLERR, which the binding reports as "bad file descriptor".
    onMonitorError: (err) => log.warn({ err: err.message }, "kernel notification socket failed (overflowed?); reopening it and checking everything"),
  });
  // --join-token-file: the node gets its certificate (in start-up below, once health answers) before the agent talks to the lease server.
  const identityStop = new AbortController();
  // Loaded only with a join token: @peculiar/x509 and its ASN.1 modules are ~3 MiB of heap most agents never use.
  const identity: NodeIdentity | undefined = cfg.join
    ? new (await import("./identity.js")).NodeIdentity({ nodeName: cfg.nodeName, stateDir: cfg.stateDir, servers: cfg.servers, caFile: cfg.tls!.ca!, joinToken: cfg.join.token, log: log.child({ component: "identity" }) })
    : undefined;
  let client: LeaseClient;
  try {
    // With a join token the client starts with --tls-ca alone; the node's certificate replaces it before the agent starts.
    client = new LeaseClient({ servers: cfg.servers, tls: cfg.tls, onConnectivity: (up) => metrics.serverConnected.set(up ? 1 : 0) });
  } catch (err) {
    // loadAgentConfig already validated the TLS files; this is the last guard against a stack trace.
    process.stderr.write(`${BIN}: ${errorMessage(err)}; check --tls-ca/--tls-cert/--tls-key\n`);
    process.exit(2);
  }
  const firewallLog = log.child({ component: "firewall" });
  const agent = new Agent({ config: cfg, dataplane, client, log, metrics, firewall: (o) => new Firewall(o, firewallLog) });
  const view = agent.view();
  const api = buildApi({ view, registry: metrics.registry, log, adminToken: cfg.adminToken });
  const scrape = cfg.metricsListen ? buildMetricsListener({ registry: metrics.registry, status: () => view.status(), log }) : undefined;
  let stopping = false;
  const stop = (signal: string, code = 0) => {
    if (stopping) return;
    stopping = true;
    identityStop.abort();
    log.info({ signal }, "shutting down; leaving the device, routes and lease in place");
    Promise.allSettled([agent.stop(), api.close(), scrape?.close()]).then(() => process.exit(code));
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));

  try {
    // Health answers during start-up; /readyz stays 503 until the peers are programmed.
    const address = await api.listen({ host: cfg.httpListen.host, port: cfg.httpListen.port, flag: cfg.httpListen.name });
    log.info({ address }, "api listening");
    if (scrape && cfg.metricsListen) {
      const address = await scrape.listen({ host: cfg.metricsListen.host, port: cfg.metricsListen.port, flag: cfg.metricsListen.name });
      log.info({ address }, "metrics listener listening (read-only: /metrics, /healthz, /readyz)");
    }
    if (identity) {
      try {
        await identity.ensure(identityStop.signal);
      } catch (err) {
        if (stopping) return;
        log.fatal({ err: errorMessage(err) }, "cannot get a node certificate");
        process.stderr.write(`${BIN}: ${errorMessage(err)}\n`);
        process.exit(1);
      }
      client.reloadCredentials(identity.tls);
      // New connections use the renewed certificate; open ones keep the one they were made with.
      void identity.runRenewal(identityStop.signal, () => client.reloadCredentials(identity.tls));
    }
    await agent.start();
  } catch (err) {
    if (stopping) return;
    log.fatal({ err }, "start-up failed");
    process.stderr.write(`${BIN}: ${isWeftError(err) ? err.message : String(err)}\n`);
    // Exit 2 is for flags and config files (loadAgentConfig, above), which systemd does not retry; what fails
    // here (a port in use, a device weft did not create) may be fixed while it retries.
    process.exit(1);
  }
  agent.fatal.catch((err) => {
    log.fatal({ err }, "agent cannot continue");
    stop("fatal", 1);
  });
}
