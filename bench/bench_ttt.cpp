// TTT benchmarks (one thread): the dual form against the primal form at head_dim 64, T = 2048 (the
// inner loop alone and the whole layer); TTT-Linear and TTT-MLP layer prefill against the fused causal
// attention layer of the same width from 256 to 32k tokens (time, analytic FLOPs, the crossovers);
// decode cost per token at 1k and 32k of context against its two bounds (FLOPs at the FMA peak, bytes
// at the same-run triad) and the inner loop alone one token per call; batched decode of 8 sequences
// (forward_batch) against the same 8 steps one after another; a training step (forward_train + backward) of the
// TTT-Linear layer against the attention layer's, with the backward's rate against the same-run
// GEMM rate. Every timing is the thread's CPU time (manual time):
// the machine is shared, and single-threaded work descheduled by a neighbour would otherwise count
// the neighbour's time.
#include <time.h>

#include <cmath>
#include <map>
#include <random>

#include "bench_util.hpp"
#include "engram/nn/self_attention.hpp"
#include "engram/ttt/layer.hpp"
#include "engram/nn/gradients.hpp"
#include "engram/nn/tape.hpp"

using namespace engram;

namespace {

/// CPU seconds of the calling thread (all work runs on it: set_num_threads(1)).
double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// 125M-class width (ttt.md 6.2): d_model 768, 12 heads of 64, mini-batch 16.
constexpr Index kC = 768, kH = 12, kD = 64;

void fill_normal(Tensor<float>& t, double std, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, std);
  for (Index r = 0; r < t.rows(); ++r)
    for (Index c = 0; c < t.cols(); ++c) t.row(r)[c] = float(normal(rng));
}

/// Random weights at the scales a trained layer has (projections ~ 1/sqrt(fan_in), so activations
/// stay O(1) and no denormals slow anything down).
template <class L>
void init_layer(L& layer, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  layer.visit_parameters([&](const std::string& name, Tensor<float>& t) {
    const bool bias = name.find("bias") != std::string::npos || name == "learnable_token_idx" || name == "b1" || name == "b2";
    if (name.find("norm.weight") != std::string::npos) t.fill(1.0f);
    else if (bias) t.fill(0.0f);
    else fill_normal(t, 1.0 / std::sqrt(double((name == "W1" || name == "W2") ? t.dim(1) : t.cols())), rng);
  });
}

/// The TTT layers of the comparison: the Transformer backbone, like for like with attention (q, k,
/// v, o projections of the same shapes; TTT adds the 12-row lr gate).
ttt::Layer<float>& ttt_layer(ttt::Kind kind) {
  static std::map<ttt::Kind, std::unique_ptr<ttt::Layer<float>>> layers;
  auto& l = layers[kind];
  if (!l) {
    l = std::make_unique<ttt::Layer<float>>(ttt::Config::transformer(kind, kC, kH));
    init_layer(*l, kind == ttt::Kind::linear ? 1 : 2);
  }
  return *l;
}

SelfAttention<float>& attention_layer() {
  static auto a = [] {
    auto c = ModelConfig::llama(1, kC, 1, kH, kH, 1);
    auto l = std::make_unique<SelfAttention<float>>(c);
    init_layer(*l, 3);
    return l;
  }();
  return *a;
}

const Tensor<float>& input(Index n) {
  static std::map<Index, Tensor<float>> inputs;
  auto it = inputs.find(n);
  if (it == inputs.end()) {
    Tensor<float> x({n, kC});
    std::mt19937_64 rng(42);
    fill_normal(x, 1.0, rng);
    it = inputs.emplace(n, std::move(x)).first;
  }
  return it->second;
}

/// One sequence through one layer, step by step; sets the positions and the RoPE table attention needs.
struct Run {
  const SequenceLayer<float>& layer;
  std::unique_ptr<LayerState<float>> state;
  Workspace<float> ws;
  FlopCounter flops;
  std::vector<std::int64_t> positions;
  RopeTable<float> rope;
  Index seen = 0;

  explicit Run(const SequenceLayer<float>& l) : layer(l), state(l.make_state()) {}
  void step(ConstView<float> x, View<float> y) {
    StepContext<float> ctx;
    positions.resize(std::size_t(x.rows()));
    for (Index i = 0; i < x.rows(); ++i) positions[std::size_t(i)] = seen + i;
    if (layer.kind() == "attention") {
      static const auto inv = rope_inv_freq(kD, 10000.0);
      rope = make_rope_table<float>(inv, positions);
      ctx.rope = &rope;
    }
    ctx.positions = positions;
    ctx.workspace = &ws;
    ctx.flops = &flops;
    ctx.tokens_seen = seen;
    layer.forward(x, y, state.get(), ctx);
    seen += x.rows();
  }
};

/// Median seconds per iteration by (family, variant, T), for the crossover summary.
std::map<std::string, std::map<Index, std::vector<double>>> g_times;
std::map<std::string, std::map<Index, double>> g_flops;
std::map<std::string, std::map<Index, double>> g_rates;  // FLOP/s by key and T (training section)

void record(const std::string& key, Index t, double seconds, double flops) {
  g_times[key][t].push_back(seconds);
  g_flops[key][t] = flops;
}

/// GFLOP/s over the timed (CPU) seconds, the analytic GFLOP per iteration, one thread.
void counters(benchmark::State& state, double flops, double seconds) {
  state.counters["GFLOPs"] = flops * double(state.iterations()) / seconds * 1e-9;
  state.counters["GFLOP"] = flops * 1e-9;
  state.counters["threads"] = 1;
}

// ---------------------------------------------------------------------------------------------
// dual vs primal

/// The inner loop alone (what the two forms differ in): random rotated Q, K and target Y, eta = 0.5/d,
/// over range(0) tokens in one call; or, `tokenwise`, as decode runs it: one token per call (the
/// primal form) over a whole mini-batch, whose state (W and the gradient sums of every head, 0.4 MB
/// for TTT-Linear) stays in cache: the inner loop's share of a decode step.
void inner_loop(benchmark::State& state, ttt::Kind kind, ttt::InnerForm form, bool tokenwise) {
  set_num_threads(1);
  const auto& layer = ttt_layer(kind);
  const Index n = tokenwise ? layer.config.mini_batch : state.range(0);
  const auto& Q = input(n);
  Tensor<float> K({n, kC}), Y({n, kC}), O({n, kC}), lr({n, kH});
  std::mt19937_64 rng(7);
  fill_normal(K, 1.0, rng);
  fill_normal(Y, 1.0, rng);
  lr.fill(float(layer.config.base_lr * 0.5 / double(kD)));
  double flops = 0, total = 0;
  for (auto _ : state) {
    auto st = layer.make_state();
    auto& ts = dynamic_cast<ttt::State<float>&>(*st);
    FlopCounter fc;
    const double t0 = cpu_seconds();
    const Index step = tokenwise ? 1 : n;
    for (Index t = 0; t < n; t += step, ts.position += tokenwise ? 1 : 0)
      ttt::run_inner<float>(layer.config, form, Q.view().middle_rows(t, step), K.view().middle_rows(t, step), Y.view().middle_rows(t, step),
                            lr.view().middle_rows(t, step), layer.token_idx.data(), layer.ttt_norm_weight, layer.ttt_norm_bias, ts,
                            O.view().middle_rows(t, step), &fc);
    const double seconds = cpu_seconds() - t0;
    state.SetIterationTime(seconds);
    total += seconds;
    flops = fc[FlopCategory::ttt_inner];
    benchmark::DoNotOptimize(O.data());
  }
  counters(state, flops, total);
}

/// The whole layer over n tokens in one call (dual or primal), or token by token ("tokenwise": n
/// decode steps, the primal form with batch 1).
void layer_prefill(benchmark::State& state, SequenceLayer<float>* layer, ttt::InnerForm form, bool tokenwise,
                   const std::string& key) {
  set_num_threads(1);
  const Index n = state.range(0);
  const auto& x = input(n);
  Tensor<float> y({n, kC});
  auto* tl = dynamic_cast<ttt::Layer<float>*>(layer);
  double flops = 0, total = 0;
  for (auto _ : state) {
    if (tl) tl->form = form;  // set between runs, never during one
    Run run(*layer);
    const double t0 = cpu_seconds();
    if (tokenwise)
      for (Index t = 0; t < n; ++t) run.step(x.view().middle_rows(t, 1), y.view().middle_rows(t, 1));
    else
      run.step(x.view(), y.view());
    const double seconds = cpu_seconds() - t0;
    state.SetIterationTime(seconds);
    total += seconds;
    flops = run.flops.total();
    if (!key.empty()) record(key, n, seconds, flops);
    benchmark::DoNotOptimize(y.data());
  }
  if (tl) tl->form = ttt::InnerForm::dual;
  counters(state, flops, total);
}

// ---------------------------------------------------------------------------------------------
// decode cost per token

/// A state at `context` tokens: TTT by prefill (its size does not depend on the context); attention
/// by filling its KV cache with random keys and values (the cost of a decode step depends only on
/// the cache size, and a 32k-token attention prefill would take half a minute).
std::unique_ptr<LayerState<float>> state_at(const SequenceLayer<float>& layer, Index context) {
  auto s = layer.make_state();
  if (auto* cache = s->kv_cache()) {
    Tensor<float> k({context, kC}), v({context, kC});
    std::mt19937_64 rng(9);
    fill_normal(k, 1.0, rng);
    fill_normal(v, 1.0, rng);
    std::vector<std::int64_t> pos(static_cast<std::size_t>(context));
    for (Index i = 0; i < context; ++i) pos[std::size_t(i)] = i;
    cache->append(k.view(), v.view(), pos);
    return s;
  }
  Run run(layer);
  Tensor<float> y({4096, kC});
  for (Index t = 0; t < context; t += 4096) {
    const Index n = std::min<Index>(4096, context - t);
    run.step(input(4096).view().middle_rows(0, n), y.view().middle_rows(0, n));
  }
  return std::move(run.state);
}

/// Bytes of a layer's parameters (what one decode step streams).
double parameter_bytes(SequenceLayer<float>& layer) {
  double bytes = 0;
  layer.visit_parameters([&](const std::string&, Tensor<float>& t) { bytes += double(t.numel()) * sizeof(float); });
  return bytes;
}

void decode_token(benchmark::State& state, SequenceLayer<float>* layer, const std::string& key) {
  set_num_threads(1);
  const Index context = state.range(0);
  const auto snapshot = state_at(*layer, context);
  Run run(*layer);
  run.state = snapshot->clone();
  run.seen = context;
  Tensor<float> y({1, kC});
  const auto& x = input(64);
  Index steps = 0;
  double seconds = 0;
  for (auto _ : state) {
    if (++steps % 16 == 0 && snapshot->kv_cache()) {  // keep the KV cache at the nominal context
      run.state = snapshot->clone();
      run.seen = context;
    }
    const double t0 = cpu_seconds();
    run.step(x.view().middle_rows(steps % 64, 1), y.view());
    const double dt = cpu_seconds() - t0;
    state.SetIterationTime(dt);
    seconds += dt;
    benchmark::DoNotOptimize(y.data());
  }
  record(key, context, seconds / double(state.iterations()), 0);
  state.counters["state_MiB"] = double(run.state->bytes()) / (1 << 20);
  // Against both bounds of a step: its FLOPs at the FMA peak ("of peak", from GFLOPs and threads)
  // and the bytes it must read (every parameter, the state once) at the triad bandwidth measured
  // here. A one-token step is a matrix-vector product over the projections (2 FLOPs per 4-byte
  // weight): the bytes bound is tens of times the FLOP bound (26x on a Xeon at 13 GB/s and 174
  // GFLOP/s), and the one that applies.
  const double flops = run.flops.total() / double(steps);
  const double bytes = parameter_bytes(*layer) + double(snapshot->bytes());
  const double triad = bench::triad_bandwidth(1);
  counters(state, flops, seconds);
  state.counters["MB"] = bytes * 1e-6;
  state.counters["of_triad"] = bytes * double(state.iterations()) / seconds / triad;
  g_rates[key + "_of_triad"][context] = bytes * double(state.iterations()) / seconds / triad;
  g_rates[key + "_gflops"][context] = flops * double(state.iterations()) / seconds;
}

/// B sequences (range 0) one decode step each at context 1024: one forward_batch for all of them
/// (the projections as one product: the layer's weights stream once per step) against the same B
/// steps one after another (the baseline). Counters: GFLOPs of the batch and its fraction of peak.
template <bool Batched>
void decode_batch(benchmark::State& state, SequenceLayer<float>* layer) {
  set_num_threads(1);
  const Index B = state.range(0);
  const auto snapshot = state_at(*layer, 1024);
  std::vector<std::unique_ptr<LayerState<float>>> states;
  std::vector<Workspace<float>> ws(static_cast<std::size_t>(B));
  std::vector<FlopCounter> flops(static_cast<std::size_t>(B));
  std::vector<StepContext<float>> ctx(static_cast<std::size_t>(B));
  std::vector<LayerState<float>*> ptrs;
  std::vector<StepContext<float>*> cptrs;
  for (Index b = 0; b < B; ++b) {
    states.push_back(snapshot->clone());
    ctx[std::size_t(b)].workspace = &ws[std::size_t(b)];
    ctx[std::size_t(b)].flops = &flops[std::size_t(b)];
    ptrs.push_back(states.back().get());
    cptrs.push_back(&ctx[std::size_t(b)]);
  }
  const auto& x = input(64);
  Tensor<float> y({B, kC});
  double seconds = 0;
  Index step = 0;
  for (auto _ : state) {
    const ConstView<float> xs = x.view().middle_rows(step++ % 32, B);
    const double t0 = cpu_seconds();
    if constexpr (Batched) layer->forward_batch(xs, y.view(), ptrs, cptrs);
    else
      for (Index b = 0; b < B; ++b) layer->forward(xs.middle_rows(b, 1), y.view().middle_rows(b, 1), ptrs[std::size_t(b)], ctx[std::size_t(b)]);
    const double dt = cpu_seconds() - t0;
    state.SetIterationTime(dt);
    seconds += dt;
    benchmark::DoNotOptimize(y.data());
  }
  double total = 0;
  for (const auto& f : flops) total += f.total();
  counters(state, total / double(state.iterations()), seconds);
  state.counters["tok_per_s"] = double(B) * double(state.iterations()) / seconds;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// Flatness of decode: steps alternate between a state at 1k and one at 32k tokens, so drifting
/// load on the shared machine hits both alike; medians of the per-step times.
void decode_flat(benchmark::State& state, SequenceLayer<float>* layer, const std::string& key) {
  set_num_threads(1);
  const Index contexts[2] = {1024, 32768};
  std::unique_ptr<LayerState<float>> snapshots[2];
  std::unique_ptr<Run> runs[2];
  for (int c = 0; c < 2; ++c) {
    snapshots[c] = state_at(*layer, contexts[c]);
    runs[c] = std::make_unique<Run>(*layer);
    runs[c]->state = snapshots[c]->clone();
    runs[c]->seen = contexts[c];
  }
  Tensor<float> y({1, kC});
  const auto& x = input(64);
  std::vector<double> times[2];
  Index step = 0;
  for (auto _ : state) {
    const int c = int(step % 2);
    Run& run = *runs[c];
    if ((step / 2) % 16 == 15 && snapshots[c]->kv_cache()) {  // keep the KV caches at their nominal context
      run.state = snapshots[c]->clone();
      run.seen = contexts[c];
    }
    const double t0 = cpu_seconds();
    run.step(x.view().middle_rows((step / 2) % 64, 1), y.view());
    const double dt = cpu_seconds() - t0;
    state.SetIterationTime(dt);
    times[c].push_back(dt);
    ++step;
    benchmark::DoNotOptimize(y.data());
  }
  const double m1k = median(times[0]), m32k = median(times[1]);
  for (double t : times[0]) record(key, 1024, t, 0);
  for (double t : times[1]) record(key, 32768, t, 0);
  state.counters["ms_1k"] = m1k * 1e3;
  state.counters["ms_32k"] = m32k * 1e3;
  state.counters["ratio_32k_1k"] = m32k / m1k;
}

// ---------------------------------------------------------------------------------------------
// training step

double inner_backward_seconds(const ttt::Layer<float>& layer, Tape<float>& tape, Index n);

/// One training step of one layer over one sequence of n tokens: forward_train, then backward with
/// dL/dy = y (any cotangent costs the same). Times the two halves separately; counters: ms of each,
/// the backward's analytic GFLOP and its rate (the inner loop's share for TTT).
void train_step(benchmark::State& state, SequenceLayer<float>* layer, const std::string& key) {
  set_num_threads(1);
  const Index n = state.range(0);
  const auto& x = input(n);
  Tensor<float> y({n, kC}), dx({n, kC});
  Tape<float> tape;
  Workspace<float> ws;
  Gradients<float> grads(*layer);
  RopeTable<float> rope;
  std::vector<std::int64_t> positions(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) positions[std::size_t(i)] = i;
  rope = make_rope_table<float>(rope_inv_freq(kD, 10000.0), positions);
  double fwd = 0, bwd = 0, bwd_flops = 0, bwd_inner = 0, inner_seconds = 0;
  for (auto _ : state) {
    FlopCounter ffwd, fbwd;
    TrainContext<float> ctx;
    ctx.tape = &tape, ctx.grads = &grads, ctx.workspace = &ws, ctx.n_seqs = 1, ctx.seq_len = n, ctx.rope = &rope;
    ctx.flops = &ffwd;
    const double t0 = cpu_seconds();
    layer->forward_train(x.view(), y.view(), ctx);
    const double t1 = cpu_seconds();
    ctx.flops = &fbwd;
    layer->backward(y.view(), dx.view(), ctx);
    const double t2 = cpu_seconds();
    tape.clear();
    state.SetIterationTime(t2 - t0);
    fwd += t1 - t0, bwd += t2 - t1;
    bwd_flops = fbwd.total(), bwd_inner = fbwd[FlopCategory::ttt_inner];
    record(key, n, t2 - t0, ffwd.total() + fbwd.total());
    benchmark::DoNotOptimize(dx.data());
  }
  if (auto* tl = dynamic_cast<ttt::Layer<float>*>(layer)) {
    // The inner loop's backward alone, over the saved state of one more forward_train.
    FlopCounter ffwd, fbwd;
    TrainContext<float> ctx;
    ctx.tape = &tape, ctx.grads = &grads, ctx.workspace = &ws, ctx.n_seqs = 1, ctx.seq_len = n, ctx.flops = &ffwd;
    tl->forward_train(x.view(), y.view(), ctx);
    inner_seconds = inner_backward_seconds(*tl, tape, n);
    tape.clear();
    state.counters["inner_bwd_GFLOPs"] = bwd_inner / inner_seconds * 1e-9;
  }
  const double it = double(state.iterations());
  state.counters["fwd_ms"] = fwd / it * 1e3;
  state.counters["bwd_ms"] = bwd / it * 1e3;
  state.counters["bwd_GFLOPs"] = bwd_flops / (bwd / it) * 1e-9;
  state.counters["GFLOPs"] = bwd_flops / (bwd / it) * 1e-9;  // the "of peak" column: the backward's rate
  state.counters["threads"] = 1;
  g_rates[key + "_bwd"][n] = bwd_flops / (bwd / it);
  if (inner_seconds > 0) g_rates[key + "_inner_bwd"][n] = bwd_inner / inner_seconds;
}

/// Seconds of ttt::run_inner_backward over a layer's saved forward_train state (the tape's top
/// entries, read in place), with random dL/dO: the inner loop's share of the layer backward.
double inner_backward_seconds(const ttt::Layer<float>& layer, Tape<float>& tape, Index n) {
  const ttt::Config& c = layer.config;
  const Index H = c.n_heads, d = c.head_dim(), F = c.inner_dim(), S = ttt::n_segments(n, c.mini_batch);
  // Tape layout of forward_train (top first): b1 [S H, F], W1 [S H d, F], O, QKY, P, x.
  const ttt::SavedWeights<float> saved{tape.peek(1), tape.peek(0), {}, {}, H};
  const ConstView<float> QKY = tape.peek(3), P = tape.peek(4);
  check(saved.W1.rows() == S * H * d && saved.W1.cols() == F, "bench", "unexpected tape layout");
  const ConstView<float> Q = P.middle_cols(layer.q_col(), kC), K = P.middle_cols(layer.k_col(), kC), Y = QKY, lr = P.middle_cols(layer.lr_col(), H);
  Tensor<float> dQ({n, kC}), dK({n, kC}), dY({n, kC}), dlr({n, H}), dgamma({H, d}), dbeta({H, d}), didx({c.mini_batch});
  Tensor<float> dW1({H * d, F}), db1({H, F});
  const auto& dO = input(n);
  ttt::InnerGrads<float> g{dQ.view(), dK.view(), dY.view(), dlr.view(), dgamma.view(), dbeta.view(), didx.data(), {dW1.view(), db1.view(), {}, {}}};
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const double t0 = cpu_seconds();
    ttt::run_inner_backward<float>(c, ttt::InnerForm::dual, Q, K, Y, lr, layer.token_idx.data(), layer.ttt_norm_weight, layer.ttt_norm_bias, saved, dO.view(), g);
    best = std::min(best, cpu_seconds() - t0);
  }
  return best;
}

/// The same-run GEMM rate: the TTT layer's largest product, x [n, C] times the fused projection
/// [C, 3C + H], one thread.
void gemm_rate(benchmark::State& state) {
  set_num_threads(1);
  const Index n = state.range(0);
  const auto& x = input(n);
  const auto& w = ttt_layer(ttt::Kind::linear).proj.weight;
  Tensor<float> y({n, w.rows()});
  double total = 0;
  for (auto _ : state) {
    const double t0 = cpu_seconds();
    matmul_nt<float>(x.view(), w.view(), y.view());
    const double dt = cpu_seconds() - t0;
    state.SetIterationTime(dt);
    total += dt;
    benchmark::DoNotOptimize(y.data());
  }
  const double f = flops::gemm(n, w.rows(), kC);
  counters(state, f, total);
  g_rates["gemm"][n] = f * double(state.iterations()) / total;
}

// ---------------------------------------------------------------------------------------------
// summary

/// First length where `variant` becomes cheaper than `base` (log-linear interpolation of the ratio
/// between the two measured lengths around the crossing), or -1 if it never does.
double crossover(const std::map<Index, double>& base, const std::map<Index, double>& variant) {
  double prev_t = 0, prev_log_ratio = 0;
  bool have_prev = false;
  for (const auto& [t, b] : base) {
    const auto it = variant.find(t);
    if (it == variant.end()) continue;
    const double log_ratio = std::log(b / it->second);  // > 0: variant cheaper
    if (log_ratio >= 0) {
      if (!have_prev) return double(t);  // already cheaper at the shortest length measured
      const double f = prev_log_ratio / (prev_log_ratio - log_ratio);
      return std::exp(std::log(prev_t) + f * (std::log(double(t)) - std::log(prev_t)));
    }
    prev_t = double(t), prev_log_ratio = log_ratio, have_prev = true;
  }
  return -1;
}

void print_summary() {
  auto medians = [](const std::string& key) {
    std::map<Index, double> m;
    for (const auto& [t, v] : g_times[key]) m[t] = median(v);
    return m;
  };
  std::printf("\nLayer prefill vs fused causal attention (d_model %td, %td heads of %td, one thread):\n", kC, kH, kD);
  std::printf("%8s %14s %14s %14s %10s %10s %10s %10s\n", "T", "attention ms", "ttt_linear ms", "ttt_mlp ms", "lin/attn",
              "mlp/attn", "lin GFLOP", "attn GFLOP");
  const auto att = medians("attention"), lin = medians("ttt_linear"), mlp = medians("ttt_mlp");
  for (const auto& [t, a] : att) {
    if (!lin.count(t) || !mlp.count(t)) continue;
    std::printf("%8td %14.2f %14.2f %14.2f %10.3f %10.3f %10.2f %10.2f\n", t, a * 1e3, lin.at(t) * 1e3, mlp.at(t) * 1e3,
                lin.at(t) / a, mlp.at(t) / a, g_flops["ttt_linear"][t] * 1e-9, g_flops["attention"][t] * 1e-9);
  }
  std::printf("crossover (time):  TTT-Linear faster than attention from T ~ %.0f, TTT-MLP from T ~ %.0f (-1: not in range)\n",
              crossover(att, lin), crossover(att, mlp));
  std::printf("crossover (FLOPs): TTT-Linear cheaper from T ~ %.0f, TTT-MLP from T ~ %.0f\n",
              crossover(g_flops["attention"], g_flops["ttt_linear"]), crossover(g_flops["attention"], g_flops["ttt_mlp"]));
  // Closed form: per token both have 8 C^2 of q, k, v, o; attention adds 2 (t + 1) C at position t
  // (causal QK^T and PV), TTT adds the lr gate 2 C H and the inner loop H (6 d^2 + 4 b d) (linear) or
  // H (56 d^2 + 20 b d) (MLP): equal sequence totals at T + 1 = H + H * inner / (2 C).
  const double lin_inner = 6.0 * kD * kD + 4.0 * 16 * kD, mlp_inner = 56.0 * kD * kD + 20.0 * 16 * kD;
  std::printf("crossover (FLOPs, closed form): TTT-Linear T = %.0f, TTT-MLP T = %.0f\n",
              double(kH) + double(kH) * lin_inner / (2.0 * kC) - 1, double(kH) + double(kH) * mlp_inner / (2.0 * kC) - 1);

  const auto att_train = medians("train_attention"), lin_train = medians("train_ttt_linear");
  if (!att_train.empty() && !lin_train.empty()) {
    std::printf("\nTraining step (forward_train + backward, one sequence, one thread) vs attention:\n");
    std::printf("%8s %14s %14s %10s %12s %12s %12s %10s %10s\n", "T", "attention ms", "ttt_linear ms", "lin/attn", "GEMM GF/s",
                "ttt bwd GF/s", "inner bwd", "bwd/GEMM", "inner/GEMM");
    for (const auto& [t, a] : att_train) {
      if (!lin_train.count(t)) continue;
      const double gemm = g_rates["gemm"].count(t) ? g_rates["gemm"][t] : g_rates["gemm"].empty() ? 0 : g_rates["gemm"].rbegin()->second;
      const double bwd = g_rates["train_ttt_linear_bwd"][t], inner = g_rates["train_ttt_linear_inner_bwd"][t];
      std::printf("%8td %14.1f %14.1f %10.3f %12.1f %12.1f %12.1f %10.2f %10.2f\n", t, a * 1e3, lin_train.at(t) * 1e3, lin_train.at(t) / a,
                  gemm * 1e-9, bwd * 1e-9, inner * 1e-9, gemm > 0 ? bwd / gemm : 0.0, gemm > 0 ? inner / gemm : 0.0);
    }
    std::printf("crossover (time): a TTT-Linear training step is faster than attention's from T ~ %.0f (-1: not in range)\n",
                crossover(att_train, lin_train));
  }

  std::printf("\nDecode step against its bounds (one thread; bytes = parameters + state, at the same-run triad):\n");
  for (const char* key : {"decode_attention", "decode_ttt_linear", "decode_ttt_mlp"})
    for (const auto& [t, r] : g_rates[std::string(key) + "_of_triad"])
      std::printf("  %-20s context %6td   %6.1f GFLOP/s   %5.2f of the triad bound\n", key, t,
                  g_rates[std::string(key) + "_gflops"][t] * 1e-9, r);

  std::printf("\nDecode cost per token (ms, median step, 1k and 32k steps interleaved):\n");
  for (const char* key : {"flat_attention", "flat_ttt_linear", "flat_ttt_mlp"}) {
    const auto m = medians(key);
    if (m.count(1024) && m.count(32768))
      std::printf("  %-20s 1k %8.3f   32k %8.3f   32k/1k %6.2f\n", key, m.at(1024) * 1e3, m.at(32768) * 1e3,
                  m.at(32768) / m.at(1024));
  }
}

}  // namespace

int main(int argc, char** argv) {
  bench::register_fma_peak(1);
  SequenceLayer<float>* lin = &ttt_layer(ttt::Kind::linear);
  SequenceLayer<float>* mlp = &ttt_layer(ttt::Kind::mlp);
  SequenceLayer<float>* att = &attention_layer();
  using ttt::InnerForm;
  const auto ms = benchmark::kMillisecond;
  // Dual vs primal at T = 2048: the inner loop alone, then the whole layer (same projections).
  benchmark::RegisterBenchmark("ttt_linear_inner:dual", inner_loop, ttt::Kind::linear, InnerForm::dual, false)->Arg(2048)->UseManualTime()->Unit(ms)->Iterations(5);
  benchmark::RegisterBenchmark("ttt_linear_inner:baseline", inner_loop, ttt::Kind::linear, InnerForm::primal, false)->Arg(2048)->UseManualTime()->Unit(ms)->Iterations(5);
  benchmark::RegisterBenchmark("ttt_mlp_inner:dual", inner_loop, ttt::Kind::mlp, InnerForm::dual, false)->Arg(2048)->UseManualTime()->Unit(ms)->Iterations(3);
  benchmark::RegisterBenchmark("ttt_mlp_inner:baseline", inner_loop, ttt::Kind::mlp, InnerForm::primal, false)->Arg(2048)->UseManualTime()->Unit(ms)->Iterations(3);
  // The inner loop one token per call, as decode runs it (no baseline: its rate is the figure).
  benchmark::RegisterBenchmark("ttt_linear_inner_decode:tokenwise", inner_loop, ttt::Kind::linear, InnerForm::primal, true)->UseManualTime()->Unit(ms)->Iterations(256);
  benchmark::RegisterBenchmark("ttt_mlp_inner_decode:tokenwise", inner_loop, ttt::Kind::mlp, InnerForm::primal, true)->UseManualTime()->Unit(ms)->Iterations(64);
  for (auto [name, layer] : {std::pair{"ttt_linear_prefill", lin}, std::pair{"ttt_mlp_prefill", mlp}}) {
    const std::string n = name;
    benchmark::RegisterBenchmark((n + ":dual").c_str(), layer_prefill, layer, InnerForm::dual, false, "")->Arg(2048)->UseManualTime()->Unit(ms)->Iterations(3);
    benchmark::RegisterBenchmark((n + ":baseline").c_str(), layer_prefill, layer, InnerForm::primal, false, "")->Arg(2048)->UseManualTime()->Unit(ms)->Iterations(3);
    benchmark::RegisterBenchmark((n + ":tokenwise").c_str(), layer_prefill, layer, InnerForm::primal, true, "")->Arg(2048)->UseManualTime()->Unit(ms)->Iterations(1);
  }
  // Layer prefill against attention; the ratio column is attention time / TTT time.
  for (Index t : {256, 512, 1024, 2048, 4096, 8192, 16384, 32768}) {
    const int iters = t <= 2048 ? 3 : 1;
    benchmark::RegisterBenchmark("layer_prefill:baseline", layer_prefill, att, InnerForm::dual, false, "attention")->Arg(t)->UseManualTime()->Unit(ms)->Iterations(iters);
    benchmark::RegisterBenchmark("layer_prefill:ttt_linear", layer_prefill, lin, InnerForm::dual, false, "ttt_linear")->Arg(t)->UseManualTime()->Unit(ms)->Iterations(iters);
    benchmark::RegisterBenchmark("layer_prefill:ttt_mlp", layer_prefill, mlp, InnerForm::dual, false, "ttt_mlp")->Arg(t)->UseManualTime()->Unit(ms)->Iterations(iters);
  }
  // Training step of one layer: attention is the baseline, the ratio column is its time / TTT's.
  for (Index t : {256, 512, 1024, 2048, 4096, 8192}) {
    const int iters = t <= 2048 ? 3 : 1;
    benchmark::RegisterBenchmark("train_step:baseline", train_step, att, "train_attention")->Arg(t)->UseManualTime()->Unit(ms)->Iterations(iters);
    benchmark::RegisterBenchmark("train_step:ttt_linear", train_step, lin, "train_ttt_linear")->Arg(t)->UseManualTime()->Unit(ms)->Iterations(iters);
  }
  for (Index t : {2048, 8192})
    benchmark::RegisterBenchmark("train_gemm:baseline", gemm_rate)->Arg(t)->UseManualTime()->Unit(ms)->Iterations(5);
  benchmark::RegisterBenchmark("decode_flat:baseline", decode_flat, att, "flat_attention")->UseManualTime()->Unit(ms)->Iterations(128);
  benchmark::RegisterBenchmark("decode_flat:ttt_linear", decode_flat, lin, "flat_ttt_linear")->UseManualTime()->Unit(ms)->Iterations(1024);
  benchmark::RegisterBenchmark("decode_flat:ttt_mlp", decode_flat, mlp, "flat_ttt_mlp")->UseManualTime()->Unit(ms)->Iterations(1024);
  benchmark::RegisterBenchmark("decode_batch_linear:engram", decode_batch<true>, lin)->Arg(8)->UseManualTime()->Unit(ms)->Iterations(128);
  benchmark::RegisterBenchmark("decode_batch_linear:baseline", decode_batch<false>, lin)->Arg(8)->UseManualTime()->Unit(ms)->Iterations(64);
  benchmark::RegisterBenchmark("decode_batch_mlp:engram", decode_batch<true>, mlp)->Arg(8)->UseManualTime()->Unit(ms)->Iterations(128);
  benchmark::RegisterBenchmark("decode_batch_mlp:baseline", decode_batch<false>, mlp)->Arg(8)->UseManualTime()->Unit(ms)->Iterations(64);
  for (Index t : {1024, 32768}) {
    benchmark::RegisterBenchmark("decode_token:baseline", decode_token, att, "decode_attention")->Arg(t)->UseManualTime()->Unit(ms)->Iterations(64);
    benchmark::RegisterBenchmark("decode_token:ttt_linear", decode_token, lin, "decode_ttt_linear")->Arg(t)->UseManualTime()->Unit(ms)->Iterations(256);
    benchmark::RegisterBenchmark("decode_token:ttt_mlp", decode_token, mlp, "decode_ttt_mlp")->Arg(t)->UseManualTime()->Unit(ms)->Iterations(256);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  bench::RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  print_summary();
  benchmark::Shutdown();
  return 0;
}
