// The outer backward of the TTT inner loop: the LN+L2 second-order piece, one mini-batch segment
// (dual and primal, linear and MLP, with and without the end-of-mini-batch update) and whole
// sequences ending in a partial mini-batch, against central finite differences in double; dual
// gradients against primal gradients.
#include <functional>
#include <sstream>

#include "engram/ttt/inner_backward.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {

/// A parameter under test: its value (perturbed in place) and the analytic gradient.
struct Probe {
  std::string name;
  View<double> value;
  ConstView<double> grad;
};

/// max over probes of max |fd - analytic| / max |analytic| (per probe), central differences with
/// step h on about `per_probe` elements of each probe spread over it (the suite also runs at -O0
/// under ASan); `report` receives one line per probe.
double fd_error(const std::vector<Probe>& probes, const std::function<double()>& loss, std::string& report, Index per_probe = 12,
                double h = 3e-6) {
  const test::ThreadCount one_thread(1);  // finite differences: thousands of small evaluations
  double worst = 0;
  std::ostringstream out;
  for (const Probe& p : probes) {
    double err = 0, scale = 0;
    Index k = 0;
    const Index stride = std::max<Index>(1, p.value.rows() * p.value.cols() / per_probe);
    for (Index r = 0; r < p.value.rows(); ++r)
      for (Index c = 0; c < p.value.cols(); ++c, ++k) {
        scale = std::max(scale, std::abs(p.grad(r, c)));
        if (k % stride != 0) continue;
        double& v = p.value(r, c);
        const double keep = v;
        v = keep + h;
        const double lp = loss();
        v = keep - h;
        const double lm = loss();
        v = keep;
        err = std::max(err, std::abs((lp - lm) / (2 * h) - p.grad(r, c)));
      }
    const double rel = err / std::max(scale, 1e-300);
    out << p.name << ": max |fd - analytic| " << err << ", max |grad| " << scale << ", relative " << rel << "\n";
    CHECK(scale > 0);  // a gradient that is identically zero tests nothing
    worst = std::max(worst, rel);
  }
  report = out.str();
  return worst;
}

/// <R, X> over a view.
double inner_product(ConstView<double> r, ConstView<double> x) {
  double s = 0;
  for (Index i = 0; i < x.rows(); ++i)
    for (Index j = 0; j < x.cols(); ++j) s += r(i, j) * x(i, j);
  return s;
}

/// max |a - b| / max |b|.
double rel_diff(ConstView<double> a, ConstView<double> b) {
  double err = 0, scale = 0;
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < a.cols(); ++j) {
      err = std::max(err, std::abs(a(i, j) - b(i, j)));
      scale = std::max(scale, std::abs(b(i, j)));
    }
  return err / std::max(scale, 1e-300);
}

Tensor<double> positive(Index n, std::uint64_t seed, double lo, double spread) {
  Tensor<double> t = test::random_tensor<double>({1, n}, seed, spread);
  for (Index i = 0; i < n; ++i) t(0, i) = lo + std::abs(t(0, i));
  return t;
}

/// Inner weights of one head: W1 [d, F], b1 [1, F] (+ W2 [F, d], b2 [1, d]).
struct Head {
  Tensor<double> W1, b1, W2, b2;
  Head(Index d, Index F, bool mlp, std::uint64_t seed, bool zero = false) {
    auto make = [&](Index r, Index c, std::uint64_t s, double scale) {
      return zero ? Tensor<double>({r, c}) : test::random_tensor<double>({r, c}, s, scale);
    };
    W1 = make(d, F, seed, 1.0 / std::sqrt(double(d)));
    b1 = make(1, F, seed + 1, 0.2);
    if (mlp) {
      W2 = make(F, d, seed + 2, 1.0 / std::sqrt(double(F)));
      b2 = make(1, d, seed + 3, 0.2);
    }
  }
  Head copy() const {
    Head h(0, 0, false, 0, true);
    h.W1 = W1.copy(), h.b1 = b1.copy(), h.W2 = W2.copy(), h.b2 = b2.copy();
    return h;
  }
  bool mlp() const { return !W2.empty(); }
  ttt::HeadParams<double> params() { return {W1.view(), b1.view(), W2.view(), b2.view()}; }
  std::vector<std::pair<std::string, Tensor<double>*>> all() {
    std::vector<std::pair<std::string, Tensor<double>*>> v = {{"W1", &W1}, {"b1", &b1}};
    if (mlp()) v.insert(v.end(), {{"W2", &W2}, {"b2", &b2}});
    return v;
  }
};

}  // namespace

TEST_CASE("the backward of the closed-form LN+L2 gradient matches finite differences in double", "[ttt][backward]") {
  for (Index n : {8, 17, 64}) {
    INFO("n = " << n);
    auto z = test::random_tensor<double>({3, n}, 1, 3.0);
    auto y = test::random_tensor<double>({3, n}, 2);
    auto gamma = test::random_tensor<double>({1, n}, 3, 0.3), beta = test::random_tensor<double>({1, n}, 4, 0.3);
    for (Index i = 0; i < n; ++i) gamma(0, i) += 1.0;
    const auto u = test::random_tensor<double>({3, n}, 5);
    std::string report;
    Tensor<double> dz({3, n}), dy({3, n}), dgamma({1, n}), dbeta({1, n}), g({3, n});
    ttt::ln_l2_grad_backward<double>(z.view(), y.view(), gamma.data(), beta.data(), 1e-6, u.view(), dz.view(), dy.view(),
                                     dgamma.data(), dbeta.data());
    auto loss = [&] {
      ttt::ln_l2_grad<double>(z.view(), y.view(), gamma.data(), beta.data(), 1e-6, g.view());
      return inner_product(u.view(), g.view());
    };
    const double e = fd_error({{"z", z.view(), dz.view()}, {"target", y.view(), dy.view()}, {"gamma", gamma.view(), dgamma.view()},
                               {"beta", beta.view(), dbeta.view()}},
                              loss, report);
    INFO(report);
    CHECK(e <= 1e-8);
  }
}

namespace {

/// One segment of one head with everything it depends on, its forward, and a random linear loss
/// L = <R, out> + <RW, W'> (the end weights' terms only with a commit).
struct SegmentCase {
  Index m, d, F;
  bool mlp, commit;
  Tensor<double> Q, K, Y, lr, s, gamma, beta;
  Head W0, RW;  // start weights; the loss weights of the end weights
  Tensor<double> R;

  SegmentCase(Index m_, Index d_, bool mlp_, bool commit_, std::uint64_t seed)
      : m(m_), d(d_), F(mlp_ ? 4 * d_ : d_), mlp(mlp_), commit(commit_), W0(d, F, mlp, seed + 10), RW(d, F, mlp, seed + 20) {
    Q = test::random_tensor<double>({m, d}, seed + 1);
    K = test::random_tensor<double>({m, d}, seed + 2);
    Y = test::random_tensor<double>({m, d}, seed + 3);
    lr = positive(m, seed + 4, 0.05, 0.2);
    s = positive(m, seed + 5, 0.05, 0.5);
    gamma = test::random_tensor<double>({1, d}, seed + 6, 0.3);
    for (Index i = 0; i < d; ++i) gamma(0, i) += 1.0;
    beta = test::random_tensor<double>({1, d}, seed + 7, 0.3);
    R = test::random_tensor<double>({m, d}, seed + 8);
  }
  ttt::Segment<double> segment(View<double> out) const {
    return {Q.view(), K.view(), Y.view(), lr.data(), s.data(), gamma.data(), beta.data(), 1e-6, out};
  }
  ttt::Kind kind() const { return mlp ? ttt::Kind::mlp : ttt::Kind::linear; }

  double loss(ttt::InnerForm form) {
    Head W = W0.copy(), sums(d, F, mlp, 0, true);
    Tensor<double> out({m, d});
    ttt::Arena<double> arena(ttt::Arena<double>::capacity_for(16, d, F));
    if (form == ttt::InnerForm::dual) ttt::dual_segment<double>(kind(), W.params(), sums.params(), segment(out.view()), commit, arena);
    else ttt::primal_segment<double>(kind(), W.params(), sums.params(), segment(out.view()), commit, arena);
    double l = inner_product(R.view(), out.view());
    if (commit) {
      const auto w = W.all(), rw = RW.all();
      for (std::size_t i = 0; i < w.size(); ++i) l += inner_product(rw[i].second->view(), w[i].second->view());
    }
    return l;
  }

  /// The analytic gradients of loss(form).
  struct Grads {
    Tensor<double> dQ, dK, dY, dlr, ds, dgamma, dbeta;
    Head dW;
  };
  Grads backward(ttt::InnerForm form) {
    Grads g{Tensor<double>({m, d}), Tensor<double>({m, d}), Tensor<double>({m, d}), Tensor<double>({1, m}), Tensor<double>({1, m}),
            Tensor<double>({1, d}), Tensor<double>({1, d}), RW.copy()};
    test::poison_padding(g.dQ);
    ttt::SegmentGrads<double> sg{g.dQ.view(), g.dK.view(), g.dY.view(), g.dlr.data(), g.ds.data(), g.dgamma.data(), g.dbeta.data()};
    ttt::Arena<double> arena(ttt::backward_arena_capacity<double>(16, d, F));
    const ttt::Segment<double> seg = segment({});
    if (form == ttt::InnerForm::dual) ttt::dual_segment_backward<double>(kind(), W0.params(), seg, R.view(), commit, g.dW.params(), sg, arena);
    else ttt::primal_segment_backward<double>(kind(), W0.params(), seg, R.view(), commit, g.dW.params(), sg, arena);
    return g;
  }
};

}  // namespace

TEST_CASE("one segment's backward matches finite differences: dual and primal, linear and MLP, with and without commit",
          "[ttt][backward]") {
  const Index d = 8;
  for (bool mlp : {false, true})
    for (Index m : {16, 5, 1})
      for (auto form : {ttt::InnerForm::dual, ttt::InnerForm::primal}) {
        const bool commit = m == 16;
        INFO((mlp ? "mlp" : "linear") << " m = " << m << (form == ttt::InnerForm::dual ? " dual" : " primal"));
        SegmentCase c(m, d, mlp, commit, 100 + std::uint64_t(m));
        auto g = c.backward(form);
        std::vector<Probe> probes = {{"Q", c.Q.view(), g.dQ.view()},   {"K", c.K.view(), g.dK.view()},
                                     {"Y", c.Y.view(), g.dY.view()},   {"lr", c.lr.view(), g.dlr.view()},
                                     {"s", c.s.view(), g.ds.view()},   {"gamma", c.gamma.view(), g.dgamma.view()},
                                     {"beta", c.beta.view(), g.dbeta.view()}};
        const auto w = c.W0.all(), dw = g.dW.all();
        for (std::size_t i = 0; i < w.size(); ++i) probes.push_back({w[i].first, w[i].second->view(), dw[i].second->view()});
        std::string report;
        const double e = fd_error(probes, [&] { return c.loss(form); }, report);
        INFO(report);
        CHECK(e <= 1e-8);
      }
}

TEST_CASE("dual and primal segment backwards give the same gradients in double", "[ttt][backward]") {
  for (bool mlp : {false, true})
    for (Index m : {16, 7}) {
      INFO((mlp ? "mlp" : "linear") << " m = " << m);
      SegmentCase c(m, 8, mlp, m == 16, 7);
      auto a = c.backward(ttt::InnerForm::dual), b = c.backward(ttt::InnerForm::primal);
      double e = std::max({rel_diff(a.dQ.view(), b.dQ.view()), rel_diff(a.dK.view(), b.dK.view()), rel_diff(a.dY.view(), b.dY.view()),
                           rel_diff(a.dlr.view(), b.dlr.view()), rel_diff(a.ds.view(), b.ds.view()),
                           rel_diff(a.dgamma.view(), b.dgamma.view()), rel_diff(a.dbeta.view(), b.dbeta.view())});
      const auto wa = a.dW.all(), wb = b.dW.all();
      for (std::size_t i = 0; i < wa.size(); ++i) e = std::max(e, rel_diff(wa[i].second->view(), wb[i].second->view()));
      CHECK(e <= 1e-12);
    }
}

namespace {

/// A whole sequence of n tokens over H heads through the inner loop from fresh initial weights.
struct SequenceCase {
  ttt::Config c;
  Index n;
  Tensor<double> Q, K, Y, lr, token_idx, gamma, beta, W1, b1, W2, b2, R;

  SequenceCase(ttt::Kind kind, Index n_, std::uint64_t seed) : n(n_) {
    c = ttt::Config::transformer(kind, 16, 2);  // H = 2 heads of d = 8
    const Index H = c.n_heads, d = c.head_dim(), F = c.inner_dim(), C = H * d;
    Q = test::random_tensor<double>({n, C}, seed + 1);
    K = test::random_tensor<double>({n, C}, seed + 2);
    Y = test::random_tensor<double>({n, C}, seed + 3);
    lr = Tensor<double>({n, H});
    const auto l = positive(n * H, seed + 4, 0.05, 0.2);
    for (Index t = 0; t < n; ++t)
      for (Index h = 0; h < H; ++h) lr(t, h) = l(0, t * H + h);
    token_idx = test::random_tensor<double>({1, c.mini_batch}, seed + 5, 0.05);
    token_idx(0, 3) = -0.5;  // s_3 = max(0, 1/4 - 0.5) = 0: the clamp (no gradient)
    gamma = test::random_tensor<double>({H, d}, seed + 6, 0.3);
    for (Index h = 0; h < H; ++h)
      for (Index i = 0; i < d; ++i) gamma(h, i) += 1.0;
    beta = test::random_tensor<double>({H, d}, seed + 7, 0.3);
    W1 = test::random_tensor<double>({H, d, F}, seed + 8, 1.0 / std::sqrt(double(d)));
    b1 = test::random_tensor<double>({H, F}, seed + 9, 0.2);
    if (kind == ttt::Kind::mlp) {
      W2 = test::random_tensor<double>({H, F, d}, seed + 10, 1.0 / std::sqrt(double(F)));
      b2 = test::random_tensor<double>({H, d}, seed + 11, 0.2);
    }
    R = test::random_tensor<double>({n, C}, seed + 12);
  }
  bool mlp() const { return c.kind == ttt::Kind::mlp; }
  ttt::InnerWeights<double> weights() {
    return {W1.view(), b1.view(), mlp() ? W2.view() : View<double>(), mlp() ? b2.view() : View<double>()};
  }

  /// <R, O> with O from the inference driver (run_inner on a fresh state).
  double loss(ttt::InnerForm form) {
    ttt::State<double> st;
    st.W1 = W1.copy(), st.b1 = b1.copy();
    st.W1_grad = Tensor<double>(W1.shape()), st.b1_grad = Tensor<double>(b1.shape());
    if (mlp()) {
      st.W2 = W2.copy(), st.b2 = b2.copy();
      st.W2_grad = Tensor<double>(W2.shape()), st.b2_grad = Tensor<double>(b2.shape());
    }
    Tensor<double> O({n, Q.cols()});
    ttt::run_inner<double>(c, form, Q.view(), K.view(), Y.view(), lr.view(), token_idx.data(), gamma, beta, st, O.view());
    return inner_product(R.view(), O.view());
  }

  struct Saved {
    Tensor<double> W1, b1, W2, b2;
    ttt::SavedWeights<double> view(Index H) {
      return {W1.view(), b1.view(), W2.empty() ? View<double>() : W2.view(), b2.empty() ? View<double>() : b2.view(), H};
    }
  };
  Saved make_saved() const {
    const Index S = ttt::n_segments(n, c.mini_batch), H = c.n_heads, d = c.head_dim(), F = c.inner_dim();
    Saved s{Tensor<double>({S * H * d, F}), Tensor<double>({S * H, F}), {}, {}};
    if (mlp()) s.W2 = Tensor<double>({S * H * F, d}), s.b2 = Tensor<double>({S * H, d});
    return s;
  }

  struct Grads {
    Tensor<double> O, dQ, dK, dY, dlr, dtoken_idx, dgamma, dbeta, dW1, db1, dW2, db2;
  };
  Grads backward(ttt::InnerForm form) {
    const Index H = c.n_heads, C = Q.cols();
    Saved saved = make_saved();
    Grads g{Tensor<double>({n, C}), Tensor<double>({n, C}), Tensor<double>({n, C}), Tensor<double>({n, C}), Tensor<double>({n, H}),
            Tensor<double>({1, c.mini_batch}), Tensor<double>(gamma.shape()), Tensor<double>(beta.shape()), Tensor<double>(W1.shape()),
            Tensor<double>(b1.shape()), Tensor<double>(W2.shape()), Tensor<double>(b2.shape())};
    ttt::run_inner_train<double>(c, form, Q.view(), K.view(), Y.view(), lr.view(), token_idx.data(), gamma, beta, weights(),
                                 saved.view(H), g.O.view());
    ttt::InnerGrads<double> out{g.dQ.view(), g.dK.view(), g.dY.view(), g.dlr.view(), g.dgamma.view(), g.dbeta.view(),
                                g.dtoken_idx.data(),
                                {g.dW1.view(), g.db1.view(), mlp() ? g.dW2.view() : View<double>(), mlp() ? g.db2.view() : View<double>()}};
    ttt::run_inner_backward<double>(c, form, Q.view(), K.view(), Y.view(), lr.view(), token_idx.data(), gamma, beta, saved.view(H),
                                    R.view(), out);
    return g;
  }
};

}  // namespace

TEST_CASE("the inner loop's backward over a sequence ending in a partial mini-batch matches finite differences",
          "[ttt][backward]") {
  for (auto kind : {ttt::Kind::linear, ttt::Kind::mlp})
    for (auto form : {ttt::InnerForm::dual, ttt::InnerForm::primal}) {
      const bool mlp = kind == ttt::Kind::mlp;
      INFO((mlp ? "mlp" : "linear") << (form == ttt::InnerForm::dual ? " dual" : " primal"));
      SequenceCase c(kind, 37, 500);  // 2 whole mini-batches and 5 tokens
      auto g = c.backward(form);
      std::vector<Probe> probes = {{"Q", c.Q.view(), g.dQ.view()},
                                   {"K", c.K.view(), g.dK.view()},
                                   {"Y", c.Y.view(), g.dY.view()},
                                   {"lr", c.lr.view(), g.dlr.view()},
                                   {"token_idx", c.token_idx.view(), g.dtoken_idx.view()},
                                   {"gamma", c.gamma.view(), g.dgamma.view()},
                                   {"beta", c.beta.view(), g.dbeta.view()},
                                   {"W1", c.W1.view(), g.dW1.view()},
                                   {"b1", c.b1.view(), g.db1.view()}};
      if (mlp) probes.insert(probes.end(), {{"W2", c.W2.view(), g.dW2.view()}, {"b2", c.b2.view(), g.db2.view()}});
      std::string report;
      const double e = fd_error(probes, [&] { return c.loss(form); }, report, 6);
      INFO(report);
      CHECK(e <= 1e-8);
      CHECK(g.dtoken_idx(0, 3) == 0);  // clamped scale
    }
}

TEST_CASE("sequence gradients through the dual form equal those through the primal form, and the training forward equals run_inner",
          "[ttt][backward]") {
  for (auto kind : {ttt::Kind::linear, ttt::Kind::mlp})
    for (Index n : {37, 48}) {
      INFO((kind == ttt::Kind::mlp ? "mlp" : "linear") << " n = " << n);
      SequenceCase c(kind, n, 900);
      auto a = c.backward(ttt::InnerForm::dual), b = c.backward(ttt::InnerForm::primal);
      double e = 0;
      for (auto [x, y] : {std::pair{&a.dQ, &b.dQ}, {&a.dK, &b.dK}, {&a.dY, &b.dY}, {&a.dlr, &b.dlr}, {&a.dtoken_idx, &b.dtoken_idx},
                          {&a.dgamma, &b.dgamma}, {&a.dbeta, &b.dbeta}, {&a.dW1, &b.dW1}, {&a.db1, &b.db1}})
        e = std::max(e, rel_diff(x->view(), y->view()));
      if (c.mlp()) e = std::max({e, rel_diff(a.dW2.view(), b.dW2.view()), rel_diff(a.db2.view(), b.db2.view())});
      CHECK(e <= 1e-12);
      // The training forward's outputs are run_inner's (the same kernels on a fresh state).
      ttt::State<double> st;
      st.W1 = c.W1.copy(), st.b1 = c.b1.copy();
      st.W1_grad = Tensor<double>(c.W1.shape()), st.b1_grad = Tensor<double>(c.b1.shape());
      if (c.mlp()) {
        st.W2 = c.W2.copy(), st.b2 = c.b2.copy();
        st.W2_grad = Tensor<double>(c.W2.shape()), st.b2_grad = Tensor<double>(c.b2.shape());
      }
      Tensor<double> O({n, c.Q.cols()});
      ttt::run_inner<double>(c.c, ttt::InnerForm::dual, c.Q.view(), c.K.view(), c.Y.view(), c.lr.view(), c.token_idx.data(), c.gamma,
                             c.beta, st, O.view());
      CHECK(rel_diff(a.O.view(), O.view()) == 0);
    }
}
