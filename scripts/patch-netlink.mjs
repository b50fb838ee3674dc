// Rebuilds the `netlink` package's native binding with two small fixes, run
// by `npm ci` (the prepare script):
// 1. Unfixed, a netlink socket whose receive buffer overflows (the kernel
//    reports ENOBUFS as POLLERR) makes the binding build an error from a NULL
//    string inside a libuv callback, which aborts the whole process; no
//    JavaScript handler can catch it. The agent's notification socket can
//    overflow when thousands of routes change at once, so with the fix the
//    socket emits 'error' and closes, and the agent reopens it and resyncs.
// 2. The receive buffer is asked for with SO_RCVBUFFORCE first (the agent has
//    CAP_NET_ADMIN), so it is not silently capped at net.core.rmem_max
//    (212 KiB on a stock host, far below the 8 MB the agent wants).
// Safe to run again: it checks the built binding, not a marker file.
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const pkgDir = dirname(require.resolve("netlink/package.json"));
const source = join(pkgDir, "src", "binding.cc");
const built = join(pkgDir, "build", "Release", "netlink_binding.node");
const FIXES = [
  ['ErrnoException(obj->Env(), -status, NULL, "error when polling socket")', 'ErrnoException(obj->Env(), -status, "uv_poll", "error when polling socket")'],
  ['if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size)))\n            throw ErrnoException(env, errno, "setsockopt", "Couldn\'t set receive buffer size");',
   'if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size)))\n            throw ErrnoException(env, errno, "setsockopt", "Couldn\'t set receive buffer size (weft-patched)");'],
];
// Strings only the fixed binding carries ("uv_poll" on its own; the unfixed one has it only as a prefix).
const MARKS = [Buffer.from("\0uv_poll\0"), Buffer.from("(weft-patched)")];

let text = readFileSync(source, "utf8");
for (const [broken, fixed] of FIXES) {
  if (text.includes(broken)) text = text.replace(broken, fixed);
  else if (!text.includes(fixed)) {
    console.error(`patch-netlink: ${source} has neither the known code nor the fix for:\n${broken}\ncheck the pinned netlink version (0.3.0)`);
    process.exit(1);
  }
}
writeFileSync(source, text);

const isFixed = () => existsSync(built) && MARKS.every((m) => readFileSync(built).includes(m));
if (isFixed()) process.exit(0);

// npm tells the scripts it runs where its node-gyp is (and puts a node-gyp shim on PATH).
const gyp = [process.env.npm_config_node_gyp, join(dirname(dirname(process.execPath)), "lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js")]
  .find((p) => p && existsSync(p));
const [cmd, args] = gyp ? [process.execPath, [gyp, "rebuild", "--release"]] : ["node-gyp", ["rebuild", "--release"]];
try {
  execFileSync(cmd, args, { cwd: pkgDir, stdio: ["ignore", "pipe", "pipe"] });
} catch (err) {
  process.stderr.write(String(err.stderr ?? ""));
  console.error(`patch-netlink: building the netlink binding failed (${err.message.split("\n")[0]}); it needs python3, make and g++ (scripts/setup.sh installs them)`);
  process.exit(1);
}
if (!isFixed()) {
  console.error(`patch-netlink: ${built} was rebuilt but does not carry the fixes`);
  process.exit(1);
}
