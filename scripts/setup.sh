#!/usr/bin/env bash
# Installs what weft needs on Debian 12 (as root): the system packages its
# demo and tests use, then the npm dependencies (npm ci also generates the
# gRPC code and compiles TypeScript to dist/). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  iproute2 iputils-ping procps curl openssl ca-certificates   # namespaces, veth, ping, agent API checks, test certificates
  containernetworking-plugins                             # /usr/lib/cni/bridge and host-local for pods
  iperf3                                                  # throughput benchmark
  prometheus                                              # promtool, to lint /metrics
  python3 make g++                                        # better-sqlite3 compiles from source
)

need_node() {
  echo "setup: weft needs Node.js >= 20.19 with npm; found: $(node --version 2>/dev/null || echo none)." >&2
  echo "setup: install Node.js 20 LTS (https://nodejs.org or your distribution's nodejs 20 package), then run this again." >&2
  exit 1
}
command -v node >/dev/null || need_node
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' || need_node

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup: missing system packages: ${missing[*]}" >&2
    echo "setup: install them (apt-get install ${missing[*]}) as root, then run this again." >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ] || [ ! -f dist/lease-server/src/main.js ]; then
  npm ci --no-audit --no-fund
else
  npm run --silent prepare
fi
