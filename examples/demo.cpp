// The main demo: the cost of full causal attention as the sequence grows, measured and analytic.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <engram/engram.hpp>

using namespace engram;

namespace {

struct Measurement {
  double seconds = 0, flops = 0, bytes = 0;
};

// One row of the side-by-side table: a way of reading a sequence of a given length.
struct Contender {
  std::string name;
  std::function<Measurement(Index length)> run;
};

Tensor<float> random_tensor(Index rows, Index cols, unsigned seed) {
  Tensor<float> t({rows, cols});
  unsigned x = seed;
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) x = x * 1664525u + 1013904223u, t(r, c) = float(int(x >> 9) % 2001 - 1000) * 1e-3f;
  return t;
}

Contender full_attention(Index heads, Index head_dim) {
  return {"full attention", [=](Index t) {
            auto q = random_tensor(t, heads * head_dim, 1), k = random_tensor(t, head_dim * heads, 2),
                 v = random_tensor(t, head_dim * heads, 3);
            Tensor<float> out({t, heads * head_dim});
            std::vector<ConstView<float>> ks, vs;
            for (Index h = 0; h < heads; ++h)
              ks.push_back(k.view().middle_cols(h * head_dim, head_dim)), vs.push_back(v.view().middle_cols(h * head_dim, head_dim));
            AttentionInput<float> in;
            in.q = q.view();
            in.k = ks;
            in.v = vs;
            in.out = out.view();
            in.n_heads = heads;
            in.head_dim = head_dim;
            const auto start = std::chrono::steady_clock::now();
            attention<float>(in);
            Measurement m;
            m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            m.flops = 2 * double(heads) * flops::attention_product(flops::causal_pairs(t, t), head_dim);
            m.bytes = 2.0 * double(t) * double(heads * head_dim) * sizeof(float);  // the K and V it must keep
            return m;
          }};
}

}  // namespace

int main(int argc, char** argv) {
  Index max_length = 8192;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--max-length") && i + 1 < argc) max_length = std::atol(argv[++i]);
    else {
      std::printf("usage: %s [--max-length N]\n", argv[0]);
      return std::strcmp(argv[i], "--help") ? 2 : 0;
    }
  }
  const std::vector<Contender> contenders = {full_attention(8, 64)};
  std::printf("%-16s %8s %12s %12s %12s %10s\n", "method", "tokens", "time (ms)", "GFLOP", "GFLOP/s", "KV MiB");
  for (const Contender& c : contenders)
    for (Index t = 512; t <= max_length; t *= 2) {
      const Measurement m = c.run(t);
      std::printf("%-16s %8td %12.2f %12.3f %12.1f %10.1f\n", c.name.c_str(), t, m.seconds * 1e3, m.flops * 1e-9,
                  m.flops * 1e-9 / m.seconds, m.bytes / (1 << 20));
    }
  return 0;
}
