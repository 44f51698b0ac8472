#!/usr/bin/env bash
# Builds the local environment's binaries once into a cache folder outside the
# clone, keyed by the pinned versions and the files that define the build, so
# fresh clones on the same machine (CI's included) reuse it. Prints the folder.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

key="$( (cat "$here/versions.env" "$here/tools/go.mod" "$here/tools/go.sum"; cat "$here/tools/etcd/main.go" "$here/kafka/pom.xml") | sha256sum | cut -c1-12)"
cache="${CUSTODY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/custody}/env-${K8S_VERSION}-${KAFKA_VERSION}-${key}"
bin="$cache/bin"
log() { echo "[custody-env] $*" >&2; }

if [[ -f "$cache/.complete" ]]; then
  echo "$cache"
  exit 0
fi
mkdir -p "$bin" "$cache/kafka"
# One builder at a time per cache (a developer's make up beside a CI run).
exec 9>"$cache.lock"
flock 9
if [[ -f "$cache/.complete" ]]; then
  echo "$cache"
  exit 0
fi
start=$(date +%s)

# versions.env must agree with the module graph that really pins the build.
pinned_k8s="$(cd "$here/tools" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
pinned_etcd="$(cd "$here/tools" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
if [[ "$pinned_k8s" != "$K8S_VERSION" || "$pinned_etcd" != "$ETCD_VERSION" ]]; then
  log "versions.env (K8S_VERSION=$K8S_VERSION ETCD_VERSION=$ETCD_VERSION) disagrees with tools/go.mod ($pinned_k8s, $pinned_etcd): change both (README: Pinned versions)"
  exit 1
fi

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${K8S_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} -X k8s.io/component-base/version.gitTreeState=clean"
# client-go's own version (kubectl's client side) reads the same package.
export GOFLAGS="${GOFLAGS:-} -mod=mod"
export CGO_ENABLED=0

(
  cd "$here/tools"
  for cmd in kube-apiserver kube-controller-manager kubectl; do
    if [[ ! -x "$bin/$cmd" ]]; then
      log "building $cmd ${K8S_VERSION} (cold: several minutes)"
      go build -trimpath -ldflags "$ldflags" -o "$bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
      mv "$bin/$cmd.tmp" "$bin/$cmd"
    fi
  done
  if [[ ! -x "$bin/etcd" ]]; then
    log "building etcd ${ETCD_VERSION}"
    go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" ./etcd
    mv "$bin/etcd.tmp" "$bin/etcd"
  fi
)

if [[ ! -x "$bin/helm" ]]; then
  log "building helm ${HELM_VERSION}"
  tmpgobin="$cache/gobin.tmp"
  rm -rf "$tmpgobin"
  GOBIN="$tmpgobin" GOFLAGS= go install -trimpath "helm.sh/helm/v4/cmd/helm@${HELM_VERSION}"
  mv "$tmpgobin/helm" "$bin/helm"
  rm -rf "$tmpgobin"
fi

if [[ ! -f "$cache/kafka/.complete" ]]; then
  log "fetching Kafka ${KAFKA_VERSION} jars from Maven Central"
  rm -rf "$cache/kafka/libs"
  mvn -q -B -f "$here/kafka/pom.xml" -Dkafka.version="${KAFKA_VERSION}" \
    dependency:copy-dependencies -DoutputDirectory="$cache/kafka/libs" -DincludeScope=runtime
  touch "$cache/kafka/.complete"
fi

touch "$cache/.complete"
log "environment built in $(( $(date +%s) - start ))s into $cache"
echo "$cache"
