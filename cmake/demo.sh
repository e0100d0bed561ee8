#!/usr/bin/env bash
# The README's demo command: installs what is missing, builds the main demo and runs it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash cmake/bootstrap.sh
build="${ENGRAM_BUILD_DIR:-$root/build}/release"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc)" --target engram-demo
"$build/examples/engram-demo" "$@"
