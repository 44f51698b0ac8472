#!/usr/bin/env bash
# Builds the go-spiffe conformance checker into $CUSTODY_GO_SPIFFE_CHECK
# (default: $HOME/.cache/custody/go-spiffe-check). Needs Go and the module proxy
# (or a warm module cache) for github.com/spiffe/go-spiffe/v2.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${CUSTODY_GO_SPIFFE_CHECK:-$HOME/.cache/custody/go-spiffe-check}"
mkdir -p "$(dirname "$out")"
cd "$here"
go build -trimpath -o "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out"
