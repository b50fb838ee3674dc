// weft-lease-server entry point: the only place with signals and exit codes.
import { formatHelp } from "../../lib/src/flags.js";
import { isWeftError } from "../../lib/src/errors.js";
import { createLogger } from "../../lib/src/logger.js";
import { BIN, FLAGS, loadServerConfig } from "./config.js";
import { startLeaseServer } from "./server.js";

/** `env`: the WEFT_<FLAG> variables that set flags; the config loader gets it from here and never reads process.env itself. */
export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<void> {
  let cfg;
  try {
    cfg = loadServerConfig(argv, env, (warning) => process.stderr.write(`${BIN}: ${warning}\n`));
  } catch (err) {
    process.stderr.write(`${BIN}: ${isWeftError(err) ? err.message : `unexpected error reading the configuration: ${String(err)}`}\n`);
    process.exit(2);
  }
  if (!cfg) {
    process.stdout.write(formatHelp(BIN, "Hands out node subnets of the cluster network and streams lease changes to weft agents.", FLAGS));
    return;
  }
  const log = createLogger("lease-server", cfg.logLevel);
  if (!cfg.tls) log.warn("gRPC is plaintext (--insecure): anyone who can reach the port can take or release leases");
  // loadServerConfig refused admin routes without credentials beyond loopback.
  if (!cfg.adminToken && !cfg.httpTls?.clientCa) {
    log.warn("no admin credentials: the REST routes that change state (revoke, reservations, join tokens) answer 401; add --admin-token-file FILE to use them");
  }
  let server;
  try {
    server = await startLeaseServer(cfg, { log });
  } catch (err) {
    process.stderr.write(`${BIN}: ${isWeftError(err) ? err.message : String(err)}\n`);
    process.exit(1);
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "shutting down");
    server.close().then(() => process.exit(0), (err) => {
      log.error({ err }, "shutdown failed");
      process.exit(1);
    });
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}
