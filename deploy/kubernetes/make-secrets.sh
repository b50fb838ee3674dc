#!/bin/sh
# Makes the credentials the manifests in this directory mount, and the join
# token agents trade for their own certificates. Needs openssl; kubectl and
# curl for the cluster steps.
#
#   ./make-secrets.sh certs [--san IP:1.2.3.4,DNS:name] [--out DIR --cluster-ip IP]
#       Creates the namespace and the lease-server Service (the server
#       certificate names its ClusterIP), then whichever of these is missing:
#         Secret lease-server-tls + ConfigMap lease-server-ca: the server's
#           certificate and the CA agents check it with (a fresh CA whose key is
#           thrown away, so it vouches for this one certificate only);
#         Secret lease-server-node-ca: the CA that signs node certificates
#           (replacing it makes every node join again);
#         Secret lease-server-admin-token: the REST API's admin token.
#       --san adds names, e.g. node addresses when agents use --server NODE_IP:7600.
#       With --out it only writes the files, laid out as DIR/<object>/<key>.
#
#   ./make-secrets.sh join-token [--uses N] [--ttl DURATION]
#       Asks the running lease server (through kubectl port-forward) for a join
#       token good for N nodes (default: the cluster's node count) for DURATION
#       (default 24h, at most 30d), and stores it in the Secret weft-join-token.
#       Run it again when new nodes join later.
set -eu

NS=weft
HERE=$(cd "$(dirname "$0")" && pwd)

die() { echo "make-secrets.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is not installed; it is needed for this step"; }
exists() { kubectl -n "$NS" get "$1" "$2" >/dev/null 2>&1; }

# A P-256 key in PKCS#8, the form every consumer (node, grpc-js) reads.
new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

new_ca() { # KEY CERT CN
  new_key "$1"
  openssl req -x509 -new -key "$1" -sha256 -days 3650 -subj "/CN=$3" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$2"
}

make_server_tls() { # DIR CLUSTER_IP EXTRA_SANS
  d=$1
  mkdir -p "$d/lease-server-tls" "$d/lease-server-ca" "$d/.work"
  new_ca "$d/.work/ca.key" "$d/lease-server-ca/ca.crt" "weft lease server CA"
  new_key "$d/lease-server-tls/tls.key"
  openssl req -new -key "$d/lease-server-tls/tls.key" -subj "/CN=lease-server.$NS.svc" -out "$d/.work/tls.csr"
  sans="IP:$2,DNS:lease-server.$NS.svc,DNS:lease-server.$NS.svc.cluster.local,IP:127.0.0.1${3:+,$3}"
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$sans" > "$d/.work/ext.cnf"
  openssl x509 -req -in "$d/.work/tls.csr" -CA "$d/lease-server-ca/ca.crt" -CAkey "$d/.work/ca.key" -CAserial "$d/.work/ca.srl" -CAcreateserial \
    -days 1825 -sha256 -extfile "$d/.work/ext.cnf" -out "$d/lease-server-tls/tls.crt" 2>/dev/null
  rm -rf "$d/.work"
}

make_node_ca() { mkdir -p "$1/lease-server-node-ca"; new_ca "$1/lease-server-node-ca/tls.key" "$1/lease-server-node-ca/tls.crt" "weft node CA"; }

make_admin_token() {
  mkdir -p "$1/lease-server-admin-token"
  head -c 32 /dev/urandom | base64 | tr -d '\n' > "$1/lease-server-admin-token/admin-token"
}

certs() {
  out="" cluster_ip="" sans=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --out) out=${2:?--out needs a directory}; shift 2 ;;
      --cluster-ip) cluster_ip=${2:?--cluster-ip needs an address}; shift 2 ;;
      --san) sans=${2:?--san needs names like IP:10.0.0.1,DNS:cp-1}; shift 2 ;;
      *) die "certs: unknown argument $1 (see the top of $0)" ;;
    esac
  done
  need openssl
  umask 077
  if [ -n "$out" ]; then
    [ -n "$cluster_ip" ] || die "certs --out needs --cluster-ip: the lease-server Service's ClusterIP"
    make_server_tls "$out" "$cluster_ip" "$sans"
    make_node_ca "$out"
    make_admin_token "$out"
    echo "wrote $out/{lease-server-tls,lease-server-ca,lease-server-node-ca,lease-server-admin-token}"
    return
  fi

  need kubectl
  kubectl apply -f "$HERE/namespace.yaml" -f "$HERE/lease-server-service.yaml"
  cluster_ip=$(kubectl -n "$NS" get service lease-server -o jsonpath='{.spec.clusterIP}')
  [ -n "$cluster_ip" ] || die "the lease-server Service has no ClusterIP"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT

  if exists secret lease-server-tls && exists configmap lease-server-ca; then
    echo "kept: Secret lease-server-tls, ConfigMap lease-server-ca"
  elif exists secret lease-server-tls || exists configmap lease-server-ca; then
    die "only one of Secret lease-server-tls and ConfigMap lease-server-ca exists; they belong together: kubectl -n $NS delete secret lease-server-tls; kubectl -n $NS delete configmap lease-server-ca; then run this again"
  else
    make_server_tls "$tmp" "$cluster_ip" "$sans"
    kubectl -n "$NS" create secret generic lease-server-tls --type=kubernetes.io/tls --from-file="$tmp/lease-server-tls"
    kubectl -n "$NS" create configmap lease-server-ca --from-file="$tmp/lease-server-ca"
  fi
  if exists secret lease-server-node-ca; then echo "kept: Secret lease-server-node-ca"; else
    make_node_ca "$tmp"
    kubectl -n "$NS" create secret generic lease-server-node-ca --type=kubernetes.io/tls --from-file="$tmp/lease-server-node-ca"
  fi
  if exists secret lease-server-admin-token; then echo "kept: Secret lease-server-admin-token"; else
    make_admin_token "$tmp"
    kubectl -n "$NS" create secret generic lease-server-admin-token --from-file="$tmp/lease-server-admin-token"
  fi
}

join_token() {
  uses="" ttl=24h port=${LOCAL_PORT:-17601}
  while [ $# -gt 0 ]; do
    case "$1" in
      --uses) uses=${2:?--uses needs a number}; shift 2 ;;
      --ttl) ttl=${2:?--ttl needs a duration like 24h}; shift 2 ;;
      *) die "join-token: unknown argument $1 (see the top of $0)" ;;
    esac
  done
  need kubectl; need curl
  [ -n "$uses" ] || uses=$(kubectl get nodes --no-headers | wc -l | tr -d ' ')
  umask 077
  tmp=$(mktemp -d)
  kubectl -n "$NS" get configmap lease-server-ca -o jsonpath='{.data.ca\.crt}' > "$tmp/ca.crt"
  # In a file, not on curl's command line, where ps would show it.
  printf 'Authorization: Bearer %s\n' "$(kubectl -n "$NS" get secret lease-server-admin-token -o jsonpath='{.data.admin-token}' | base64 -d)" > "$tmp/auth"
  kubectl -n "$NS" port-forward service/lease-server "$port:7601" >"$tmp/port-forward.log" 2>&1 &
  pf=$!
  trap 'kill $pf 2>/dev/null; rm -rf "$tmp"' EXIT
  i=0
  until curl -sf --cacert "$tmp/ca.crt" "https://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 30 ] || die "the lease server did not answer through port-forward in 30 s: kubectl -n $NS get pods; $(cat "$tmp/port-forward.log")"
    sleep 1
  done
  reply=$(curl -sS --cacert "$tmp/ca.crt" -H "@$tmp/auth" -H 'Content-Type: application/json' \
    -d "{\"ttl\":\"$ttl\",\"uses\":$uses}" "https://127.0.0.1:$port/v1/join-tokens")
  token=$(printf '%s' "$reply" | sed -n 's/.*"token" *: *"\([^"]*\)".*/\1/p')
  [ -n "$token" ] || die "the lease server made no join token: $reply"
  kubectl -n "$NS" create secret generic weft-join-token --from-literal=token="$token" --dry-run=client -o yaml | kubectl apply -f -
  echo "Secret weft-join-token: a token for $uses node(s), valid $ttl"
}

case "${1:-}" in
  certs) shift; certs "$@" ;;
  join-token) shift; join_token "$@" ;;
  *) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
