#!/usr/bin/env bash
# Starts the local environment: etcd, kube-apiserver, kube-controller-manager
# and a single-node KRaft Kafka, all on 127.0.0.1 with free ports and throwaway
# data under STATE_DIR (default: <repo>/.local/env). Writes:
#   STATE_DIR/kubeconfig   admin (system:masters) plus users alice, bob, mallory
#   STATE_DIR/env.json     ports, paths and users for tests
#   <env-file>             shell exports (default <repo>/.local/env.sh for make up)
# Waits for real readiness: apiserver /readyz, the controller-manager's
# service-account controller, and a Kafka metadata call through kafkajs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
state="${1:-$repo/.local/env}"
envfile="${2:-$repo/.local/env.sh}"
log() { echo "[custody-env] $*" >&2; }
t0=$(date +%s%N)
umask 077  # keys and kubeconfigs (the admin's is system:masters) are for this user only

for tool in go java mvn openssl curl setsid python3; do
  command -v "$tool" >/dev/null 2>&1 || { log "missing required tool: $tool"; exit 1; }
done
node_bin="$repo/node_modules/.bin/node"
[[ -x "$node_bin" ]] || { log "run 'npm ci' first (the project's Node 24 is missing)"; exit 1; }

if [[ -f "$state/env.json" ]] && "$here/status.sh" "$state" >/dev/null 2>&1; then
  log "already up (state in $state); 'make down' stops it"
  exit 0
fi
"$here/down.sh" "$state" >/dev/null 2>&1 || true

cache="$("$here/build.sh")"
bin="$cache/bin"
rm -rf "$state"
mkdir -p "$state"/{pki,pids,logs,etcd,kafka-data}
state="$(cd "$state" && pwd)"
# Whatever fails from here on, leave no process behind.
trap '"$here/down.sh" "$state" >/dev/null 2>&1 || true' ERR

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
ETCD_PORT=$(free_port); ETCD_PEER_PORT=$(free_port); API_PORT=$(free_port)
KAFKA_PORT=$(free_port); KAFKA_CONTROLLER_PORT=$(free_port)

# ---------------------------------------------------------------- certificates
pki="$state/pki"
( cd "$pki"
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
  openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=custody-local-ca" -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  issue() { # name subject extensions...
    local name=$1 subj=$2 ext=$3
    openssl ecparam -name prime256v1 -genkey -noout -out "$name.key.ec" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$name.key.ec" -out "$name.key"
    rm -f "$name.key.ec"
    openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr" 2>/dev/null
    printf '%b' "$ext" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -sha256 \
      -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
  }
  issue apiserver "/CN=kube-apiserver" \
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1\n"
  client="basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
  issue admin "/CN=custody-admin/O=system:masters" "$client"
  issue controller-manager "/CN=system:kube-controller-manager" "$client"
  # Ordinary users for tests: no rights until a test grants them some.
  issue alice "/CN=alice/O=agent-builders" "$client"
  issue bob "/CN=bob/O=agent-builders" "$client"
  issue mallory "/CN=mallory" "$client"
  openssl ecparam -name prime256v1 -genkey -noout -out sa.key.ec 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in sa.key.ec -out sa.key && rm -f sa.key.ec
  openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
)

b64() { base64 -w0 < "$1"; }
server="https://127.0.0.1:$API_PORT"
{
  echo "apiVersion: v1"
  echo "kind: Config"
  echo "clusters:"
  echo "- name: custody-local"
  echo "  cluster: {server: \"$server\", certificate-authority-data: $(b64 "$pki/ca.crt")}"
  echo "users:"
  for u in admin alice bob mallory; do
    echo "- name: $u"
    echo "  user: {client-certificate-data: $(b64 "$pki/$u.crt"), client-key-data: $(b64 "$pki/$u.key")}"
  done
  echo "contexts:"
  for u in admin alice bob mallory; do
    echo "- name: $u"
    echo "  context: {cluster: custody-local, user: $u, namespace: default}"
  done
  echo "current-context: admin"
} > "$state/kubeconfig"
cat > "$state/controller-manager.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: custody-local
  cluster: {server: "$server", certificate-authority-data: $(b64 "$pki/ca.crt")}
users:
- name: kcm
  user: {client-certificate-data: $(b64 "$pki/controller-manager.crt"), client-key-data: $(b64 "$pki/controller-manager.key")}
contexts:
- name: kcm
  context: {cluster: custody-local, user: kcm}
current-context: kcm
KC
chmod 600 "$state/kubeconfig" "$state/controller-manager.kubeconfig"

start() { # name command...
  local name=$1; shift
  setsid "$@" >"$state/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$state/pids/$name.pid"
}
wait_for() { # description timeout-seconds command...
  local what=$1 limit=$2; shift 2
  local deadline=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) > deadline )); then
      log "timed out waiting for $what; last log lines:"
      tail -n 30 "$state/logs/"*.log >&2 || true
      "$here/down.sh" "$state" >/dev/null 2>&1 || true
      exit 1
    fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------- etcd
start etcd "$bin/etcd" --name custody --data-dir "$state/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "custody=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn \
  --quota-backend-bytes 4294967296

# ---------------------------------------------------------------- Kafka (KRaft)
kafka_libs="$cache/kafka/libs"
cat > "$state/kafka.properties" <<PROPS
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
log.dirs=$state/kafka-data
num.partitions=3
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.flush.interval.messages=9223372036854775807
PROPS
cat > "$state/kafka-log4j2.yaml" <<'L4J'
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
L4J
java_opts=(-Xms128m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$state/kafka-log4j2.yaml" -cp "$kafka_libs/*")
cluster_id="$(java "${java_opts[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
java "${java_opts[@]}" kafka.tools.StorageTool format --standalone -t "$cluster_id" \
  -c "$state/kafka.properties" > "$state/logs/kafka-format.log" 2>&1
start kafka java "${java_opts[@]}" kafka.Kafka "$state/kafka.properties"

# ---------------------------------------------------------------- kube-apiserver
wait_for "etcd" 30 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
GOGC=400 start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --endpoint-reconciler-type none --secure-port "$API_PORT" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --service-cluster-ip-range 10.0.0.0/24 \
  --authorization-mode Node,RBAC \
  --allow-privileged=true \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$pki/sa.pub" \
  --service-account-signing-key-file "$pki/sa.key" \
  --api-audiences https://kubernetes.default.svc \
  --max-requests-inflight 800 --max-mutating-requests-inflight 400 \
  --profiling=true --v=1
api_ready() {
  curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$server/readyz" | grep -qx ok
}
wait_for "kube-apiserver /readyz" 90 api_ready

# ---------------------------------------------------------------- kube-controller-manager
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$state/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$state/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$state/controller-manager.kubeconfig" \
  --leader-elect=false --secure-port 0 \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --use-service-account-credentials=true --controllers '*' \
  --concurrent-gc-syncs 20 --kube-api-qps 500 --kube-api-burst 1000 --v=1
# The service-account controller creating `default` proves the controller
# manager is running its controllers (garbage collection starts with them).
sa_ready() {
  curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "$server/api/v1/namespaces/default/serviceaccounts/default" >/dev/null
}
wait_for "kube-controller-manager (default service account)" 90 sa_ready

# ---------------------------------------------------------------- Kafka readiness
kafka_ready() { "$node_bin" "$here/kafka-ready.ts" "127.0.0.1:$KAFKA_PORT"; }
wait_for "Kafka metadata" 90 kafka_ready

cat > "$state/env.json" <<JSON
{
  "stateDir": "$state",
  "binDir": "$bin",
  "kubeconfig": "$state/kubeconfig",
  "apiServer": "$server",
  "etcd": "http://127.0.0.1:$ETCD_PORT",
  "kafkaBrokers": "127.0.0.1:$KAFKA_PORT",
  "kafkaControllerPort": $KAFKA_CONTROLLER_PORT,
  "pki": "$pki",
  "users": ["alice", "bob", "mallory"]
}
JSON
mkdir -p "$(dirname "$envfile")"
cat > "$envfile" <<SH
# Written by 'make up' (test/env/up.sh). Source it: . $envfile
export KUBECONFIG="$state/kubeconfig"
export CUSTODY_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
export CUSTODY_ENV_DIR="$state"
case ":\$PATH:" in *":$repo/bin:"*) ;; *) export PATH="$bin:$repo/bin:\$PATH" ;; esac
SH
log "up in $(( ($(date +%s%N) - t0) / 1000000 )) ms: apiserver $server, Kafka 127.0.0.1:$KAFKA_PORT, state $state"
