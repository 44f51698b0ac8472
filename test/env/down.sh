#!/usr/bin/env bash
# Stops the environment in STATE_DIR cleanly: SIGTERM to each process group in
# reverse start order, wait (kube-apiserver takes a few seconds), then SIGKILL
# whatever is left, so no process is left behind.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${1:-$here/../../.local/env}"
[[ -d "$state/pids" ]] || exit 0
stop() {
  local f="$state/pids/$1.pid"
  [[ -f "$f" ]] || return 0
  local pid; pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "[custody-env] $1 did not stop in 15 s: SIGKILL" >&2
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
      sleep 0.2
    fi
  fi
  rm -f "$f"
}
for name in custody-operator kube-controller-manager kube-apiserver kafka etcd; do stop "$name"; done
for f in "$state"/pids/*.pid; do [[ -e "$f" ]] && stop "$(basename "$f" .pid)"; done
echo "[custody-env] stopped ($state)" >&2
