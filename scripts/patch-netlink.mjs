// Rebuilds the `netlink` package's native binding with a one-line fix, run by
// `npm ci` (the prepare script). Unfixed, a netlink socket whose receive
// buffer overflows (the kernel reports ENOBUFS as POLLERR) makes the binding
// build an error from a NULL string inside a libuv callback, which aborts the
// whole process; no JavaScript handler can catch it. The agent's notification
// socket can overflow when thousands of routes change at once, so the fix is
// not optional: with it the socket emits 'error' and closes, and the agent
// reopens it and resyncs everything. Safe to run again (it checks the built
// binding, not a marker).
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const pkgDir = dirname(require.resolve("netlink/package.json"));
const source = join(pkgDir, "src", "binding.cc");
const built = join(pkgDir, "build", "Release", "netlink_binding.node");
const BROKEN = 'ErrnoException(obj->Env(), -status, NULL, "error when polling socket")';
// The fixed binding carries "uv_poll" as a string of its own (the unfixed one only as a prefix).
const FIXED_MARK = Buffer.from("\0uv_poll\0");
const FIXED = 'ErrnoException(obj->Env(), -status, "uv_poll", "error when polling socket")';

const text = readFileSync(source, "utf8");
if (text.includes(BROKEN)) {
  writeFileSync(source, text.replace(BROKEN, FIXED));
} else if (!text.includes(FIXED)) {
  console.error(`patch-netlink: ${source} has neither the known bug nor the fix; check the pinned netlink version (0.3.0)`);
  process.exit(1);
}

if (existsSync(built) && readFileSync(built).includes(FIXED_MARK)) process.exit(0);

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
if (!readFileSync(built).includes(FIXED_MARK)) {
  console.error(`patch-netlink: ${built} was rebuilt but does not carry the fix`);
  process.exit(1);
}
