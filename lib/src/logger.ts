import { pino, type Logger, type DestinationStream } from "pino";

export type { Logger };

/** JSON logs to stdout (or a given stream, for tests). Level from the caller's config. */
export function createLogger(component: string, level = "info", dest?: DestinationStream): Logger {
  const opts = { level, base: { component }, timestamp: pino.stdTimeFunctions.isoTime };
  return dest ? pino(opts, dest) : pino(opts);
}
