# weft lease server and agent image (Debian 12 + Node 20).
FROM node:20-bookworm-slim
# nftables/iptables: the agent's masquerade and forward rules; wireguard-go: its wireguard backend on kernels without WireGuard.
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ iproute2 nftables iptables wireguard-go ca-certificates \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/weft
# The image's node lives in /usr/local; native addons build against its headers.
ENV npm_config_nodedir=/usr/local
COPY package.json package-lock.json .npmrc buf.yaml buf.gen.yaml tsconfig.json ./
COPY proto proto
COPY scripts scripts
COPY lib lib
COPY lease-server lease-server
COPY node-agent node-agent
COPY bench bench
COPY test test
COPY bin bin
RUN npm ci --no-audit --no-fund && npm prune --omit=dev --ignore-scripts
ENTRYPOINT ["/opt/weft/bin/weft-lease-server"]
