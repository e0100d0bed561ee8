// Training benchmarks, every figure a ratio against a baseline measured in the same run.
// Section 1, kernels: the fused attention backward against a materialised Eigen backward (and the
// FMA peak), the sliding-window forward against dense attention over the same number of keys, the
// chunked LM head + cross-entropy against materialised logits.
// Section 2, whole models: a training step (forward, loss, backward) of small GPT-2-like models
// against the same-run forward-only step and the same-run GEMM rate; the activation tape's bytes.
#include <cmath>
#include <vector>

#include <Eigen/Core>

#include "bench_util.hpp"
#include "engram/core/attention.hpp"
#include "engram/core/attention_backward.hpp"
#include "engram/core/cross_entropy.hpp"
#include "engram/train/step.hpp"

using namespace engram;

namespace {

Tensor<float> random_tensor(Index rows, Index cols, std::uint32_t seed) {
  Tensor<float> t({rows, cols});
  std::uint32_t x = seed * 2654435761u + 1;
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) {
      x = x * 1664525u + 1013904223u;
      t(r, c) = float(int(x >> 9) % 2001 - 1000) * 1e-3f;
    }
  return t;
}

// =============================================================================================
// Section 1: kernels

constexpr Index kHeadDim = 64;

// One causal head of T queries and keys with its forward output and lse, and a random dL/dout.
struct AttentionProblem {
  Tensor<float> q, k, v, out, lse, dout, dq, dk, dv;
  std::vector<ConstView<float>> ks, vs;
  std::vector<View<float>> dks, dvs;

  explicit AttentionProblem(Index t)
      : q(random_tensor(t, kHeadDim, 1)), k(random_tensor(t, kHeadDim, 2)), v(random_tensor(t, kHeadDim, 3)),
        out({t, kHeadDim}), lse({t, 1}), dout(random_tensor(t, kHeadDim, 4)), dq({t, kHeadDim}), dk({t, kHeadDim}),
        dv({t, kHeadDim}), ks{k.view()}, vs{v.view()}, dks{dk.view()}, dvs{dv.view()} {
    AttentionInput<float> in;
    in.q = q.view(), in.k = ks, in.v = vs, in.out = out.view(), in.lse = lse.view();
    in.n_heads = 1, in.head_dim = kHeadDim;
    attention<float>(in);
  }
  AttentionBackwardInput<float> backward_input() {
    AttentionBackwardInput<float> in;
    in.q = q.view(), in.k = ks, in.v = vs, in.out = out.view(), in.lse = lse.view(), in.dout = dout.view();
    in.dq = dq.view(), in.dk = dks, in.dv = dvs;
    in.n_heads = 1, in.head_dim = kHeadDim;
    return in;
  }
};

// The analytic count of the backward: the five products S, dV, dP, dQ, dK over the visible
// (causal) pairs, 2 * pairs * d FLOPs each, i.e. 2.5x the forward's two products.
double backward_flops(Index t) { return 5.0 * flops::attention_product(flops::causal_pairs(t, t), kHeadDim); }

void attention_backward_fused(benchmark::State& state) {
  const Index t = state.range(0);
  set_num_threads(int(state.range(1)));
  AttentionProblem p(t);
  const auto in = p.backward_input();  // views of p, which outlives the loop
  for (auto _ : state) {
    attention_backward<float>(in);
    benchmark::DoNotOptimize(p.dq.data());
  }
  state.counters["GFLOPs"] = bench::gflops(backward_flops(t));
  state.counters["threads"] = double(state.range(1));
}

// The naive materialised backward: the same math with Eigen GEMMs on full T x T matrices, the
// causal mask applied to S (masked P is 0), P recomputed from the saved lse as the fused kernel does.
void attention_backward_materialised(benchmark::State& state) {
  const Index t = state.range(0), d = kHeadDim;
  set_num_threads(int(state.range(1)));
  AttentionProblem p(t);
  using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Map = Eigen::Map<const M, Eigen::Unaligned, Eigen::OuterStride<>>;
  const Map q(p.q.data(), t, d, Eigen::OuterStride<>(p.q.stride())), k(p.k.data(), t, d, Eigen::OuterStride<>(p.k.stride())),
      v(p.v.data(), t, d, Eigen::OuterStride<>(p.v.stride())), o(p.out.data(), t, d, Eigen::OuterStride<>(p.out.stride())),
      dout(p.dout.data(), t, d, Eigen::OuterStride<>(p.dout.stride()));
  M s(t, t), dp(t, t), dq(t, d), dk(t, d), dv(t, d);
  const float scale = 1.0f / std::sqrt(float(d));
  for (auto _ : state) {
    s.noalias() = (q * scale) * k.transpose();
    for (Index i = 0; i < t; ++i) {
      auto row = s.row(i);
      row.head(i + 1) = (row.head(i + 1).array() - p.lse(i, 0)).exp();
      row.tail(t - i - 1).setZero();
    }
    dv.noalias() = s.transpose() * dout;
    dp.noalias() = dout * v.transpose();
    const Eigen::VectorXf delta = (dout.array() * o.array()).rowwise().sum();
    dp = (s.array() * (dp.array().colwise() - delta.array())).matrix();
    dq.noalias() = (dp * k) * scale;
    dk.noalias() = (dp.transpose() * q) * scale;
    benchmark::DoNotOptimize(dq.data());
    benchmark::DoNotOptimize(dk.data());
  }
  state.counters["GFLOPs"] = bench::gflops(backward_flops(t));
  state.counters["threads"] = double(state.range(1));
}

// Sliding window: T queries, each sees its `window` most recent keys.
constexpr Index kWindowT = 8192, kWindow = 256;

void window_forward(benchmark::State& state) {
  set_num_threads(int(state.range(0)));
  auto q = random_tensor(kWindowT, kHeadDim, 5), k = random_tensor(kWindowT, kHeadDim, 6), v = random_tensor(kWindowT, kHeadDim, 7);
  Tensor<float> out({kWindowT, kHeadDim});
  std::vector<ConstView<float>> ks = {k.view()}, vs = {v.view()};
  AttentionInput<float> in;
  in.q = q.view(), in.k = ks, in.v = vs, in.out = out.view(), in.n_heads = 1, in.head_dim = kHeadDim;
  in.window = kWindow;
  for (auto _ : state) {
    attention<float>(in);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GFLOPs"] = bench::gflops(2 * flops::attention_product(visible_pairs(in, 0), kHeadDim));
  state.counters["threads"] = double(state.range(0));
}

// The baseline: the same T queries, each attending densely (no mask, nothing to skip) to 256 keys,
// i.e. the work the window asks for with none of its bookkeeping.
void window_dense_baseline(benchmark::State& state) {
  set_num_threads(int(state.range(0)));
  auto q = random_tensor(kWindowT, kHeadDim, 5), k = random_tensor(kWindow, kHeadDim, 6), v = random_tensor(kWindow, kHeadDim, 7);
  Tensor<float> out({kWindowT, kHeadDim});
  std::vector<ConstView<float>> ks = {k.view()}, vs = {v.view()};
  AttentionInput<float> in;
  in.q = q.view(), in.k = ks, in.v = vs, in.out = out.view(), in.n_heads = 1, in.head_dim = kHeadDim;
  in.mask = MaskKind::none;
  for (auto _ : state) {
    attention<float>(in);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GFLOPs"] = bench::gflops(2 * flops::attention_product(visible_pairs(in, 0), kHeadDim));
  state.counters["threads"] = double(state.range(0));
}

// LM head + cross-entropy with gradients, N rows of width d, vocabulary V: three GEMMs
// (logits, dhidden, dW), 6 N d V FLOPs.
constexpr Index kHeadRows = 1024, kHeadWidth = 256;

void lm_head_fused(benchmark::State& state) {
  const Index vocab = state.range(0);
  set_num_threads(int(state.range(1)));
  auto hidden = random_tensor(kHeadRows, kHeadWidth, 8), w = random_tensor(vocab, kHeadWidth, 9);
  Tensor<float> dhidden({kHeadRows, kHeadWidth}), dw({vocab, kHeadWidth});
  std::vector<std::int32_t> labels(static_cast<std::size_t>(kHeadRows));
  for (Index i = 0; i < kHeadRows; ++i) labels[std::size_t(i)] = std::int32_t((i * 7919) % vocab);
  for (auto _ : state) {
    const auto stats = lm_cross_entropy<float>(hidden.view(), w.view(), labels, 1.0f / float(kHeadRows), dhidden.view(), dw.view());
    benchmark::DoNotOptimize(stats.loss_sum);
  }
  state.counters["GFLOPs"] = bench::gflops(3 * flops::gemm(kHeadRows, vocab, kHeadWidth));
  state.counters["threads"] = double(state.range(1));
}

// The baseline holds the whole [N, V] logits: one GEMM, a log-softmax and its gradient row by row,
// two GEMMs.
void lm_head_materialised(benchmark::State& state) {
  const Index vocab = state.range(0), n = kHeadRows;
  set_num_threads(int(state.range(1)));
  using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  M hidden = M::Random(n, kHeadWidth), w = M::Random(vocab, kHeadWidth), logits(n, vocab), dhidden(n, kHeadWidth),
    dw = M::Zero(vocab, kHeadWidth);
  for (auto _ : state) {
    logits.noalias() = hidden * w.transpose();
    double loss = 0;
    for (Index i = 0; i < n; ++i) {
      auto row = logits.row(i);
      const float m = row.maxCoeff();
      row = (row.array() - m).exp();
      const float z = row.sum();
      const Index y = (i * 7919) % vocab;
      loss += std::log(double(z)) - std::log(double(row(y)));
      row /= z * float(n);
      row(y) -= 1.0f / float(n);
    }
    dhidden.noalias() = logits * w;
    dw.noalias() += logits.transpose() * hidden;
    benchmark::DoNotOptimize(loss);
    benchmark::DoNotOptimize(dhidden.data());
  }
  state.counters["GFLOPs"] = bench::gflops(3 * flops::gemm(n, vocab, kHeadWidth));
  state.counters["threads"] = double(state.range(1));
}

void register_kernel_benchmarks() {
  for (Index t : {2048, 4096})
    for (int threads : {1, 2}) {
      benchmark::RegisterBenchmark("attention_backward:fused", attention_backward_fused)
          ->Args({t, threads})->UseRealTime()->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark("attention_backward:baseline", attention_backward_materialised)
          ->Args({t, threads})->UseRealTime()->Unit(benchmark::kMillisecond);
    }
  for (int threads : {1, 2}) {
    benchmark::RegisterBenchmark("window_forward:fused", window_forward)->Arg(threads)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("window_forward:baseline", window_dense_baseline)->Arg(threads)->UseRealTime()->Unit(benchmark::kMillisecond);
  }
  for (Index vocab : {256, 32768})
    for (int threads : {1, 2}) {
      benchmark::RegisterBenchmark("lm_head:fused", lm_head_fused)->Args({vocab, threads})->UseRealTime()->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark("lm_head:baseline", lm_head_materialised)->Args({vocab, threads})->UseRealTime()->Unit(benchmark::kMillisecond);
    }
}

// =============================================================================================
// Section 2: whole models

// A GPT-2-like byte-level model: LayerNorm, learned positions, tied head, 4 layers, width d.
struct TrainProblem {
  Decoder<float> model;
  train::Batch batch;
  Gradients<float> grads;
  train::StepBuffers<float> buf;

  TrainProblem(Index d, Index t)
      : model(Decoder<float>::create(ModelConfig::gpt2(261, d, 4, d / 64, t))), batch(), grads() {
    init_for_training(model, 1);
    grads = Gradients<float>(model);
    // One sequence of t tokens: the rows the GEMMs see are t (the batch dimension folds into rows).
    batch.n_seqs = 1, batch.seq_len = t;
    for (Index i = 0; i < t; ++i) batch.tokens.push_back(std::int32_t((i * 7919 + 13) % 256)), batch.labels.push_back(std::int32_t((i * 104729 + 7) % 256));
  }
  // Analytic FLOPs of a training step: 3x the forward (forward, and the backward's two products per
  // forward product), with the causal attention pairs.
  double forward_flops() const {
    const auto& c = model.config;
    const double t = double(batch.seq_len);
    const double per_layer = flops::gemm(Index(t), 3 * c.d_model, c.d_model) + flops::gemm(Index(t), c.d_model, c.d_model) +
                             2 * flops::gemm(Index(t), c.d_ff, c.d_model) + 2 * flops::attention_product(flops::causal_pairs(batch.seq_len, batch.seq_len), c.d_model);
    return double(c.n_layers) * per_layer + flops::gemm(Index(t), c.vocab_size, c.d_model);
  }
};

void train_step(benchmark::State& state, bool backward) {
  set_num_threads(int(state.range(2)));
  TrainProblem p(state.range(0), state.range(1));
  train::StepOptions o;
  o.backward = backward;
  for (auto _ : state) {
    p.grads.zero();
    const auto s = train::lm_step<float>(p.model, p.batch, &p.grads, p.buf, 1.0f / float(p.batch.count()), o);
    benchmark::DoNotOptimize(s.loss_sum);
  }
  const double flops = (backward ? 3.0 : 1.0) * p.forward_flops();
  state.counters["GFLOPs"] = bench::gflops(flops);
  state.counters["tokens_per_s"] = benchmark::Counter(double(p.batch.rows()), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tape_MiB"] = double(p.buf.tape.peak_bytes()) / 1048576.0;
  // A T x T float buffer per head would be this large; the tape must stay far below it.
  state.counters["TxT_MiB"] = double(p.batch.seq_len) * double(p.batch.seq_len) * 4.0 / 1048576.0;
  state.counters["threads"] = double(state.range(2));
}
void train_step_forward(benchmark::State& state) { train_step(state, false); }
void train_step_full(benchmark::State& state) { train_step(state, true); }

// The GEMM rate of the model's dominant products: [T, d] x [d, 4d] (the MLP's up projection).
void model_gemm(benchmark::State& state) {
  const Index d = state.range(0), t = state.range(1);
  set_num_threads(int(state.range(2)));
  auto a = random_tensor(t, d, 11), w = random_tensor(4 * d, d, 12);
  Tensor<float> c({t, 4 * d});
  for (auto _ : state) {
    matmul_nt<float>(a.view(), w.view(), c.view());
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOPs"] = bench::gflops(flops::gemm(t, 4 * d, d));
  state.counters["threads"] = double(state.range(2));
}

void register_model_benchmarks() {
  for (Index d : {256, 512})
    for (Index t : {512, 2048})
      for (int threads : {1, 2}) {
        benchmark::RegisterBenchmark("train_step:baseline", train_step_forward)->Args({d, t, threads})->UseRealTime()->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark("train_step:forward_backward", train_step_full)->Args({d, t, threads})->UseRealTime()->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark("train_gemm:model_shape", model_gemm)->Args({d, t, threads})->UseRealTime()->Unit(benchmark::kMillisecond);
      }
  // Memory at 4096 tokens: the tape holds activations linear in T, no T x T buffer.
  benchmark::RegisterBenchmark("train_memory:forward_backward", train_step_full)->Args({256, 4096, 2})->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(2);
}

}  // namespace

int main(int argc, char** argv) {
  bench::register_fma_peak(2);
  register_kernel_benchmarks();
  register_model_benchmarks();
  return engram::bench::run(argc, argv);
}
