// Encode throughput (MB/s, one thread) of the GPT-2 and Llama-3 tokenizers on the King James text
// (`bible -f gen1:1-rev22:21`, Debian's bible-kjv), against tokenizers.js, the reference JavaScript
// implementation, timed by node in the same program run (baseline). The ids of both are compared.
// MB/s is wall time (the ratio column); cpu_MB/s is the best CPU time of one encode, which a
// loaded machine disturbs less.
// Needs the vocabularies of tests/tokenizers/fetch_vocabularies.sh (ENGRAM_TOKENIZER_DATA).
// Env: ENGRAM_BENCH_TEXT=file to use another text; ENGRAM_BENCH_JS_REPEATS (default 1).
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <unistd.h>

#include "bench_util.hpp"
#include "engram/io/json.hpp"
#include "engram/tokenizers/tokenizers.hpp"

namespace fs = std::filesystem;
using namespace engram;

namespace {

std::string run_command(const std::string& command) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  if (!pipe) throw std::runtime_error("cannot run: " + command);
  std::string out;
  char buf[1 << 16];
  for (std::size_t n; (n = fread(buf, 1, sizeof buf, pipe.get())) > 0;) out.append(buf, n);
  return out;
}

std::uint32_t checksum(const std::vector<std::int32_t>& ids) {  // same as bench_reference.js
  std::uint32_t h = 0;
  for (std::int32_t id : ids) h = h * 31u + std::uint32_t(id);
  return h;
}

struct Corpus {
  fs::path file;
  std::string text;
};

const Corpus& corpus() {
  static const Corpus c = [] {
    Corpus k;
    if (const char* f = std::getenv("ENGRAM_BENCH_TEXT")) {
      k.file = f;
      std::ifstream in(k.file, std::ios::binary);
      k.text.assign(std::istreambuf_iterator<char>(in), {});
    } else {
      k.text = run_command("bible -f gen1:1-rev22:21 2>/dev/null");
      k.file = fs::temp_directory_path() / ("engram-kjv-" + std::to_string(::getpid()) + ".txt");
      std::ofstream(k.file, std::ios::binary) << k.text;
    }
    if (k.text.size() < 1000000) throw std::runtime_error("the King James text is missing: apt install bible-kjv (cmake/bootstrap.sh does)");
    return k;
  }();
  return c;
}

void register_model(const std::string& name) {
  const fs::path data = ENGRAM_TOKENIZER_DATA;
  const fs::path dir = data / "models" / name;
  if (!fs::exists(dir / "tokenizer.json"))
    throw std::runtime_error("missing " + dir.string() + ": run tests/tokenizers/fetch_vocabularies.sh " + data.string());
  auto tok = std::shared_ptr<tokenizers::Tokenizer>(tokenizers::load(dir));
  const Corpus& c = corpus();

  // Baseline: tokenizers.js on the same file, timed inside node (best of the repeats).
  const char* repeats = std::getenv("ENGRAM_BENCH_JS_REPEATS");
  const std::string out = run_command("node '" ENGRAM_SOURCE_DIR "/tests/tokenizers/bench_reference.js' '" + (data / "npm" / "node_modules").string() +
                                      "' '" + dir.string() + "' '" + c.file.string() + "' " + (repeats ? repeats : "1"));
  const json::Value js = json::parse(out, "bench_reference.js output");
  const double js_seconds = js.at("seconds").as_number(), js_cpu = js.at("cpu_seconds").as_number();
  const auto ids = tok->encode(c.text, false);
  const bool agree = std::int64_t(ids.size()) == js.at("ids").as_integer() && std::int64_t(checksum(ids)) == js.at("checksum").as_integer();
  std::printf("%s: %zu ids, tokenizers.js %lld ids: %s\n", name.c_str(), ids.size(), static_cast<long long>(js.at("ids").as_integer()),
              agree ? "identical" : "DIFFERENT");
  const double mb = double(c.text.size()) * 1e-6;

  benchmark::RegisterBenchmark(("encode_" + name + ":baseline").c_str(), [js_seconds, js_cpu, mb](benchmark::State& state) {
    for (auto _ : state) state.SetIterationTime(js_seconds);
    state.counters["MB/s"] = benchmark::Counter(mb, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["cpu_MB/s"] = mb / js_cpu;
  })->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark(("encode_" + name + ":engram").c_str(), [tok, mb](benchmark::State& state) {
    double cpu = 1e30;  // best CPU seconds of one encode: on a shared machine wall time also counts the neighbours
    for (auto _ : state) {
      const std::clock_t start = std::clock();
      benchmark::DoNotOptimize(tok->encode(corpus().text, false));
      cpu = std::min(cpu, double(std::clock() - start) / CLOCKS_PER_SEC);
    }
    state.counters["MB/s"] = benchmark::Counter(mb, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["cpu_MB/s"] = mb / cpu;
  })->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    for (const char* name : {"gpt2", "llama3"}) register_model(name);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
  const int rc = bench::run(argc, argv);
  if (!std::getenv("ENGRAM_BENCH_TEXT")) fs::remove(corpus().file);
  return rc;
}
