// Tensor-core benchmarks: GEMM against raw Eigen, fused causal attention against a materialised
// Eigen baseline, and vector ops against plain scalar loops; all ratios within one run.
#include <cmath>

#include <Eigen/Core>

#include "bench_util.hpp"
#include "engram/core/attention.hpp"
#include "engram/core/gemm.hpp"
#include "engram/core/ops.hpp"

using namespace engram;

namespace {

Tensor<float> random(Index rows, Index cols, std::uint32_t seed) {
  Tensor<float> t({rows, cols});
  std::uint32_t x = seed * 2654435761u + 1;
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) {
      x = x * 1664525u + 1013904223u;
      t(r, c) = float(int(x >> 9) % 2001 - 1000) * 1e-3f;
    }
  return t;
}

// ----------------------------------------------------------------------------------------------
// GEMM: C = A * B^T (the shape of every projection: activations times a [out, in] weight).

void gemm_engram(benchmark::State& state) {
  const Index n = state.range(0);
  set_num_threads(int(state.range(1)));
  auto a = random(n, n, 1), b = random(n, n, 2);
  Tensor<float> c({n, n});
  for (auto _ : state) {
    matmul_nt<float>(a.view(), b.view(), c.view());
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOPs"] = bench::gflops(flops::gemm(n, n, n));
  state.counters["threads"] = double(state.range(1));
}

void gemm_eigen(benchmark::State& state) {
  const Index n = state.range(0);
  set_num_threads(int(state.range(1)));
  using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  M a = M::Random(n, n), b = M::Random(n, n), c(n, n);
  for (auto _ : state) {
    c.noalias() = a * b.transpose();
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOPs"] = bench::gflops(flops::gemm(n, n, n));
  state.counters["threads"] = double(state.range(1));
}

// ----------------------------------------------------------------------------------------------
// Causal attention, one head, one thread.

void attention_fused(benchmark::State& state) {
  const Index t = state.range(0), d = 64;
  set_num_threads(1);
  auto q = random(t, d, 3), k = random(t, d, 4), v = random(t, d, 5);
  Tensor<float> out({t, d});
  std::vector<ConstView<float>> ks = {k.view()}, vs = {v.view()};
  AttentionInput<float> in;
  in.q = q.view();
  in.k = ks;
  in.v = vs;
  in.out = out.view();
  in.n_heads = 1;
  in.head_dim = d;
  for (auto _ : state) {
    attention<float>(in);
    benchmark::DoNotOptimize(out.data());
  }
  // The yardstick: the causal count 2 * T^2 * d (both products over half the matrix).
  state.counters["GFLOPs"] = bench::gflops(2.0 * double(t) * double(t) * double(d));
  state.counters["threads"] = 1;
}

void attention_naive(benchmark::State& state) {
  const Index t = state.range(0), d = 64;
  set_num_threads(1);
  using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  M q = M::Random(t, d), k = M::Random(t, d), v = M::Random(t, d), s(t, t), o(t, d);
  const float scale = 1.0f / std::sqrt(float(d));
  for (auto _ : state) {
    s.noalias() = (q * scale) * k.transpose();
    for (Index i = 0; i < t; ++i) {
      auto row = s.row(i);
      row.tail(t - i - 1).setConstant(-INFINITY);
      row = (row.array() - row.maxCoeff()).exp();
      row /= row.sum();
    }
    o.noalias() = s * v;
    benchmark::DoNotOptimize(o.data());
  }
  state.counters["GFLOPs"] = bench::gflops(2.0 * double(t) * double(t) * double(d));
  state.counters["threads"] = 1;
}

// ----------------------------------------------------------------------------------------------
// Vector ops: bytes moved per second, engram (xsimd) against the obvious scalar loop.

constexpr Index kRows = 256, kCols = 1024;

template <class Op>
void vector_op(benchmark::State& state, Op op) {
  auto x = random(kRows, kCols, 6);
  auto y = random(kRows, kCols, 7);
  std::vector<float> w(std::size_t(kCols), 1.1f), b(std::size_t(kCols), 0.1f);
  set_num_threads(1);
  for (auto _ : state) {
    op(x, y, w.data(), b.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * kRows * kCols * 2 * int64_t(sizeof(float)));
}

void softmax_engram(benchmark::State& s) {
  vector_op(s, [](auto& x, auto& y, auto*, auto*) { copy<float>(x.view(), y.view()); softmax_rows<float>(y.view()); });
}
void softmax_scalar(benchmark::State& s) {
  vector_op(s, [](auto& x, auto& y, auto*, auto*) {
    for (Index r = 0; r < kRows; ++r) {
      const float* in = x.row(r);
      float* out = y.row(r);
      float m = -INFINITY, sum = 0;
      for (Index c = 0; c < kCols; ++c) m = std::max(m, in[c]);
      for (Index c = 0; c < kCols; ++c) sum += out[c] = std::exp(in[c] - m);
      for (Index c = 0; c < kCols; ++c) out[c] /= sum;
    }
  });
}
void layer_norm_engram(benchmark::State& s) {
  vector_op(s, [](auto& x, auto& y, auto* w, auto* b) { layer_norm<float>(x.view(), w, b, 1e-5f, y.view()); });
}
void layer_norm_scalar(benchmark::State& s) {
  vector_op(s, [](auto& x, auto& y, auto* w, auto* b) {
    for (Index r = 0; r < kRows; ++r) {
      const float* in = x.row(r);
      float* out = y.row(r);
      float mean = 0, var = 0;
      for (Index c = 0; c < kCols; ++c) mean += in[c];
      mean /= float(kCols);
      for (Index c = 0; c < kCols; ++c) var += (in[c] - mean) * (in[c] - mean);
      const float rstd = 1.0f / std::sqrt(var / float(kCols) + 1e-5f);
      for (Index c = 0; c < kCols; ++c) out[c] = (in[c] - mean) * rstd * w[c] + b[c];
    }
  });
}
void rms_norm_engram(benchmark::State& s) {
  vector_op(s, [](auto& x, auto& y, auto* w, auto*) { rms_norm<float>(x.view(), w, 1e-5f, y.view()); });
}
void rms_norm_scalar(benchmark::State& s) {
  vector_op(s, [](auto& x, auto& y, auto* w, auto*) {
    for (Index r = 0; r < kRows; ++r) {
      const float* in = x.row(r);
      float* out = y.row(r);
      float ms = 0;
      for (Index c = 0; c < kCols; ++c) ms += in[c] * in[c];
      const float rstd = 1.0f / std::sqrt(ms / float(kCols) + 1e-5f);
      for (Index c = 0; c < kCols; ++c) out[c] = in[c] * rstd * w[c];
    }
  });
}
void gelu_engram(benchmark::State& s) {
  vector_op(s, [](auto& x, auto& y, auto*, auto*) { copy<float>(x.view(), y.view()); gelu_tanh<float>(y.view()); });
}
void gelu_scalar(benchmark::State& s) {
  vector_op(s, [](auto& x, auto& y, auto*, auto*) {
    for (Index r = 0; r < kRows; ++r)
      for (Index c = 0; c < kCols; ++c) {
        const float v = x(r, c);
        y(r, c) = 0.5f * v * (1.0f + std::tanh(0.7978845608f * (v + 0.044715f * v * v * v)));
      }
  });
}
void silu_engram(benchmark::State& s) {
  vector_op(s, [](auto& x, auto& y, auto*, auto*) { copy<float>(x.view(), y.view()); silu<float>(y.view()); });
}
void silu_scalar(benchmark::State& s) {
  vector_op(s, [](auto& x, auto& y, auto*, auto*) {
    for (Index r = 0; r < kRows; ++r)
      for (Index c = 0; c < kCols; ++c) y(r, c) = x(r, c) / (1.0f + std::exp(-x(r, c)));
  });
}

}  // namespace

int main(int argc, char** argv) {
  bench::register_fma_peak(2);
  for (Index n : {256, 512, 1024, 2048})
    for (int threads : {1, 2}) {
      benchmark::RegisterBenchmark("gemm:engram", gemm_engram)->Args({n, threads})->UseRealTime()->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark("gemm:baseline", gemm_eigen)->Args({n, threads})->UseRealTime()->Unit(benchmark::kMillisecond);
    }
  for (Index t : {1024, 4096}) {
    benchmark::RegisterBenchmark("attention:fused", attention_fused)->Arg(t)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("attention:baseline", attention_naive)->Arg(t)->UseRealTime()->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark("softmax:engram", softmax_engram)->UseRealTime();
  benchmark::RegisterBenchmark("softmax:baseline", softmax_scalar)->UseRealTime();
  benchmark::RegisterBenchmark("layer_norm:engram", layer_norm_engram)->UseRealTime();
  benchmark::RegisterBenchmark("layer_norm:baseline", layer_norm_scalar)->UseRealTime();
  benchmark::RegisterBenchmark("rms_norm:engram", rms_norm_engram)->UseRealTime();
  benchmark::RegisterBenchmark("rms_norm:baseline", rms_norm_scalar)->UseRealTime();
  benchmark::RegisterBenchmark("gelu_tanh:engram", gelu_engram)->UseRealTime();
  benchmark::RegisterBenchmark("gelu_tanh:baseline", gelu_scalar)->UseRealTime();
  benchmark::RegisterBenchmark("silu:engram", silu_engram)->UseRealTime();
  benchmark::RegisterBenchmark("silu:baseline", silu_scalar)->UseRealTime();
  return engram::bench::run(argc, argv);
}
