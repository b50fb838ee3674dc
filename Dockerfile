# weft lease server and agent image (Debian 12 + Node 20).
# The build stage has the compilers (better-sqlite3 and the netlink binding are
# native addons) and the dev dependencies (buf, ts-proto, TypeScript); the
# runtime stage gets only the compiled daemons and the production node_modules.
# Both stages use the same Node image, so the addons match its ABI.
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/weft
# The image's node lives in /usr/local; native addons build against its headers (.npmrc says /usr).
ENV npm_config_nodedir=/usr/local
COPY package.json package-lock.json .npmrc buf.yaml buf.gen.yaml tsconfig.json ./
COPY proto proto
COPY scripts scripts
COPY lib lib
COPY lease-server lease-server
COPY node-agent node-agent
COPY cli cli
# npm run gen makes weftctl's REST client types from the OpenAPI documents.
COPY api-docs/lease-server.openapi.json api-docs/node-agent.openapi.json api-docs/
# tsconfig.json also compiles bench/ and scripts/, which import test/e2e: needed
# here for the build to pass, never copied into the runtime stage.
COPY bench bench
COPY test test
# npm ci runs the prepare script: patches the netlink binding, generates gen/, compiles dist/.
RUN npm ci --no-audit --no-fund && npm prune --omit=dev --ignore-scripts --no-audit --no-fund

FROM ${NODE_IMAGE} AS runtime
# For the agent (the Kubernetes DaemonSet runs this image as root with
# CAP_NET_ADMIN/CAP_NET_RAW): iproute2 for debugging, nftables and iptables for
# its masquerade and forward rules, wireguard-go for its wireguard backend on
# kernels without WireGuard. The lease server needs none of them.
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 nftables iptables wireguard-go ca-certificates \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/weft
ENV NODE_ENV=production
# "type": "module" in package.json makes dist/*.js ES modules.
COPY --from=build /opt/weft/package.json ./
COPY --from=build /opt/weft/node_modules node_modules
COPY --from=build /opt/weft/dist/gen dist/gen
COPY --from=build /opt/weft/dist/lib dist/lib
COPY --from=build /opt/weft/dist/lease-server dist/lease-server
# The status page (/ui/): static files the compiled server reads at start-up.
COPY --from=build /opt/weft/lease-server/ui lease-server/ui
COPY --from=build /opt/weft/dist/node-agent dist/node-agent
# bin/weftctl, the operator CLI: docker exec <container> bin/weftctl nodes
COPY --from=build /opt/weft/dist/cli dist/cli
COPY bin bin
# compose.yaml's one-shot init (admin token, TLS and node CA on the first run).
COPY deploy/compose/init.mjs deploy/compose/init.mjs
# The lease server's user: a fixed uid, so volumes and Kubernetes'
# runAsUser/fsGroup can name it. Its state dir and compose's key volume are its
# own; the program files stay root's, read-only to it.
RUN groupadd --system --gid 10001 weft \
  && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/weft --shell /usr/sbin/nologin weft \
  && install -d -o 10001 -g 10001 -m 0700 /var/lib/weft /etc/weft/pki
USER 10001:10001
EXPOSE 7600 7601
ENTRYPOINT ["/opt/weft/bin/weft-lease-server"]
