// TTT layers against the PyTorch reference fixtures (block outputs, traces, decode state), the
// invariants (dual == primal, any chunking gives the same outputs and state), finite-difference
// checks of the closed-form inner gradient, and the layer's input errors.
#include <map>

#include "engram/core/ops.hpp"
#include "engram/ttt/loader.hpp"
#include "test_util.hpp"
#include "ttt/ttt_fixture.hpp"

using namespace engram;

namespace {

/// [H, L, d] (a reference trace, rows = H * L) -> [L, H * d] (engram's head-major columns).
Tensor<float> merge_heads(const Tensor<float>& t) {
  const Index H = t.dim(0), L = t.dim(1), d = t.dim(2);
  Tensor<float> out({L, H * d});
  for (Index h = 0; h < H; ++h)
    for (Index l = 0; l < L; ++l) std::copy_n(t.row(h * L + l), d, out.row(l) + h * d);
  return out;
}

/// [r, c] -> [c, r].
template <class T>
Tensor<T> transposed(ConstView<T> x) {
  Tensor<T> out({x.cols(), x.rows()});
  for (Index r = 0; r < x.rows(); ++r)
    for (Index c = 0; c < x.cols(); ++c) out(c, r) = x(r, c);
  return out;
}

/// One block of a layer fixture with its own sequence state.
template <class T>
struct BlockRunner {
  ttt::ModelSpec spec;
  Block<T> block;
  std::vector<std::unique_ptr<LayerState<T>>> states;
  Workspace<T> ws;
  FlopCounter flops;
  Index seen = 0;

  BlockRunner(const Checkpoint& ck, ttt::InnerForm form = ttt::InnerForm::dual)
      : spec(test::spec_from_metadata(ck.files().at(0).metadata())), block(ttt::make_block<T>(spec)) {
    hf::WeightBinder<T> b(ck, "fixture");
    ttt::bind_block<T>(b, "param.", spec, block);
    ttt::ttt_layer(block).form = form;
    reset();
  }
  void reset() {
    states.clear();
    for (auto& br : block.branches) states.push_back(br.layer->make_state());
    seen = 0;
  }
  /// Feeds x [n, C] in consecutive calls of the given lengths (all of x when empty).
  Tensor<T> run(ConstView<float> x, std::vector<Index> pieces = {}) {
    if (pieces.empty()) pieces = {x.rows()};
    Tensor<T> out({x.rows(), x.cols()});
    Index t = 0;
    for (Index n : pieces) {
      Tensor<T> h = test::cast<T>(x.middle_rows(t, n));
      StepContext<T> ctx;
      ctx.workspace = &ws;
      ctx.flops = &flops;
      ctx.tokens_seen = seen;
      block.forward(h.view(), states, ctx);
      for (Index r = 0; r < n; ++r) std::copy_n(h.row(r), h.cols(), out.row(t + r));
      t += n;
      seen += n;
    }
    REQUIRE(t == x.rows());
    return out;
  }
  ttt::Layer<T>& layer() { return ttt::ttt_layer(block); }
  ttt::State<T>& ttt_state() { return dynamic_cast<ttt::State<T>&>(*states[spec.layer.pre_conv ? 1 : 0]); }
  ttt::ConvState<T>& conv_state() { return dynamic_cast<ttt::ConvState<T>&>(*states[0]); }
};

const char* const kLayerFixtures[] = {"ttt_linear_T", "ttt_linear_M", "ttt_mlp_T", "ttt_mlp_M"};

Checkpoint open_layer_fixture(const std::string& name) { return Checkpoint::open(test::fixture("ttt/" + name + ".safetensors")); }

/// Relative error of every inner-state tensor against another state.
template <class T, class U>
double state_error(ttt::State<T>& a, ttt::State<U>& b) {
  double e = std::max({test::relative_error<T, U>(a.W1.view(), b.W1.view()), test::relative_error<T, U>(a.b1.view(), b.b1.view()),
                       test::relative_error<T, U>(a.W1_grad.view(), b.W1_grad.view()), test::relative_error<T, U>(a.b1_grad.view(), b.b1_grad.view())});
  if (!a.W2.empty())
    e = std::max({e, test::relative_error<T, U>(a.W2.view(), b.W2.view()), test::relative_error<T, U>(a.b2.view(), b.b2.view()),
                  test::relative_error<T, U>(a.W2_grad.view(), b.W2_grad.view()), test::relative_error<T, U>(a.b2_grad.view(), b.b2_grad.view())});
  if (!a.conv_qk.empty()) e = std::max(e, test::relative_error<T, U>(a.conv_qk.view(), b.conv_qk.view()));
  return a.position == b.position ? e : INFINITY;
}

}  // namespace

TEST_CASE("TTT blocks match the PyTorch reference: dual and primal and decode", "[ttt][golden]") {
  for (const char* name : kLayerFixtures) {
    INFO(name);
    const Checkpoint ck = open_layer_fixture(name);
    const auto x = ck.read<float>("input.x");
    const auto ref = ck.read<float>("output.block");
    BlockRunner<float> dual(ck);
    const double e_dual = test::relative_error<float, float>(dual.run(x.view()).view(), ref.view());
    BlockRunner<float> primal(ck, ttt::InnerForm::primal);
    const double e_primal = test::relative_error<float, float>(primal.run(x.view()).view(), ck.read<float>("output.block_primal").view());
    BlockRunner<float> dec(ck);
    std::vector<Index> pieces = {21};
    pieces.resize(pieces.size() + 16, 1);
    const double e_decode = test::relative_error<float, float>(dec.run(x.view(), pieces).view(), ck.read<float>("output.block_decode").view());
    BlockRunner<double> dual64(ck);
    const double e_double = test::relative_error<double, float>(dual64.run(x.view()).view(), ref.view());
    INFO(name << " block relative error: dual " << e_dual << ", primal " << e_primal << ", decode 21+16x1 " << e_decode
              << ", double " << e_double);
    CHECK(e_dual <= 1e-5);
    CHECK(e_primal <= 1e-5);
    CHECK(e_decode <= 1e-5);
    CHECK(e_double <= 1e-6);

    // The decode state after 21 + 16 x 1 tokens: weights at the start of mini-batch 2, sums of the
    // 5 pending tokens, the conv histories.
    ttt::State<float>& st = dec.ttt_state();
    CHECK(st.position == 37);
    double e_state = std::max({test::relative_error<float, float>(st.W1.view(), ck.read<float>("state.W1").view()),
                               test::relative_error<float, float>(st.b1.view(), ck.read<float>("state.b1").view()),
                               test::relative_error<float, float>(st.W1_grad.view(), ck.read<float>("state.W1_grad").view()),
                               test::relative_error<float, float>(st.b1_grad.view(), ck.read<float>("state.b1_grad").view())});
    if (dec.spec.layer.kind == ttt::Kind::mlp)
      e_state = std::max({e_state, test::relative_error<float, float>(st.W2.view(), ck.read<float>("state.W2").view()),
                          test::relative_error<float, float>(st.b2.view(), ck.read<float>("state.b2").view()),
                          test::relative_error<float, float>(st.W2_grad.view(), ck.read<float>("state.W2_grad").view()),
                          test::relative_error<float, float>(st.b2_grad.view(), ck.read<float>("state.b2_grad").view())});
    if (dec.spec.layer.share_qk)
      e_state = std::max(e_state, test::relative_error<float, float>(transposed<float>(st.conv_qk.view()).view(), ck.read<float>("state.conv_qk").view()));
    if (dec.spec.layer.pre_conv)
      e_state = std::max(e_state, test::relative_error<float, float>(transposed<float>(dec.conv_state().history.view()).view(),
                                                    ck.read<float>("state.conv_pre").view()));
    INFO(name << " decode state relative error " << e_state);
    CHECK(e_state <= 1e-5);
  }
}

TEST_CASE("TTT layer traces match the reference: projections and RoPE and eta and inner outputs", "[ttt][golden]") {
  for (const char* name : kLayerFixtures) {
    INFO(name);
    const Checkpoint ck = open_layer_fixture(name);
    BlockRunner<float> r(ck);
    const Index C = r.spec.layer.d_model;
    // The TTT layer's input: seq_norm(h), h = x (+ the pre-conv branch on the Mamba backbone).
    Tensor<float> h = ck.read<float>("input.x").copy();
    const Index L = h.rows();
    StepContext<float> ctx;
    ctx.workspace = &r.ws;
    Tensor<float> normed({L, C}), out({L, C});
    std::size_t branch = 0;
    if (r.spec.layer.pre_conv) {
      r.block.branches[0].norm.forward(h.view(), normed.view());
      r.block.branches[0].layer->forward(normed.view(), out.view(), r.states[0].get(), ctx);
      for (Index t = 0; t < L; ++t) simd::add(h.row(t), out.row(t), h.row(t), C);
      branch = 1;
    }
    r.block.branches[branch].norm.forward(h.view(), normed.view());
    ttt::Trace<float> trace;
    r.layer().forward_traced(normed.view(), out.view(), r.states[branch].get(), ctx, &trace);
    const double e[] = {test::relative_error<float, float>(trace.XQ.view(), merge_heads(ck.read<float>("trace.XQ")).view()),
                        test::relative_error<float, float>(trace.XK.view(), merge_heads(ck.read<float>("trace.XK")).view()),
                        test::relative_error<float, float>(trace.XV.view(), merge_heads(ck.read<float>("trace.XV")).view()),
                        test::relative_error<float, float>(trace.lr.view(), ck.read<float>("trace.ttt_lr").view()),
                        test::relative_error<float, float>(trace.inner_out.view(), merge_heads(ck.read<float>("trace.inner_out")).view()),
                        test::relative_error<float, float>(out.view(), ck.read<float>("trace.layer_out").view())};
    INFO(name << " traces XQ " << e[0] << " XK " << e[1] << " XV " << e[2] << " lr " << e[3] << " inner_out " << e[4]
              << " layer_out " << e[5]);
    for (double v : e) CHECK(v <= 1e-5);
  }
}

TEMPLATE_TEST_CASE("TTT invariants: dual equals primal and every chunking gives the same outputs and state",
                   "[ttt][invariant]", float, double) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  const std::vector<std::vector<Index>> chunkings = {
      {5, 3, 24, 1, 4, 33},    // the reference's pieces, then a long tail
      {15, 2, 16, 17, 3, 17},  // straddling every boundary
      {16, 16, 16, 16, 6},     // aligned
      {1, 31, 1, 31, 6},
      std::vector<Index>(70, 1)};  // token by token
  for (const char* name : kLayerFixtures) {
    INFO(name);
    const Checkpoint ck = open_layer_fixture(name);
    BlockRunner<T> base(ck);
    const auto x = test::random_tensor<float>({70, base.spec.layer.d_model}, 11);  // longer than the fixture: 4 mini-batches + 6
    const auto full = base.run(x.view());
    BlockRunner<T> primal(ck, ttt::InnerForm::primal);
    const auto full_primal = primal.run(x.view());
    CHECK(test::relative_error<T, T>(full_primal.view(), full.view()) <= tol);
    CHECK(state_error(primal.ttt_state(), base.ttt_state()) <= tol);
    for (const auto& pieces : chunkings) {
      for (auto form : {ttt::InnerForm::dual, ttt::InnerForm::primal}) {
        INFO("pieces " << pieces.size() << " first " << pieces[0] << " form " << int(form));
        BlockRunner<T> r(ck, form);
        CHECK(test::relative_error<T, T>(r.run(x.view(), pieces).view(), full.view()) <= tol);
        CHECK(state_error(r.ttt_state(), base.ttt_state()) <= tol);
        if (r.spec.layer.pre_conv) CHECK(test::relative_error<T, T>(r.conv_state().history.view(), base.conv_state().history.view()) == 0);
      }
    }
  }
}

TEST_CASE("TTT layer state clones fork a sequence", "[ttt][invariant]") {
  const Checkpoint ck = open_layer_fixture("ttt_mlp_M");
  BlockRunner<double> r(ck);
  const auto x = test::random_tensor<float>({40, r.spec.layer.d_model}, 5);
  const auto ref = r.run(x.view());
  BlockRunner<double> a(ck);
  a.run(x.view().middle_rows(0, 19));
  // Fork after 19 tokens (mid-mini-batch: pending sums and conv histories must be copied).
  std::vector<std::unique_ptr<LayerState<double>>> forked;
  for (auto& s : a.states) forked.push_back(s ? s->clone() : nullptr);
  CHECK(a.states[1]->bytes() > 0);
  CHECK(forked[1]->bytes() == a.states[1]->bytes());
  const auto other = test::random_tensor<float>({7, r.spec.layer.d_model}, 6);
  a.run(other.view());  // the original sequence diverges
  a.states = std::move(forked);
  const auto tail = a.run(x.view().middle_rows(19, 21));
  CHECK(test::relative_error<double, double>(tail.view(), ref.view().middle_rows(19, 21)) <= 1e-12);
  CHECK(state_error(a.ttt_state(), r.ttt_state()) <= 1e-12);
}

TEST_CASE("closed-form LN+L2 backward and gelu derivative match finite differences in double", "[ttt][gradient]") {
  for (Index n : {8, 17, 64}) {
    const auto z = test::random_tensor<double>({3, n}, 1, 3.0);
    const auto y = test::random_tensor<double>({3, n}, 2);
    const auto gamma = test::random_tensor<double>({n}, 3, 0.3);
    const auto beta = test::random_tensor<double>({n}, 4, 0.3);
    std::vector<double> g1(static_cast<std::size_t>(n)), b(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) g1[std::size_t(i)] = 1.0 + gamma[i], b[std::size_t(i)] = beta[i];
    Tensor<double> grad({3, n});
    ttt::ln_l2_grad<double>(z.view(), y.view(), g1.data(), b.data(), 1e-6, grad.view());
    auto loss = [&](Tensor<double>& zz, Index r) {
      Tensor<double> ln({1, n});
      layer_norm<double>(zz.view().middle_rows(r, 1), g1.data(), b.data(), 1e-6, ln.view());
      double l = 0;
      for (Index i = 0; i < n; ++i) l += 0.5 * (ln(0, i) - y(r, i)) * (ln(0, i) - y(r, i));
      return l;
    };
    double worst = 0;
    Tensor<double> zz = z.copy();
    for (Index r = 0; r < 3; ++r)
      for (Index i = 0; i < n; ++i) {
        const double h = 1e-5, keep = zz(r, i);
        zz(r, i) = keep + h;
        const double lp = loss(zz, r);
        zz(r, i) = keep - h;
        const double lm = loss(zz, r);
        zz(r, i) = keep;
        worst = std::max(worst, std::abs((lp - lm) / (2 * h) - grad(r, i)));
      }
    INFO("n = " << n << ", max |fd - closed form| = " << worst);
    CHECK(worst <= 1e-8);
    // grad may alias z
    Tensor<double> in_place = z.copy();
    ttt::ln_l2_grad<double>(in_place.view(), y.view(), g1.data(), b.data(), 1e-6, in_place.view());
    CHECK(test::relative_error<double, double>(in_place.view(), grad.view()) == 0);
  }
  Tensor<double> x({1, 401}), d({1, 401});
  for (Index i = 0; i < 401; ++i) x(0, i) = -8.0 + 0.04 * double(i);
  copy<double>(x.view(), d.view());
  gelu_tanh_derivative<double>(d.view());
  double worst = 0;
  for (Index i = 0; i < 401; ++i) {
    Tensor<double> p({1, 2});
    p(0, 0) = x(0, i) + 1e-6;
    p(0, 1) = x(0, i) - 1e-6;
    gelu_tanh<double>(p.view());
    worst = std::max(worst, std::abs((p(0, 0) - p(0, 1)) / 2e-6 - d(0, i)));
  }
  CHECK(worst <= 1e-8);
}

namespace {
/// Random inner weights of one head: W1 [d, F], b1 [1, F] (+ W2 [F, d], b2 [1, d]).
struct HeadTensors {
  Tensor<double> W1, b1, W2, b2;
  HeadTensors(Index d, Index F, bool mlp, std::uint64_t seed, bool zero = false) {
    W1 = zero ? Tensor<double>({d, F}) : test::random_tensor<double>({d, F}, seed, 1.0 / std::sqrt(double(d)));
    b1 = zero ? Tensor<double>({1, F}) : test::random_tensor<double>({1, F}, seed + 1, 0.1);
    if (mlp) {
      W2 = zero ? Tensor<double>({F, d}) : test::random_tensor<double>({F, d}, seed + 2, 0.5 / std::sqrt(double(F)));
      b2 = zero ? Tensor<double>({1, d}) : test::random_tensor<double>({1, d}, seed + 3, 0.05);
    }
  }
  HeadTensors copy() const {
    HeadTensors h(0, 0, false, 0, true);
    h.W1 = W1.copy(), h.b1 = b1.copy(), h.W2 = W2.copy(), h.b2 = b2.copy();
    return h;
  }
  ttt::HeadParams<double> params() { return {W1.view(), b1.view(), W2.view(), b2.view()}; }
  std::vector<Tensor<double>*> all() { return W2.empty() ? std::vector<Tensor<double>*>{&W1, &b1} : std::vector<Tensor<double>*>{&W1, &b1, &W2, &b2}; }
};

/// 1/2 || LN(f_res(k; W)) - y ||^2 for one token, straight from the definition.
double inner_loss(HeadTensors& w, ConstView<double> k, ConstView<double> y, const double* gamma, const double* beta) {
  const Index d = k.cols(), F = w.W1.cols();
  Tensor<double> z1({1, F}), z({1, d});
  matmul<double>(k, w.W1.view(), z1.view());
  simd::add(z1.row(0), w.b1.row(0), z1.row(0), F);
  if (w.W2.empty()) {
    copy<double>(z1.view(), z.view());
  } else {
    gelu_tanh<double>(z1.view());
    matmul<double>(z1.view(), w.W2.view(), z.view());
    simd::add(z.row(0), w.b2.row(0), z.row(0), d);
  }
  layer_norm<double>(z.view(), gamma, beta, 1e-6, z.view());
  double l = 0;
  for (Index i = 0; i < d; ++i) l += 0.5 * (z(0, i) - y(0, i)) * (z(0, i) - y(0, i));
  return l;
}
}  // namespace

TEST_CASE("the inner-loop gradients of TTT-Linear and TTT-MLP match finite differences in double", "[ttt][gradient]") {
  const Index d = 8;
  for (bool mlp : {false, true}) {
    INFO((mlp ? "mlp" : "linear"));
    const Index F = mlp ? 4 * d : d;
    HeadTensors w(d, F, mlp, 10), sums(d, F, mlp, 0, true);
    const auto q = test::random_tensor<double>({1, d}, 20), k = test::random_tensor<double>({1, d}, 21);
    const auto y = test::random_tensor<double>({1, d}, 22);
    const auto gamma = test::random_tensor<double>({d}, 23, 0.2), beta = test::random_tensor<double>({d}, 24, 0.2);
    std::vector<double> g(static_cast<std::size_t>(d));
    for (Index i = 0; i < d; ++i) g[std::size_t(i)] = 1.0 + gamma[i];
    Tensor<double> out({1, d});
    const double lr = 1.0, s = 1.0;
    ttt::Segment<double> seg{q.view(), k.view(), y.view(), &lr, &s, g.data(), beta.data(), 1e-6, out.view()};
    ttt::Arena<double> arena(ttt::Arena<double>::capacity_for(16, d, F));
    HeadTensors w_copy = w.copy();
    // One primal token with lr = 1 and no commit: the pending sums are the gradient at W0.
    ttt::primal_segment<double>(mlp ? ttt::Kind::mlp : ttt::Kind::linear, w_copy.params(), sums.params(), seg, false, arena);
    double worst = 0, scale = 0;
    const auto params = w.all();
    const auto grads = sums.all();
    for (std::size_t p = 0; p < params.size(); ++p)
      for (Index r = 0; r < params[p]->rows(); ++r)
        for (Index c = 0; c < params[p]->cols(); ++c) {
          double& v = params[p]->row(r)[c];
          const double keep = v, h = 1e-5;
          v = keep + h;
          const double lp = inner_loss(w, k.view(), y.view(), g.data(), beta.data());
          v = keep - h;
          const double lm = inner_loss(w, k.view(), y.view(), g.data(), beta.data());
          v = keep;
          const double fd = (lp - lm) / (2 * h);
          worst = std::max(worst, std::abs(fd - grads[p]->row(r)[c]));
          scale = std::max(scale, std::abs(fd));
        }
    INFO("max |fd - analytic| " << worst << ", max |grad| " << scale);
    CHECK(scale > 1e-2);
    CHECK(worst <= 1e-8 * std::max(1.0, scale));
  }
}

TEST_CASE("dual and primal kernels agree on whole and partial mini-batches", "[ttt][invariant]") {
  const Index d = 8, b = 16;
  for (bool mlp : {false, true}) {
    const Index F = mlp ? 4 * d : d;
    const ttt::Kind kind = mlp ? ttt::Kind::mlp : ttt::Kind::linear;
    for (Index m : {1, 5, 16}) {
      INFO((mlp ? "mlp" : "linear") << " m = " << m);
      const auto Q = test::random_tensor<double>({m, d}, 1), K = test::random_tensor<double>({m, d}, 2);
      const auto Y = test::random_tensor<double>({m, d}, 3);
      const auto lr = test::random_tensor<double>({m}, 4, 0.1), gamma = test::random_tensor<double>({d}, 5, 0.1);
      const auto beta = test::random_tensor<double>({d}, 6, 0.1);
      std::vector<double> s(static_cast<std::size_t>(b)), lrv(static_cast<std::size_t>(m)), g(static_cast<std::size_t>(d));
      for (Index i = 0; i < b; ++i) s[std::size_t(i)] = 1.0 / double(i + 1);
      for (Index i = 0; i < m; ++i) lrv[std::size_t(i)] = 0.1 + std::abs(lr[i]);
      for (Index i = 0; i < d; ++i) g[std::size_t(i)] = 1.0 + gamma[i];
      const bool commit = m == b;
      HeadTensors wd(d, F, mlp, 30), wp = wd.copy(), sd(d, F, mlp, 0, true), sp(d, F, mlp, 0, true);
      Tensor<double> od({m, d}), op({m, d});
      ttt::Arena<double> arena(ttt::Arena<double>::capacity_for(b, d, F));
      ttt::Segment<double> seg{Q.view(), K.view(), Y.view(), lrv.data(), s.data(), g.data(), beta.data(), 1e-6, od.view()};
      ttt::dual_segment<double>(kind, wd.params(), sd.params(), seg, commit, arena);
      seg.out = op.view();
      arena.reset();
      ttt::primal_segment<double>(kind, wp.params(), sp.params(), seg, commit, arena);
      CHECK(test::relative_error<double, double>(od.view(), op.view()) <= 1e-13);
      const auto a = wd.all(), bb = wp.all(), ga = sd.all(), gb = sp.all();
      for (std::size_t i = 0; i < a.size(); ++i) {
        CHECK(test::relative_error<double, double>(a[i]->view(), bb[i]->view()) <= 1e-13);
        if (!commit) CHECK(test::relative_error<double, double>(ga[i]->view(), gb[i]->view()) <= 1e-13);
        else CHECK(test::max_abs(test::to_mat<double>(ga[i]->view())) + test::max_abs(test::to_mat<double>(gb[i]->view())) == 0);
      }
    }
  }
}

TEST_CASE("causal conv streams in pieces and RoPE with a table row offset", "[ttt]") {
  ttt::CausalConv<double> conv(6, 4);
  conv.conv.weight = test::random_tensor<double>({4, 6}, 1);
  conv.conv.bias = test::random_tensor<double>({6}, 2);
  const auto u = test::random_tensor<double>({11, 6}, 3);
  Workspace<double> ws;
  StepContext<double> ctx;
  ctx.workspace = &ws;
  auto s1 = conv.make_state();
  Tensor<double> y1({11, 6});
  conv.forward(u.view(), y1.view(), s1.get(), ctx);
  // Direct definition: y[t, c] = bias[c] + sum_k w[k, c] u[t - 3 + k, c].
  double worst = 0;
  for (Index t = 0; t < 11; ++t)
    for (Index c = 0; c < 6; ++c) {
      double v = conv.conv.bias[c];
      for (Index k = 0; k < 4; ++k)
        if (t - 3 + k >= 0) v += conv.conv.weight(k, c) * u(t - 3 + k, c);
      worst = std::max(worst, std::abs(v - y1(t, c)));
    }
  CHECK(worst <= 1e-14);
  auto s2 = conv.make_state();
  Tensor<double> y2({11, 6});
  Index t = 0;
  for (Index n : {5, 3, 1, 1, 1}) {
    conv.forward(u.view().middle_rows(t, n), y2.view().middle_rows(t, n), s2.get(), ctx);
    t += n;
  }
  CHECK(test::relative_error<double, double>(y2.view(), y1.view()) == 0);
  CHECK(test::relative_error<double, double>(dynamic_cast<ttt::ConvState<double>&>(*s2).history.view(), u.view().middle_rows(7, 4)) == 0);
  CHECK_THROWS_AS(conv.forward(u.view().middle_rows(0, 0), y1.view().middle_rows(0, 0), s2.get(), ctx), Error);

  // apply_rope(..., table_row0): rows of a 0..15 table serve positions 5..9.
  const auto inv = rope_inv_freq(8, 10000.0);
  std::vector<std::int64_t> all(16), some = {5, 6, 7, 8, 9};
  for (int i = 0; i < 16; ++i) all[std::size_t(i)] = i;
  const auto table = make_rope_table<double>(inv, all);
  auto a = test::random_tensor<double>({5, 16}, 7);
  auto b = a.copy();
  apply_rope<double>(a.view(), 2, 8, table, RopePairing::interleaved, 5);
  apply_rope<double>(b.view(), 2, 8, make_rope_table<double>(inv, some), RopePairing::interleaved);
  CHECK(test::relative_error<double, double>(a.view(), b.view()) == 0);
  CHECK_THROWS_AS(apply_rope<double>(a.view(), 2, 8, table, RopePairing::interleaved, 12), Error);
}

TEST_CASE("TTT layer input errors", "[ttt][errors]") {
  const Checkpoint ck = open_layer_fixture("ttt_linear_T");
  BlockRunner<float> r(ck);
  ttt::Layer<float>& layer = r.layer();
  Workspace<float> ws;
  StepContext<float> ctx;
  ctx.workspace = &ws;
  auto state = layer.make_state();
  Tensor<float> x({3, 32}), y({3, 32});
  CHECK_THROWS_AS(layer.forward(x.view().middle_rows(0, 0), y.view().middle_rows(0, 0), state.get(), ctx), Error);
  Tensor<float> narrow({3, 31});
  CHECK_THROWS_AS(layer.forward(narrow.view(), y.view(), state.get(), ctx), Error);
  CHECK_THROWS_AS(layer.forward(x.view(), y.view(), nullptr, ctx), Error);
  ttt::ConvState<float> wrong(Tensor<float>({4, 32}));
  CHECK_THROWS_AS(layer.forward(x.view(), y.view(), &wrong, ctx), Error);
  x(1, 7) = std::numeric_limits<float>::quiet_NaN();
  try {
    layer.forward(x.view(), y.view(), state.get(), ctx);
    FAIL("accepted a NaN input");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("non-finite input at token 1, channel 7") != std::string::npos);
  }
  CHECK(dynamic_cast<ttt::State<float>&>(*state).position == 0);  // the state did not move
  x(1, 7) = 0;
  layer.forward(x.view(), y.view(), state.get(), ctx);
  CHECK(dynamic_cast<ttt::State<float>&>(*state).position == 3);
  // A batched step checks every row before any state moves.
  auto s2 = layer.make_state();
  StepContext<float> ctx2 = ctx;
  std::vector<LayerState<float>*> states = {state.get(), s2.get()};
  std::vector<StepContext<float>*> ctxs = {&ctx, &ctx2};
  Tensor<float> xb({2, 32}), yb({2, 32});
  CHECK_THROWS_AS(layer.forward_batch(xb.view(), yb.view(), std::span(states).first(1), ctxs), Error);  // counts differ
  CHECK_THROWS_AS(layer.forward_batch(xb.view().middle_rows(0, 0), yb.view().middle_rows(0, 0), std::span(states).first(0),
                                      std::span(ctxs).first(0)), Error);
  states[1] = &wrong;
  CHECK_THROWS_AS(layer.forward_batch(xb.view(), yb.view(), states, ctxs), Error);
  states[1] = s2.get();
  xb(1, 3) = std::numeric_limits<float>::infinity();
  try {
    layer.forward_batch(xb.view(), yb.view(), states, ctxs);
    FAIL("accepted an infinite input");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("non-finite input at token 0, channel 3") != std::string::npos);
  }
  CHECK(dynamic_cast<ttt::State<float>&>(*state).position == 3);
  CHECK(dynamic_cast<ttt::State<float>&>(*s2).position == 0);
  xb(1, 3) = 0;
  layer.forward_batch(xb.view(), yb.view(), states, ctxs);
  CHECK(dynamic_cast<ttt::State<float>&>(*state).position == 4);
  CHECK(dynamic_cast<ttt::State<float>&>(*s2).position == 1);
  ttt::Config bad = r.spec.layer;
  bad.mini_batch = 0;
  CHECK_THROWS_AS(ttt::Layer<float>(bad), Error);
  bad = r.spec.layer;
  bad.n_heads = 3;  // 32 / 3
  CHECK_THROWS_AS(ttt::Layer<float>(bad), Error);
  bad.n_heads = 32;  // head_dim 1: odd, RoPE needs pairs
  CHECK_THROWS_AS(ttt::Layer<float>(bad), Error);
}
