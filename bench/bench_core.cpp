// Tensor-core benchmarks: GEMM against OpenBLAS sgemm (Eigen when OpenBLAS is absent), fused
// causal attention against a causal-blocked Eigen attention, and vector ops against plain scalar
// loops; all ratios within one run.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <Eigen/Core>
#if ENGRAM_BENCH_OPENBLAS
#include <cblas.h>  // OpenBLAS's own (pkg-config openblas): declares openblas_set_num_threads
#endif

#include "bench_util.hpp"
#include "engram/core/activation_quant.hpp"
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

// Both libraries keep their worker threads spinning for a while after a parallel call (OpenBLAS
// for about 2^28 cycles by default, OpenMP for its spin count): a pause before timing lets the
// previous benchmark's threads park so they do not compete with this one's.
void let_threads_park() { std::this_thread::sleep_for(std::chrono::milliseconds(300)); }

void gemm_engram(benchmark::State& state) {
  const Index n = state.range(0);
  set_num_threads(int(state.range(1)));
  let_threads_park();
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
  let_threads_park();
  using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  M a = M::Random(n, n), b = M::Random(n, n), c(n, n);
  for (auto _ : state) {
    c.noalias() = a * b.transpose();
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOPs"] = bench::gflops(flops::gemm(n, n, n));
  state.counters["threads"] = double(state.range(1));
}

#if ENGRAM_BENCH_OPENBLAS
void gemm_openblas(benchmark::State& state) {
  const Index n = state.range(0);
  openblas_set_num_threads(int(state.range(1)));
  set_num_threads(1);
  let_threads_park();
  auto a = random(n, n, 1), b = random(n, n, 2);
  Tensor<float> c({n, n});
  const int ni = int(n);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ni, ni, ni, 1.0f, a.data(), int(a.stride()), b.data(), int(b.stride()), 0.0f,
                c.data(), int(c.stride()));
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOPs"] = bench::gflops(flops::gemm(n, n, n));
  state.counters["threads"] = double(state.range(1));
}
#endif

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

// Softmax of a row of scores whose last `masked` entries are the keys after the query's position.
template <class Row>
void causal_softmax(Row&& row, Index masked) {
  row.tail(masked).setConstant(-INFINITY);
  row = (row.array() - row.maxCoeff()).exp();
  row /= row.sum();
}

// Materialises the whole T x T score matrix and masks its upper half after the fact: twice the
// work of a causal kernel; kept as a reference point, not as the baseline.
void attention_materialised(benchmark::State& state) {
  const Index t = state.range(0), d = 64;
  set_num_threads(1);
  using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  M q = M::Random(t, d), k = M::Random(t, d), v = M::Random(t, d), s(t, t), o(t, d);
  const float scale = 1.0f / std::sqrt(float(d));
  for (auto _ : state) {
    s.noalias() = (q * scale) * k.transpose();
    for (Index i = 0; i < t; ++i) causal_softmax(s.row(i), t - i - 1);
    o.noalias() = s * v;
    benchmark::DoNotOptimize(o.data());
  }
  state.counters["GFLOPs"] = bench::gflops(2.0 * double(t) * double(t) * double(d));
  state.counters["threads"] = 1;
}

// The baseline: causal-blocked attention on Eigen's GEMM. Per block of kBlock queries, the scores
// against the keys up to the block's last query only (the blocks above the diagonal are skipped,
// not masked), the diagonal block masked, an exact softmax per row, then P V: the causal half of
// the work plus half a block per row, in two Eigen products per block.
void attention_blocked(benchmark::State& state) {
  constexpr Index kBlock = 64;  // a 64 x 64 block of scores is 16 KB, in L1 beside its Q and K rows
  const Index t = state.range(0), d = 64;
  set_num_threads(1);
  using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  M q = M::Random(t, d), k = M::Random(t, d), v = M::Random(t, d), s(kBlock, t), o(t, d);
  const float scale = 1.0f / std::sqrt(float(d));
  for (auto _ : state) {
    for (Index i0 = 0; i0 < t; i0 += kBlock) {
      const Index rows = std::min(kBlock, t - i0), keys = i0 + rows;
      auto sb = s.topLeftCorner(rows, keys);
      sb.noalias() = (q.middleRows(i0, rows) * scale) * k.topRows(keys).transpose();
      for (Index r = 0; r < rows; ++r) causal_softmax(sb.row(r), keys - (i0 + r) - 1);  // keys after query i0 + r
      o.middleRows(i0, rows).noalias() = sb * v.topRows(keys);
    }
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
/// Activation quantisation for q8/q4 products (every input row of every decode product): SIMD
/// blocks against the scalar rule, the same rows.
template <bool Vectorised>
void quantise_rows(benchmark::State& s) {
  const Index blocks = act_quant::padded_blocks(kCols);
  std::vector<std::int8_t> q(std::size_t(blocks * kQuantBlock));
  std::vector<float> d(std::size_t(blocks * act_quant::kLanes));
  std::vector<std::int32_t> bias(d.size());
  vector_op(s, [&](auto& x, auto&, auto*, auto*) {
    for (Index r = 0; r < kRows; ++r) act_quant::quantise(x.row(r), kCols, 8, q.data(), d.data(), bias.data(), Vectorised);
    benchmark::DoNotOptimize(q.data());
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
#if ENGRAM_BENCH_OPENBLAS
      benchmark::RegisterBenchmark("gemm:baseline", gemm_openblas)->Args({n, threads})->UseRealTime()->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark("gemm:eigen", gemm_eigen)->Args({n, threads})->UseRealTime()->Unit(benchmark::kMillisecond);
#else
      benchmark::RegisterBenchmark("gemm:baseline", gemm_eigen)->Args({n, threads})->UseRealTime()->Unit(benchmark::kMillisecond);
#endif
    }
#if ENGRAM_BENCH_OPENBLAS
  std::printf("gemm:baseline is OpenBLAS %s\n", openblas_get_config());
  // OpenBLAS picks its kernels for the CPU when it loads, unless OPENBLAS_CORETYPE names others (a
  // machine seen here exported OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU: half the baseline's speed).
  if (const char* forced = std::getenv("OPENBLAS_CORETYPE"))
    std::printf("warning: OPENBLAS_CORETYPE=%s is set: OpenBLAS runs those kernels, not the ones it would choose for this CPU "
                "(unset it for the honest baseline)\n", forced);
#else
  std::printf("gemm:baseline is Eigen: OpenBLAS was not found at configure time (apt install libopenblas-dev)\n");
#endif
  for (Index t : {1024, 4096}) {
    benchmark::RegisterBenchmark("attention:fused", attention_fused)->Arg(t)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("attention:baseline", attention_blocked)->Arg(t)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("attention:materialised", attention_materialised)->Arg(t)->UseRealTime()->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark("softmax:engram", softmax_engram)->UseRealTime();
  benchmark::RegisterBenchmark("softmax:baseline", softmax_scalar)->UseRealTime();
  benchmark::RegisterBenchmark("quantise:engram", quantise_rows<true>)->UseRealTime();
  benchmark::RegisterBenchmark("quantise:baseline", quantise_rows<false>)->UseRealTime();
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
