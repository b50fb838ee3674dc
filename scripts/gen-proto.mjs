// Generates gen/weft/v1/lease.ts from proto/ with buf + ts-proto (both from npm,
// so a fresh machine needs no protoc).
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
rmSync(new URL("../gen", import.meta.url), { recursive: true, force: true });
execFileSync("npx", ["--no-install", "buf", "generate"], { stdio: "inherit", cwd: new URL("..", import.meta.url) });
