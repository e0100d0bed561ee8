// Shared by the attention tests: a problem (queries, per-KV-head keys and values, dout, gradients,
// a custom mask) and the slow, obvious materialised reference in double that builds S, P, dP and dS.
#pragma once

#include <cmath>
#include <ostream>
#include <random>
#include <vector>

#include "engram/core/attention_backward.hpp"
#include "test_util.hpp"

namespace engram::test::attention_ref {

struct Case {
  Index tq, n_heads, n_kv, d;
  std::vector<Index> tk;  // per KV head
  MaskKind mask = MaskKind::causal;
  Index offset = -1;
  Index window = 0;
};

inline std::ostream& operator<<(std::ostream& out, const Case& c) {
  return out << "tq=" << c.tq << " heads=" << c.n_heads << "/" << c.n_kv << " d=" << c.d << " tk0=" << c.tk[0]
             << " mask=" << int(c.mask) << " offset=" << c.offset << " window=" << c.window;
}

template <class T>
struct Problem {
  Case c;
  Tensor<T> q, out, dout, lse, dq;
  std::vector<Tensor<T>> k, v, dk, dv;
  std::vector<ConstView<T>> kv_k, kv_v;
  std::vector<View<T>> kv_dk, kv_dv;
  Tensor<std::uint8_t> mask;

  AttentionInput<T> forward_input() {
    AttentionInput<T> in;
    in.q = q.view();
    in.k = kv_k;
    in.v = kv_v;
    in.out = out.view();
    in.lse = lse.view();
    in.n_heads = c.n_heads;
    in.head_dim = c.d;
    in.mask = c.mask;
    in.offset = c.offset;
    in.window = c.window;
    if (c.mask == MaskKind::custom) in.custom_mask = mask.view();
    return in;
  }
  AttentionBackwardInput<T> backward_input() {
    AttentionBackwardInput<T> in;
    in.q = q.view();
    in.k = kv_k;
    in.v = kv_v;
    in.out = out.view();
    in.lse = lse.view();
    in.dout = dout.view();
    in.dq = dq.view();
    in.dk = kv_dk;
    in.dv = kv_dv;
    in.n_heads = c.n_heads;
    in.head_dim = c.d;
    in.mask = c.mask;
    in.offset = c.offset;
    in.window = c.window;
    if (c.mask == MaskKind::custom) in.custom_mask = mask.view();
    return in;
  }
};

template <class T>
Problem<T> make_problem(const Case& c, std::uint64_t seed) {
  Problem<T> p;
  p.c = c;
  p.q = test::random_tensor<T>({c.tq, c.n_heads * c.d}, seed);
  p.dout = test::random_tensor<T>({c.tq, c.n_heads * c.d}, seed + 1);
  p.out = Tensor<T>({c.tq, c.n_heads * c.d});
  p.dq = Tensor<T>({c.tq, c.n_heads * c.d});
  p.lse = Tensor<T>({c.tq, c.n_heads});
  for (Index h = 0; h < c.n_kv; ++h) {
    const Index tk = c.tk[std::size_t(h)];
    p.k.push_back(test::random_tensor<T>({tk, c.d}, seed + 10 + std::uint64_t(h)));
    p.v.push_back(test::random_tensor<T>({tk, c.d}, seed + 20 + std::uint64_t(h)));
    test::poison_padding(p.k.back());
    test::poison_padding(p.v.back());
    p.dk.push_back(test::random_tensor<T>({tk, c.d}, seed + 30));  // garbage: must be overwritten
    p.dv.push_back(test::random_tensor<T>({tk, c.d}, seed + 40));
  }
  for (auto& t : p.k) p.kv_k.push_back(t.view());
  for (auto& t : p.v) p.kv_v.push_back(t.view());
  for (auto& t : p.dk) p.kv_dk.push_back(t.view());
  for (auto& t : p.dv) p.kv_dv.push_back(t.view());
  if (c.mask == MaskKind::custom) {
    p.mask = Tensor<std::uint8_t>({c.tq, c.tk[0]});
    std::mt19937 rng{unsigned(seed)};
    for (Index i = 0; i < c.tq; ++i)
      for (Index j = 0; j < c.tk[0]; ++j) p.mask(i, j) = (rng() % 3) != 0 && i != 1;  // row 1 sees nothing
  }
  return p;
}

// The materialised reference: S, P, dP, dS as full matrices per query head.
struct Reference {
  test::Mat out, lse, dq;
  std::vector<test::Mat> dk, dv, probs;
};

template <class T>
bool visible(const Problem<T>& p, Index tk, Index i, Index j) {
  const Case& c = p.c;
  const Index off = c.offset >= 0 ? c.offset : (c.mask == MaskKind::causal ? tk - c.tq : 0);
  const Index pos = off + i;
  switch (c.mask) {
    case MaskKind::causal: return j <= pos && (c.window == 0 || j > pos - c.window);
    case MaskKind::reverse_causal: return j >= pos;
    case MaskKind::custom: return p.mask(i, j) != 0;
    case MaskKind::none: return true;
  }
  return false;
}

template <class T>
Reference reference(const Problem<T>& p, bool with_backward = true) {
  const Case& c = p.c;
  const Index group = c.n_heads / c.n_kv, d = c.d;
  const double scale = 1.0 / std::sqrt(double(d));
  Reference ref{test::Mat(c.tq, c.n_heads * d), test::Mat(c.tq, c.n_heads), test::Mat(c.tq, c.n_heads * d), {}, {}, {}};
  for (Index kv = 0; kv < c.n_kv; ++kv) {
    ref.dk.emplace_back(c.tk[std::size_t(kv)], d);
    ref.dv.emplace_back(c.tk[std::size_t(kv)], d);
  }
  for (Index h = 0; h < c.n_heads; ++h) {
    const Index kv = h / group, tk = c.tk[std::size_t(kv)];
    const Tensor<T>& K = p.k[std::size_t(kv)];
    const Tensor<T>& V = p.v[std::size_t(kv)];
    test::Mat S(c.tq, tk), P(c.tq, tk), dP(c.tq, tk), dS(c.tq, tk);
    for (Index i = 0; i < c.tq; ++i)
      for (Index j = 0; j < tk; ++j) {
        double dot = 0;
        for (Index e = 0; e < d; ++e) dot += double(p.q(i, h * d + e)) * double(K(j, e));
        S(i, j) = visible(p, tk, i, j) ? dot * scale : -INFINITY;
      }
    for (Index i = 0; i < c.tq; ++i) {
      double m = -INFINITY, z = 0;
      for (Index j = 0; j < tk; ++j) m = std::max(m, S(i, j));
      for (Index j = 0; j < tk; ++j) z += m == -INFINITY ? 0.0 : std::exp(S(i, j) - m);
      ref.lse(i, h) = z > 0 ? m + std::log(z) : -INFINITY;
      for (Index j = 0; j < tk; ++j) P(i, j) = z > 0 ? std::exp(S(i, j) - m) / z : 0.0;
    }
    for (Index i = 0; i < c.tq; ++i)
      for (Index e = 0; e < d; ++e) {
        double o = 0;
        for (Index j = 0; j < tk; ++j) o += P(i, j) * double(V(j, e));
        ref.out(i, h * d + e) = o;
      }
    ref.probs.push_back(P);
    if (!with_backward) continue;
    for (Index i = 0; i < c.tq; ++i)
      for (Index j = 0; j < tk; ++j) {
        double g = 0;
        for (Index e = 0; e < d; ++e) g += double(p.dout(i, h * d + e)) * double(V(j, e));
        dP(i, j) = g;
      }
    for (Index i = 0; i < c.tq; ++i) {
      double D = 0;
      for (Index j = 0; j < tk; ++j) D += P(i, j) * dP(i, j);
      for (Index j = 0; j < tk; ++j) dS(i, j) = P(i, j) * (dP(i, j) - D);
    }
    for (Index i = 0; i < c.tq; ++i)
      for (Index e = 0; e < d; ++e) {
        double g = 0;
        for (Index j = 0; j < tk; ++j) g += dS(i, j) * double(K(j, e));
        ref.dq(i, h * d + e) = scale * g;
      }
    for (Index j = 0; j < tk; ++j)
      for (Index e = 0; e < d; ++e) {
        double gk = 0, gv = 0;
        for (Index i = 0; i < c.tq; ++i) {
          gk += dS(i, j) * double(p.q(i, h * d + e));
          gv += P(i, j) * double(p.dout(i, h * d + e));
        }
        ref.dk[std::size_t(kv)](j, e) += scale * gk;
        ref.dv[std::size_t(kv)](j, e) += gv;
      }
  }
  return ref;
}

template <class T>
double tolerance(const Case& c, double magnitude) {
  // As the forward tests: score rounding ~ d eps |q||k| scale, turned into relative errors of P; the
  // gradients sum up to Tk (or Tq * group) such terms.
  const double terms = double(std::max(c.tq * (c.n_heads / c.n_kv), c.tk[0]));
  return 64 * test::eps<T>() * (4.0 * std::sqrt(double(c.d)) + std::log2(terms + 2) + 8) * std::max(1.0, magnitude);
}

}  // namespace engram::test::attention_ref
