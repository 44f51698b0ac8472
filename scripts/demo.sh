#!/usr/bin/env bash
# `make demo`: installs the Helm chart into the local environment (make up),
# runs the operator outside the cluster as the chart's ServiceAccount (the
# local environment has no kubelet, so the chart's Deployment runs no pods;
# webhook.url points the API server at this process, as
# test/integration/chart.test.ts proves), applies examples/ and shows the
# result: the tasks, the delegation tree and the audit answer for the
# sub-agent. The environment and the operator stay up; `make down` stops both.
#
#   scripts/demo.sh          install (or upgrade), (re)start the operator, apply, show
#   scripts/demo.sh stop     stop the demo's operator (make down calls this)
#
# Safe to run twice: helm upgrade --install, kubectl apply, the operator restarted.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
local_dir="$repo/.local"
pid_file="$local_dir/demo-operator.pid"
log_file="$local_dir/demo-operator.log"
kubeconfig_op="$local_dir/demo-operator.kubeconfig"
ports_file="$local_dir/demo-ports"
# Not "custody": the fullname (custody-demo) then names no object that `make run`
# or the integration tests apply from webhook/manifests (custody-*).
release="custody-demo"
op_ns="custody-system"
demo_ns="agents"
node="$repo/node_modules/.bin/node"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
  printf '\ndemo: %s\n' "$*" >&2
  exit 1
}

stop_operator() {
  [[ -f "$pid_file" ]] || return 0
  local pid
  pid="$(cat "$pid_file")"
  if kill -0 "$pid" 2>/dev/null; then
    # SIGTERM: the operator releases its Lease and writes its checkpoint.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "[custody-demo] operator stopped (pid $pid)" >&2
  fi
  rm -f "$pid_file"
}

if [[ "${1:-}" == "stop" ]]; then
  stop_operator
  exit 0
fi
[[ $# -eq 0 ]] || die "usage: scripts/demo.sh [stop]"

[[ -f "$local_dir/env.sh" ]] || die "no local environment: run 'make up' first (make demo does)"
[[ -f "$repo/dist/operator/main.js" ]] || die "no build: run 'make build' first (make demo does)"
# shellcheck source=/dev/null
source "$local_dir/env.sh"
kubectl get --raw /readyz >/dev/null 2>&1 || die "the local API server does not answer: 'make down && make demo'"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
port_in_use() { python3 -c 'import socket,sys; s=socket.socket(); sys.exit(0 if s.connect_ex(("127.0.0.1",int(sys.argv[1])))==0 else 1)' "$1"; }

# An earlier demo's operator: stopped, then started again with this run's settings.
stop_operator

# Ports: the webhook's is in the chart's webhook.url, so a second run keeps it (when free).
webhook_port=""
health_port=""
identity_port=""
if [[ -f "$ports_file" ]]; then
  read -r webhook_port health_port identity_port <"$ports_file" || true
  if [[ -n "$webhook_port" ]] && port_in_use "$webhook_port"; then webhook_port=""; fi
  if [[ -n "$health_port" ]] && port_in_use "$health_port"; then health_port=""; fi
  if [[ -n "$identity_port" ]] && port_in_use "$identity_port"; then identity_port=""; fi
fi
[[ -n "$webhook_port" ]] || webhook_port="$(free_port)"
[[ -n "$health_port" ]] || health_port="$(free_port)"
[[ -n "$identity_port" ]] || identity_port="$(free_port)"
echo "$webhook_port $health_port $identity_port" >"$ports_file"
issuer="https://127.0.0.1:$identity_port"

say "Installing the chart (release $release in namespace $op_ns)"
info "webhook.url=https://127.0.0.1:$webhook_port: the API server calls the operator running outside the cluster"
info "replicas=0: the local environment runs no pods, the operator below serves the webhooks"
info "webhook.namespaceSelector: the namespace $demo_ns only (nothing else in the environment is touched)"
values="$local_dir/demo-values.json"
cat >"$values" <<EOF
{
  "replicas": 0,
  "podDisruptionBudget": { "enabled": false },
  "kafka": { "brokers": "$CUSTODY_KAFKA_BROKERS", "partitions": 1 },
  "identity": { "issuer": "$issuer" },
  "webhook": {
    "url": "https://127.0.0.1:$webhook_port",
    "namespaceSelector": {
      "matchExpressions": [{ "key": "kubernetes.io/metadata.name", "operator": "In", "values": ["$demo_ns"] }]
    }
  }
}
EOF
# --take-ownership: the CRD may exist already (make run or the tests apply crds/ with kubectl).
helm upgrade --install "$release" "$repo/charts/custody" -n "$op_ns" --create-namespace \
  --take-ownership --timeout 60s -f "$values" | sed 's/^/    /'

say "Running the operator as the chart's ServiceAccount (log: .local/demo-operator.log)"
manifest="$(helm get manifest "$release" -n "$op_ns")"
sa="$(printf '%s' "$manifest" | "$node" -e '
  const { loadAll } = require("js-yaml");
  const docs = loadAll(require("node:fs").readFileSync(0, "utf8")).filter(Boolean);
  process.stdout.write(docs.find((d) => d.kind === "ServiceAccount").metadata.name);
')"
# The Deployment's environment, as its pod would get it (only plain values; the demo sets no Secrets).
mapfile -t deployment_env < <(printf '%s' "$manifest" | "$node" -e '
  const { loadAll } = require("js-yaml");
  const docs = loadAll(require("node:fs").readFileSync(0, "utf8")).filter(Boolean);
  const c = docs.find((d) => d.kind === "Deployment").spec.template.spec.containers[0];
  for (const e of c.env ?? []) if (e.value !== undefined) console.log(`${e.name}=${e.value}`);
')
# A token from the TokenRequest API for the chart's ServiceAccount, in a kubeconfig of its own.
token="$(kubectl create token "$sa" -n "$op_ns" --duration 24h)"
server="$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')"
ca_data="$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
if [[ -z "$ca_data" ]]; then
  ca_file="$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority}')"
  ca_data="$(base64 -w0 <"$ca_file")"
fi
(
  umask 077
  cat >"$kubeconfig_op" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: local
    cluster: { server: "$server", certificate-authority-data: "$ca_data" }
users:
  - name: $sa
    user: { token: "$token" }
contexts:
  - name: $sa
    context: { cluster: local, user: $sa, namespace: $op_ns }
current-context: $sa
EOF
)
whoami="$(kubectl --kubeconfig "$kubeconfig_op" auth whoami -o jsonpath='{.status.userInfo.username}')"
info "identity: $whoami (token from TokenRequest, kubeconfig .local/demo-operator.kubeconfig)"
# Only the listen addresses differ from the Deployment's (127.0.0.1, the port webhook.url names).
op_env=(
  "PATH=$PATH" "HOME=$HOME" "${deployment_env[@]}"
  "CUSTODY_HEALTH_ADDR=127.0.0.1:$health_port"
  "CUSTODY_WEBHOOK_ADDR=127.0.0.1:$webhook_port"
  "CUSTODY_OIDC_ADDR=127.0.0.1:$identity_port"
  "KUBECONFIG=$kubeconfig_op"
)
printf '%s\n' "${op_env[@]}" | grep -q '^CUSTODY_WEBHOOK_REGISTRATION=ca-bundle$' ||
  die "the chart's Deployment does not set CUSTODY_WEBHOOK_REGISTRATION=ca-bundle"
cd "$repo"
# setsid: its own process group, which `make down` (scripts/demo.sh stop) signals.
setsid env -i "${op_env[@]}" "$node" --disable-warning=TimeoutNegativeWarning dist/operator/main.js \
  >"$log_file" 2>&1 </dev/null &
echo $! >"$pid_file"
op_pid="$(cat "$pid_file")"
info "pid $op_pid (.local/demo-operator.pid); health on 127.0.0.1:$health_port, webhook on 127.0.0.1:$webhook_port"

ready=""
for _ in $(seq 1 600); do
  kill -0 "$op_pid" 2>/dev/null || { tail -n 30 "$log_file" >&2; die "the operator exited (log: $log_file)"; }
  if [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$health_port/readyz" || true)" == "200" ]]; then
    ready=1
    break
  fi
  sleep 0.1
done
[[ -n "$ready" ]] || { tail -n 30 "$log_file" >&2; die "the operator did not become ready in 60 s (log: $log_file)"; }
info "ready (/readyz 200)"

say "Applying examples/00-namespace.yaml"
kubectl apply -f "$repo/examples/00-namespace.yaml" | sed 's/^/    /'

# Until the leader has patched the caBundle into the chart's webhooks, a task
# would be admitted without a requester record: wait for a dry run to get one.
admitted=""
for _ in $(seq 1 150); do
  probe="$(kubectl create --dry-run=server -o jsonpath='{.metadata.annotations.custody\.dev/requester-record}' -f - 2>/dev/null <<EOF || true
apiVersion: custody.dev/v1alpha1
kind: AgentTask
metadata: { name: admission-probe, namespace: agents }
spec: { agent: { name: probe }, scope: ["read:probe"], serviceAccountName: default }
EOF
)"
  if [[ -n "$probe" ]]; then
    admitted=1
    break
  fi
  sleep 0.2
done
[[ -n "$admitted" ]] || { tail -n 30 "$log_file" >&2; die "the admission webhook did not answer in 30 s (log: $log_file)"; }
info "the admission webhook answers (caBundle patched by the operator)"

wait_phase() { # task phase
  local phase=""
  for _ in $(seq 1 300); do
    phase="$(kubectl get agenttask "$1" -n agents -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    [[ "$phase" == "$2" ]] && {
      info "$1: $phase"
      return 0
    }
    sleep 0.2
  done
  kubectl get agenttask "$1" -n agents -o yaml >&2 || true
  die "$1: phase '${phase:-none}' after 60 s, expected $2 (log: $log_file)"
}

say "Applying examples/10-task-delegated-by-user.yaml (as admin, who may impersonate alice)"
kubectl apply -f "$repo/examples/10-task-delegated-by-user.yaml" | sed 's/^/    /'
wait_phase review-pr-4821 Issued

say "Applying the sub-agents: examples/20 (narrower scope) and examples/30 (escalating)"
kubectl apply -f "$repo/examples/20-sub-agent-narrower.yaml" -f "$repo/examples/30-sub-agent-escalating.yaml" |
  sed 's/^/    /'
wait_phase review-pr-4821-linter Issued
wait_phase review-pr-4821-pusher Denied

say "Applying examples/40-pod-with-identity.yaml (a pod that opts in to the task's identity)"
kubectl apply -f "$repo/examples/40-pod-with-identity.yaml" | sed 's/^/    /'
spiffe="$(kubectl get pod code-reviewer -n agents \
  -o jsonpath='{.spec.containers[0].env[?(@.name=="CUSTODY_SPIFFE_ID")].value}')"
[[ -n "$spiffe" ]] || die "the pod code-reviewer was not injected (log: $log_file)"
mount="$(kubectl get pod code-reviewer -n agents -o jsonpath='{range .spec.containers[0].volumeMounts[*]}{.mountPath}{"\n"}{end}' | grep custody.dev || true)"
info "injected: CUSTODY_SPIFFE_ID=$spiffe"
info "credential mounted read-only at: $mount"
info "(no kubelet here: the pod stays Pending, its spec shows the injection)"

say "A JWT-SVID and an on-behalf-of token for the sub-agent (identity endpoint $issuer)"
secret_field() { kubectl get secret custody-svid-review-pr-4821-linter -n agents -o "jsonpath={.data.$1}" | base64 -d; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
kubectl get configmap custody-trust-bundle -n agents -o jsonpath='{.data.ca\.crt}' >"$work/ca.crt"
(umask 077 && secret_field 'tls\.crt' >"$work/tls.crt" && secret_field 'tls\.key' >"$work/tls.key")
jwks_uri="$(curl -sf --cacert "$work/ca.crt" "$issuer/.well-known/openid-configuration" | "$node" -e 'process.stdout.write(JSON.parse(require("node:fs").readFileSync(0,"utf8")).jwks_uri)')"
info "discovery: $issuer/.well-known/openid-configuration -> jwks_uri $jwks_uri"
claims() { "$node" -e 'const t=require("node:fs").readFileSync(0,"utf8").trim(); const c=JSON.parse(Buffer.from(t.split(".")[1],"base64url")); console.log(JSON.stringify(c, ["iss","sub","aud","exp","scope","act","custody","chain","kind","name","spiffeId"], 2).replace(/^/gm,"    "))'; }
info "JWT-SVID for https://api.github.example (file jwt-svid.https___api.github.example of the credential):"
secret_field 'jwt-svid\.https___api\.github\.example' | claims
answer="$(curl -s --cacert "$work/ca.crt" --cert "$work/tls.crt" --key "$work/tls.key" "$issuer/token" \
  --data-urlencode "grant_type=urn:ietf:params:oauth:grant-type:token-exchange" \
  --data-urlencode "subject_token_type=urn:ietf:params:oauth:token-type:jwt" \
  --data-urlencode "subject_token=$(secret_field 'jwt-svid\.token-exchange')" \
  --data-urlencode "audience=https://api.github.example" \
  --data-urlencode "scope=read:repos/acme/api")"
obo="$(printf '%s' "$answer" | "$node" -e 'const a=JSON.parse(require("node:fs").readFileSync(0,"utf8")); if(!a.access_token){console.error(JSON.stringify(a));process.exit(1)} process.stdout.write(a.access_token)')" ||
  die "token exchange failed: $answer (log: $log_file)"
info "token exchange (RFC 8693, mutual TLS with the sub-agent's X.509-SVID): alice at sub, the agents in act:"
printf '%s' "$obo" | claims

say "Applying examples/50-policy.yaml, then asking the decision endpoint (AuthZEN) as the sub-agent"
kubectl apply -f "$repo/examples/50-policy.yaml" | sed 's/^/    /'
spiffe_linter="$(kubectl get at review-pr-4821-linter -n agents -o jsonpath='{.status.spiffeID}')"
decide() { # verb resource
  curl -s --cacert "$work/ca.crt" --cert "$work/tls.crt" --key "$work/tls.key" "$issuer/access/v1/evaluation" \
    -H 'content-type: application/json' \
    -d "{\"subject\":{\"type\":\"agent\",\"id\":\"$spiffe_linter\"},\"action\":{\"name\":\"$1\"},\"resource\":{\"type\":\"repo\",\"id\":\"$2\"}}"
}
for ask in "read repos/acme/api" "write repos/acme/api"; do
  # shellcheck disable=SC2086
  answer="$(decide $ask)"
  printf '%s' "$answer" | grep -q '"decision"' || die "the decision endpoint did not answer: $answer (log: $log_file)"
  info "$ask -> $answer"
done

say "kubectl get at -n agents -o wide"
kubectl get at -n agents -o wide

say "custody tree -n agents"
"$repo/bin/custody" tree -n agents

say "custody audit review-pr-4821-linter -n agents (from the provenance stream)"
# The operator writes the issuance events just after the phase: a few tries until they are in the topic.
audit_ok=""
for _ in $(seq 1 20); do
  if out="$("$repo/bin/custody" audit review-pr-4821-linter -n agents --operator-namespace "$op_ns" 2>&1)" &&
    grep -q "issued" <<<"$out"; then
    audit_ok=1
    break
  fi
  sleep 1
done
printf '%s\n' "$out"
[[ -n "$audit_ok" ]] || die "custody audit gave no answer with the issuance (see above)"

say "The environment stays up"
cat <<EOF
    Explore it from your shell:
      source .local/env.sh                              # kubectl, helm, KUBECONFIG, CUSTODY_KAFKA_BROKERS
      kubectl describe at review-pr-4821-pusher -n agents   # the Denied task: chain and conditions
      kubectl custody status -n agents                  # the plugin (bin/ is on PATH after sourcing)
      kubectl custody tree review-pr-4821-linter -n agents
      kubectl custody audit review-pr-4821 -n agents
      kubectl custody verify                            # check the provenance stream
      tail -f .local/demo-operator.log                  # the operator (pid $op_pid)
    Stop everything (the environment and the demo's operator) with: make down
EOF
