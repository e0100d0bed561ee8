// The FLOPs report: RMT versus full attention with a KV cache on a small GPT-2-like model (d = 256,
// 4 layers), measured (wall time, tracked state bytes, process peak RSS, counted FLOPs) beside the
// analytic FLOPs of rmt.md 8, from 1k to 64k tokens, and RMT alone up to 1M tokens; plus the
// analytic OPT 125M..175B curves of the scaling report's Figure 3 up to 2M tokens. Writes a table to
// stdout, CSV files and log-log SVG plots (hand-written SVG, no dependencies).
//
//   bench_rmt [--out PREFIX] [--max-full N] [--max-rmt N] [--quick]
//   bench_rmt --speed [benchmark options]
//
// --speed runs the speed goals instead, as ratios to baselines measured in the same run: training
// tokens/s of an RMT at 8 segments against the same backbone trained on one segment of the same
// total tokens (goal: at most 1.5x slower, ratio >= 0.67), and ARMT's inference per segment against
// RMT's (goal: at most 1.3x slower, ratio >= 0.77), with the counted and analytic FLOPs of both.
//
// PREFIX (default "rmt_report") names PREFIX.csv, PREFIX.svg, PREFIX_opt.csv and PREFIX_opt.svg.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "bench_util.hpp"
#include "engram/io/svg.hpp"
#include "engram/nn/init.hpp"
#include "engram/rmt/armt_io.hpp"
#include "engram/rmt/flops_report.hpp"
#include "engram/rmt/init.hpp"
#include "engram/rmt/recurrent.hpp"
#include "engram/tasks/memory_tasks.hpp"

using namespace engram;
namespace fr = engram::rmt::flops_report;

namespace {

using Clock = std::chrono::steady_clock;

constexpr Index kSegment = 512;  // RMT content tokens per segment (the report's 512, BABILong's GPT-2)
constexpr Index kMemory = 16;    // memory tokens (BABILong GPT-2, rmt.md 1.3): n' = 512 + 2 * 16 = 544
constexpr Index kMaxFull = 1 << 16;
constexpr double kMiB = 1024.0 * 1024.0;

/// GPT-2-like: byte vocabulary (261), d = 256, 4 layers of 4 heads, FFN 1024, learned positions for
/// 64k tokens (full attention needs them; RMT uses the first 544).
ModelConfig small_config() {
  auto c = ModelConfig::gpt2(tasks::ByteTokenizer::vocab_size, 256, 4, 4, kMaxFull);
  c.d_ff = 1024;
  return c;
}
fr::ModelShape small_shape() {
  const ModelConfig c = small_config();
  return {"small GPT-2 (d 256, L 4)", c.vocab_size, c.n_layers, c.d_model, c.n_heads, c.d_ff};
}

// ---------------------------------------------------------------------------- process memory

/// A /proc/self/status field in KiB (0 when unavailable).
double status_kib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0) return std::atof(line.c_str() + n);
  return 0;
}
/// Returns freed heap to the OS and resets the peak-RSS mark (Linux: "5" > clear_refs), so the next
/// VmHWM reading is the peak of the next run only. False when the kernel refuses.
bool reset_peak_rss() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return bool(f);
}

// ---------------------------------------------------------------------------- measurements

struct Run {
  double seconds = 0, tracked_bytes = 0, rss_peak_bytes = 0, counted_flops = 0, analytic_flops = 0;
  bool done = false;
};

struct Row {
  Index tokens = 0;
  Run full, rmt;
};

const tasks::Corpus& corpus() {
  static const tasks::Corpus c = [] {
    try {
      return tasks::Corpus::fortunes();
    } catch (const Error& e) {
      std::fprintf(stderr, "note: %s; using a built-in text instead\n", e.what());
      return tasks::Corpus::from_text("Memory is the treasury and guardian of all things.\n%\nThe palest ink is better than the best memory.\n");
    }
  }();
  return c;
}

/// The input: a fact-detection sample of n tokens (the fact at a random segment start, the question at the end).
tasks::SampleStream input(Index n) { return tasks::SampleStream(corpus(), {tasks::Task::fact_detection, n, kSegment}, 1); }

Run measure_full(const Decoder<float>& model, Index n) {
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(n));
  input(n).read(tokens);
  const bool rss = reset_peak_rss();
  const double rss_before = status_kib("VmRSS:") * 1024;
  Run r;
  const auto t0 = Clock::now();
  auto s = model.make_state();
  // A KV-cache prefill in 1024-token steps: the way a decoder reads a long prompt.
  auto logits = model.prefill(tokens, s, {.chunk = 1024});
  benchmark::DoNotOptimize(logits.data());
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  r.tracked_bytes = double(s.bytes() + s.workspace_bytes());
  r.rss_peak_bytes = rss ? status_kib("VmHWM:") * 1024 - rss_before : 0;
  r.counted_flops = s.flops.total();
  r.analytic_flops = fr::full_flops(small_shape(), double(n), fr::kOneVocabMatmul);
  r.done = true;
  return r;
}

Run measure_rmt(const rmt::RecurrentWrapper<float>& model, Index n) {
  auto in = input(n);
  std::vector<std::int32_t> chunk(4096);
  const bool rss = reset_peak_rss();
  const double rss_before = status_kib("VmRSS:") * 1024;
  Run r;
  double seconds = 0;
  auto s = model.make_state();
  // Streaming: the input arrives in 4096-token chunks (generated outside the timed region).
  while (in.remaining() > 0) {
    const Index got = in.read(chunk);
    const auto t0 = Clock::now();
    model.push(std::span<const std::int32_t>(chunk).first(std::size_t(got)), s);
    seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  }
  const auto t0 = Clock::now();
  model.finish(s);
  benchmark::DoNotOptimize(s.readout().data());
  r.seconds = seconds + std::chrono::duration<double>(Clock::now() - t0).count();
  r.tracked_bytes = double(s.peak_bytes());
  r.rss_peak_bytes = rss ? status_kib("VmHWM:") * 1024 - rss_before : 0;
  r.counted_flops = s.flops.total();
  r.analytic_flops = fr::rmt_flops(small_shape(), double(n), {kSegment, kMemory, rmt::Layout::decoder}, fr::kOneVocabMatmul);
  r.done = true;
  return r;
}

// ---------------------------------------------------------------------------- SVG (io/svg.hpp)

using svg::Series;
// Every chart of this report is log-log.
void svg_panel(std::ostream& o, double x0, double y0, double w, double h, const std::string& title, const std::string& xlabel,
               const std::string& ylabel, const std::vector<Series>& series) {
  svg::panel(o, x0, y0, w, h, title, {xlabel, true}, {ylabel, true}, series);
}

// ---------------------------------------------------------------------------- report

void write_measured(const std::string& prefix, const std::vector<Row>& rows) {
  std::ofstream csv(prefix + ".csv");
  check(bool(csv), prefix + ".csv", "cannot write");
  csv << "tokens,method,seconds,tokens_per_second,tracked_peak_bytes,rss_peak_bytes,counted_flops,analytic_flops\n";
  for (const Row& r : rows)
    for (const auto& [name, run] : {std::pair<const char*, const Run*>{"full_attention_kv_cache", &r.full}, {"rmt", &r.rmt}})
      if (run->done)
        csv << r.tokens << ',' << name << ',' << run->seconds << ',' << double(r.tokens) / run->seconds << ','
            << run->tracked_bytes << ',' << run->rss_peak_bytes << ',' << run->counted_flops << ',' << run->analytic_flops << '\n';

  auto series = [&](const std::string& name, const std::string& color, bool dashed, bool rmt_run, double Run::*field, double scale) {
    Series s{name, color, dashed, {}};
    for (const Row& r : rows) {
      const Run& run = rmt_run ? r.rmt : r.full;
      if (run.done && run.*field > 0) s.points.push_back({double(r.tokens), run.*field * scale});
    }
    return s;
  };
  const std::string full = "#d62728", rmt = "#1f77b4";
  svg::write(prefix + ".svg", 1500, 460, [&](std::ostream& o) {
    svg_panel(o, 0, 0, 500, 460, "wall time (1 thread)", "tokens", "seconds",
              {series("full attention + KV cache", full, false, false, &Run::seconds, 1),
               series("RMT (s 512, m 16)", rmt, false, true, &Run::seconds, 1)});
    svg_panel(o, 500, 0, 500, 460, "peak memory", "tokens", "MiB",
              {series("full: state + workspace", full, false, false, &Run::tracked_bytes, 1 / kMiB),
               series("RMT: state + workspace", rmt, false, true, &Run::tracked_bytes, 1 / kMiB),
               series("full: peak RSS increase", full, true, false, &Run::rss_peak_bytes, 1 / kMiB),
               series("RMT: peak RSS increase", rmt, true, true, &Run::rss_peak_bytes, 1 / kMiB)});
    svg_panel(o, 1000, 0, 500, 460, "forward FLOPs", "tokens", "GFLOP",
              {series("full: counted (causal)", full, false, false, &Run::counted_flops, 1e-9),
               series("RMT: counted (causal)", rmt, false, true, &Run::counted_flops, 1e-9),
               series("full: rmt.md 8 (dense, head)", full, true, false, &Run::analytic_flops, 1e-9),
               series("RMT: rmt.md 8 (dense, head)", rmt, true, true, &Run::analytic_flops, 1e-9)});
  });
}

/// Figure 3 of the report: FLOPs relative to one 512-token pass, full attention per OPT size and
/// RMT (the line N / 512), dense accounting with one vocabulary matmul, 512 .. 2,048,000 tokens.
void write_opt(const std::string& prefix) {
  std::vector<double> lengths;
  for (double n = 512; n < fr::kReportTokens; n *= 2) lengths.push_back(n);
  lengths.push_back(fr::kReportTokens);
  std::ofstream csv(prefix + "_opt.csv");
  check(bool(csv), prefix + "_opt.csv", "cannot write");
  csv << "model,tokens,full_flops,rmt_flops,full_relative,rmt_relative,speedup,speedup_chinchilla\n";
  std::printf("\nAnalytic forward FLOPs, full attention / RMT (s = 512, m = 0), dense, LM head counted (rmt.md 8.4):\n%-10s", "tokens");
  for (const auto& m : fr::kOpt) std::printf(" %10s", std::string(m.name).c_str());
  std::printf("\n");
  std::vector<Series> series;
  const char* colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"};
  for (std::size_t i = 0; i < fr::kOpt.size(); ++i) series.push_back({std::string(fr::kOpt[i].name) + " full attention", colors[i], false, {}});
  series.push_back({"RMT (every size): N / 512", "#000000", true, {}});
  for (double n : lengths) {
    std::printf("%-10.0f", n);
    for (std::size_t i = 0; i < fr::kOpt.size(); ++i) {
      const auto& m = fr::kOpt[i];
      const double one = fr::model_flops(m, 512, fr::kOneVocabMatmul);
      const double full = fr::full_flops(m, n, fr::kOneVocabMatmul), rmt = fr::rmt_flops(m, n, fr::kReportSegments, fr::kOneVocabMatmul);
      csv << m.name << ',' << n << ',' << full << ',' << rmt << ',' << full / one << ',' << rmt / one << ',' << full / rmt << ','
          << fr::speedup(m, n, fr::kReportSegments, fr::kChinchilla) << '\n';
      series[i].points.push_back({n, full / one});
      if (i == 0) series.back().points.push_back({n, rmt / one});
      std::printf(" %9.1fx", full / rmt);
    }
    std::printf("\n");
  }
  svg::write(prefix + "_opt.svg", 640, 520, [&](std::ostream& o) {
    svg_panel(o, 0, 0, 640, 520, "forward FLOPs relative to one 512-token pass (OPT, rmt.md 8.4)", "input tokens",
              "FLOPs / F(512)", series);
  });
}


// ---------------------------------------------------------------------------- speed goals

// Training: a GPT-2-like backbone (d 128, 2 layers, 4 heads), 8 segments of 256 tokens with 8
// memory tokens against one 2048-token sequence through the same backbone, LM loss on every token.
constexpr Index kTrainSegment = 256, kTrainMemory = 8, kTrainSegments = 8, kTrainTokens = kTrainSegment * kTrainSegments;

struct TrainSetup {
  std::shared_ptr<Decoder<float>> backbone;
  std::unique_ptr<rmt::RecurrentWrapper<float>> model;
  std::vector<std::int32_t> tokens, labels;
  static TrainSetup& get() {
    static TrainSetup t = [] {
      TrainSetup s;
      auto c = ModelConfig::gpt2(tasks::ByteTokenizer::vocab_size, 128, 2, 4, kTrainTokens);
      s.backbone = std::make_shared<Decoder<float>>(Decoder<float>::create(c));
      init_for_training(*s.backbone, 3);
      s.model = std::make_unique<rmt::RecurrentWrapper<float>>(rmt::MemoryCell<float>(
          s.backbone, rmt::Config::decoder(kTrainMemory, kTrainSegment), rmt::hf_initial_memory(*s.backbone, kTrainMemory, 4)));
      const auto sample = tasks::make_sample(corpus(), {tasks::Task::fact_detection, kTrainTokens + 1, kTrainSegment}, 7);
      s.tokens.assign(sample.tokens.begin(), sample.tokens.end() - 1);
      s.labels.assign(sample.tokens.begin() + 1, sample.tokens.end());
      return s;
    }();
    return t;
  }
};

void train_baseline(benchmark::State& state) {
  auto& t = TrainSetup::get();
  Gradients<float> g(*t.backbone);
  train::StepBuffers<float> buf;
  train::Batch b{t.tokens, t.labels, 1, kTrainTokens};
  double flops = 0;
  for (auto _ : state) {
    g.zero();
    buf.flops.reset();
    benchmark::DoNotOptimize(train::lm_step<float>(*t.backbone, b, &g, buf, 1.0f / float(kTrainTokens)).loss_sum);
    flops = buf.flops.total();
  }
  state.counters["tokens/s"] = benchmark::Counter(double(kTrainTokens), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP"] = flops * 1e-9;
}

void train_rmt(benchmark::State& state) {
  auto& t = TrainSetup::get();
  Gradients<float> g(*t.model);
  rmt::BpttBuffers<float> buf;
  rmt::TrainBatch b;
  b.tokens = t.tokens, b.labels = t.labels, b.n_seqs = 1, b.length = kTrainTokens;
  double flops = 0;
  for (auto _ : state) {
    g.zero();
    buf.step.flops.reset();
    benchmark::DoNotOptimize(t.model->train_step(b, &g, buf, 1.0f / float(kTrainTokens)).loss_sum);
    flops = buf.step.flops.total();
  }
  state.counters["tokens/s"] = benchmark::Counter(double(kTrainTokens), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP"] = flops * 1e-9;
}

// Inference per segment: the report's small model (d 256, 4 layers), 512-token segments, 16 memory
// tokens; ARMT with d_mem 64 (the official size).
constexpr Index kArmtDMem = 64, kSegmentsPerRun = 8;

struct SegmentSetup {
  std::shared_ptr<Decoder<float>> rmt_backbone, armt_backbone;
  std::unique_ptr<rmt::RecurrentWrapper<float>> rmt_model;
  std::unique_ptr<rmt::ArmtWrapper<float>> armt_model;
  std::vector<std::int32_t> tokens;
  static SegmentSetup& get() {
    static SegmentSetup t = [] {
      SegmentSetup s;
      auto c = small_config();
      c.max_positions = kSegment + 2 * kMemory;
      s.rmt_backbone = std::make_shared<Decoder<float>>(Decoder<float>::create(c));
      init_random(*s.rmt_backbone, 1);
      s.rmt_model = std::make_unique<rmt::RecurrentWrapper<float>>(rmt::MemoryCell<float>(
          s.rmt_backbone, rmt::Config::decoder(kMemory, kSegment), rmt::hf_initial_memory(*s.rmt_backbone, kMemory, 2)));
      c.max_positions = kSegment + kMemory;
      s.armt_backbone = std::make_shared<Decoder<float>>(Decoder<float>::create(c));
      init_random(*s.armt_backbone, 1);
      const auto ac = rmt::ArmtConfig::make(kMemory, kSegment, kArmtDMem);
      auto layers = rmt::init_associative<float>(*s.armt_backbone, ac, 3);
      for (auto& a : layers) init_random_tensor(a.wv.weight, 4);
      s.armt_model = std::make_unique<rmt::ArmtWrapper<float>>(s.armt_backbone, ac, rmt::hf_initial_memory(*s.armt_backbone, kMemory, 2),
                                                               std::move(layers));
      s.tokens = tasks::make_sample(corpus(), {tasks::Task::fact_detection, kSegment * kSegmentsPerRun, kSegment}, 9).tokens;
      return s;
    }();
    return t;
  }
  static void init_random_tensor(Tensor<float>& t, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.f, 0.02f);
    for (Index r = 0; r < t.rows(); ++r)
      for (Index c = 0; c < t.cols(); ++c) t(r, c) = normal(rng);
  }
};

template <class W>
void read_segments(benchmark::State& state, const W& model) {
  const auto& tokens = SegmentSetup::get().tokens;
  double flops = 0;
  for (auto _ : state) {
    auto s = model.make_state();
    model.push(tokens, s);
    model.finish(s);  // the last segment is held until finish (or a token after it)
    benchmark::DoNotOptimize(s.readout().data());
    flops = s.flops.total();
  }
  state.counters["segments/s"] = benchmark::Counter(double(kSegmentsPerRun), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/segment"] = flops * 1e-9 / double(kSegmentsPerRun);
}
void segment_rmt(benchmark::State& state) { read_segments(state, *SegmentSetup::get().rmt_model); }
void segment_armt(benchmark::State& state) { read_segments(state, *SegmentSetup::get().armt_model); }

int run_speed(int argc, char** argv) {
  benchmark::RegisterBenchmark("train_8_segments:baseline/2048", train_baseline)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("train_8_segments:rmt/2048", train_rmt)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("segment:baseline/512", segment_rmt)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("segment:armt/512", segment_armt)->Unit(benchmark::kMillisecond);
  const fr::ModelShape shape = small_shape();
  const double rmt_seg = fr::segment_flops(shape, kSegment, {kSegment, kMemory, rmt::Layout::decoder}, fr::kOneVocabMatmul);
  const double armt_seg = fr::armt_segment_flops(shape, kSegment, {kSegment, kMemory, kArmtDMem, 3}, fr::kOneVocabMatmul);
  std::printf("analytic FLOPs per 512-token segment (rmt.md 8.3, dense, LM head on every content token): RMT %.2f GFLOP "
              "(n' = %td), ARMT %.2f GFLOP (n' = %td, associative memory %.1f%%)\n",
              rmt_seg * 1e-9, kSegment + 2 * kMemory, armt_seg * 1e-9, kSegment + kMemory,
              100.0 * double(shape.layers) * fr::armt_associative_flops(shape, kSegment, {kSegment, kMemory, kArmtDMem, 3}) / armt_seg);
  return bench::run(argc, argv);
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--speed") == 0) {
      set_num_threads(1);
      for (int j = i; j + 1 < argc; ++j) argv[j] = argv[j + 1];
      return run_speed(argc - 1, argv);
    }
  std::string prefix = "rmt_report";
  Index max_full = kMaxFull, max_rmt = Index(1) << 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--out" && i + 1 < argc) prefix = argv[++i];
    else if (a == "--max-full" && i + 1 < argc) max_full = std::atol(argv[++i]);
    else if (a == "--max-rmt" && i + 1 < argc) max_rmt = std::atol(argv[++i]);
    else if (a == "--quick") max_full = 2048, max_rmt = 8192;
    else {
      std::printf("usage: %s [--out PREFIX] [--max-full N (<= %td)] [--max-rmt N] [--quick]\n", argv[0], kMaxFull);
      return a == "--help" ? 0 : 2;
    }
  }
  if (max_full > kMaxFull) max_full = kMaxFull;
  set_num_threads(1);

  try {
    auto decoder = std::make_shared<Decoder<float>>(Decoder<float>::create(small_config()));
    init_random(*decoder, 1);
    const std::shared_ptr<const Decoder<float>> backbone = decoder;
    const rmt::RecurrentWrapper<float> model(rmt::MemoryCell<float>(backbone, rmt::Config::decoder(kMemory, kSegment),
                                                                    rmt::hf_initial_memory(*backbone, kMemory, 2)));
    std::printf("model: %s, %.2fM parameters, vocabulary %td (bytes); RMT s = %td, m = %td (n' = %td); 1 thread\n",
                std::string(small_shape().name).c_str(), double(backbone->n_params()) * 1e-6, backbone->config.vocab_size, kSegment,
                kMemory, kSegment + 2 * kMemory);
    std::printf("input: fact-detection samples over %s (%zu passages)\n", corpus().source().c_str(), corpus().passages().size());
    std::printf("FLOPs: 'counted' = engram's counter (causal pairs, LM head on the last token only); 'analytic' = rmt.md 8\n"
                "(dense n^2 attention + softmax, LM head on every token, embedding lookup free). Memory: 'tracked' = state +\n"
                "workspace high-water (KV caches, RMT memory and buffers); 'RSS' = increase of the process peak RSS.\n\n");
    std::printf("%9s | %-40s | %-40s | %-16s\n", "", "full attention + KV cache (prefill)", "RMT (streamed in 4096-token chunks)",
                "full / RMT");
    std::printf("%9s | %8s %9s %9s %11s | %8s %9s %9s %11s | %7s %8s\n", "tokens", "time s", "tracked", "RSS MiB", "GFLOP cnt",
                "time s", "tracked", "RSS MiB", "GFLOP cnt", "time", "FLOPs");
    std::vector<Row> rows;
    for (Index n = 1024; n <= std::max(max_full, max_rmt); n *= 2) {
      Row r;
      r.tokens = n;
      if (n <= max_rmt) r.rmt = measure_rmt(model, n);
      if (n <= max_full) r.full = measure_full(*backbone, n);
      auto cell = [](const Run& x) {
        char b[64];
        if (!x.done) return std::string(41, ' ');
        std::snprintf(b, sizeof b, "%8.3f %9.1f %9.1f %11.1f", x.seconds, x.tracked_bytes / kMiB, x.rss_peak_bytes / kMiB,
                      x.counted_flops * 1e-9);
        return std::string(b);
      };
      std::string ratio = "       -        -";
      if (r.full.done && r.rmt.done) {
        char b[64];
        std::snprintf(b, sizeof b, "%6.2fx %7.2fx", r.full.seconds / r.rmt.seconds, r.full.counted_flops / r.rmt.counted_flops);
        ratio = b;
      }
      std::printf("%9td | %s | %s | %s\n", n, cell(r.full).c_str(), cell(r.rmt).c_str(), ratio.c_str());
      std::fflush(stdout);
      rows.push_back(r);
    }
    std::printf("\nanalytic GFLOP (rmt.md 8, dense, LM head on every token):\n%9s %14s %14s %9s\n", "tokens", "full", "RMT", "ratio");
    for (const Row& r : rows) {
      const double full = fr::full_flops(small_shape(), double(r.tokens), fr::kOneVocabMatmul);
      const double rmt = fr::rmt_flops(small_shape(), double(r.tokens), {kSegment, kMemory, rmt::Layout::decoder}, fr::kOneVocabMatmul);
      std::printf("%9td %14.1f %14.1f %8.2fx\n", r.tokens, full * 1e-9, rmt * 1e-9, full / rmt);
    }
    write_measured(prefix, rows);
    write_opt(prefix);
    std::printf("\nwrote %s.csv, %s.svg, %s_opt.csv, %s_opt.svg\n", prefix.c_str(), prefix.c_str(), prefix.c_str(), prefix.c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
