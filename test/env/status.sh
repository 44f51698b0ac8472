#!/usr/bin/env bash
# Exits 0 when every process of the environment in STATE_DIR is alive.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${1:-$here/../../.local/env}"
[[ -d "$state/pids" ]] || { echo "not up"; exit 1; }
rc=0
for f in "$state"/pids/*.pid; do
  [[ -e "$f" ]] || { echo "not up"; exit 1; }
  name="$(basename "$f" .pid)"
  if kill -0 "$(cat "$f")" 2>/dev/null; then echo "$name: running (pid $(cat "$f"))"; else echo "$name: stopped"; rc=1; fi
done
exit $rc
