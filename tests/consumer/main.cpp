// Consumer check: an installed engram compiles, links and computes with the consumer's own flags.
#include <cmath>
#include <cstdio>

#include <engram/engram.hpp>

int main() {
  using namespace engram;
  Tensor<float> q({8, 16}), k({8, 16}), v({8, 16}), out({8, 16});
  for (Index i = 0; i < 8; ++i)
    for (Index c = 0; c < 16; ++c) q(i, c) = k(i, c) = 0.1f * float(c - i), v(i, c) = float(i);
  std::vector<ConstView<float>> ks = {k.view()}, vs = {v.view()};
  AttentionInput<float> in;
  in.q = q.view();
  in.k = ks;
  in.v = vs;
  in.out = out.view();
  in.n_heads = 1;
  in.head_dim = 16;
  attention<float>(in);
  // Row 0 sees only key 0 (value 0); the last row averages values 0..7 with positive weights.
  const bool ok = out(0, 0) == 0.f && out(7, 3) > 0.f && out(7, 3) < 7.f && std::isfinite(out(7, 3));
  std::printf("engram %d.%d.%d consumer: %s\n", version_major, version_minor, version_patch, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
