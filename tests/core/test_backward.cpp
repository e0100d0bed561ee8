// Backward of the row-wise ops against central finite differences in double (relative error
// <= 1e-6, awkward sizes), float against double, accumulation, aliasing, and RoPE's inverse.
#include <functional>

#include "engram/core/ops_backward.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {

using Fn = std::function<double()>;

// Central differences of loss() with respect to every entry of x (changed in place and restored).
test::Mat finite_diff(View<double> x, const Fn& loss, double h = 1e-5) {
  test::Mat g(x.rows(), x.cols());
  for (Index r = 0; r < x.rows(); ++r)
    for (Index c = 0; c < x.cols(); ++c) {
      const double keep = x(r, c);
      x(r, c) = keep + h;
      const double up = loss();
      x(r, c) = keep - h;
      const double down = loss();
      x(r, c) = keep;
      g(r, c) = (up - down) / (2 * h);
    }
  return g;
}

// max |got - ref| / max |ref| (0 / 0 counts as exact).
double rel_error(ConstView<double> got, const test::Mat& ref) {
  const double err = test::max_abs_diff<double>(got, ref), scale = test::max_abs(ref);
  return scale > 0 ? err / scale : err;
}

void require_gradient(ConstView<double> got, const test::Mat& fd, const std::string& what) {
  const double err = rel_error(got, fd);
  INFO(what << ": relative error " << err << " against finite differences (max |fd| " << test::max_abs(fd) << ")");
  REQUIRE(err <= 1e-6);
}

// sum(y .* w): the scalar whose gradient with respect to y is w.
double weighted_sum(ConstView<double> y, ConstView<double> w) {
  double s = 0;
  for (Index r = 0; r < y.rows(); ++r)
    for (Index c = 0; c < y.cols(); ++c) s += y(r, c) * w(r, c);
  return s;
}

Tensor<float> to_float(ConstView<double> x) {
  Tensor<float> out({x.rows(), x.cols()});
  for (Index r = 0; r < x.rows(); ++r)
    for (Index c = 0; c < x.cols(); ++c) out(r, c) = float(x(r, c));
  return out;
}

// A float result against the double one, scaled by the double result's magnitude.
void require_float_close(ConstView<float> got, ConstView<double> ref, double ulps, const std::string& what) {
  const test::Mat m = test::to_mat(ref);
  test::require_close<float>(got, m, ulps * test::eps<float>() * std::max(1.0, test::max_abs(m)), what);
}

const std::vector<Index> kCols = {1, 2, 7, 16, 17, 31, 65, 129};

}  // namespace

TEST_CASE("layer_norm_backward matches finite differences, with and without affine", "[backward][norm]") {
  for (Index n : kCols)
    for (bool affine : {true, false}) {
      const Index rows = 3;
      const double eps = 1e-5;
      auto x = test::random_tensor<double>({rows, n}, std::uint64_t(n), 2.0);
      for (Index r = 0; r < rows; ++r) x(r, 0) += 3.0 * double(r);  // a non-zero mean per row
      auto gamma = test::random_tensor<double>({1, n}, 100 + std::uint64_t(n));
      auto beta = test::random_tensor<double>({1, n}, 200 + std::uint64_t(n));
      auto w = test::random_tensor<double>({rows, n}, 300 + std::uint64_t(n));
      const double* g = affine ? gamma.data() : nullptr;
      Tensor<double> y({rows, n});
      const Fn loss = [&] {
        layer_norm<double>(x.view(), g, affine ? beta.data() : nullptr, eps, y.view());
        return weighted_sum(y.view(), w.view());
      };
      Tensor<double> dx({rows, n}), dgamma({1, n}), dbeta({1, n});
      layer_norm_backward<double>(x.view(), g, eps, w.view(), dx.view(), dgamma.data(), dbeta.data());
      INFO("n = " << n << ", affine = " << affine);
      require_gradient(dx.view(), finite_diff(x.view(), loss), "layer_norm dx");
      if (affine) {
        require_gradient(dgamma.view(), finite_diff(gamma.view(), loss), "layer_norm dgamma");
        require_gradient(dbeta.view(), finite_diff(beta.view(), loss), "layer_norm dbeta");
      }
      // float against double
      auto xf = to_float(x.view()), gf = to_float(gamma.view()), wf = to_float(w.view());
      Tensor<float> dxf({rows, n}), dgf({1, n}), dbf({1, n});
      layer_norm_backward<float>(xf.view(), affine ? gf.data() : nullptr, float(eps), wf.view(), dxf.view(), dgf.data(),
                                 dbf.data());
      require_float_close(dxf.view(), dx.view(), 256, "layer_norm dx (float)");
      require_float_close(dgf.view(), dgamma.view(), 64, "layer_norm dgamma (float)");
      require_float_close(dbf.view(), dbeta.view(), 64, "layer_norm dbeta (float)");
    }
}

TEST_CASE("rms_norm_backward matches finite differences", "[backward][norm]") {
  for (Index n : kCols)
    for (bool affine : {true, false}) {
      const Index rows = 4;
      const double eps = 1e-6;
      auto x = test::random_tensor<double>({rows, n}, 7 + std::uint64_t(n), 1.5);
      auto weight = test::random_tensor<double>({1, n}, 17 + std::uint64_t(n));
      auto w = test::random_tensor<double>({rows, n}, 27 + std::uint64_t(n));
      const double* wt = affine ? weight.data() : nullptr;
      Tensor<double> y({rows, n});
      const Fn loss = [&] {
        rms_norm<double>(x.view(), wt, eps, y.view());
        return weighted_sum(y.view(), w.view());
      };
      Tensor<double> dx({rows, n}), dweight({1, n});
      rms_norm_backward<double>(x.view(), wt, eps, w.view(), dx.view(), dweight.data());
      INFO("n = " << n << ", affine = " << affine);
      require_gradient(dx.view(), finite_diff(x.view(), loss), "rms_norm dx");
      if (affine) require_gradient(dweight.view(), finite_diff(weight.view(), loss), "rms_norm dweight");
      auto xf = to_float(x.view()), wtf = to_float(weight.view()), wf = to_float(w.view());
      Tensor<float> dxf({rows, n}), dwf({1, n});
      rms_norm_backward<float>(xf.view(), affine ? wtf.data() : nullptr, float(eps), wf.view(), dxf.view(), dwf.data());
      require_float_close(dxf.view(), dx.view(), 128, "rms_norm dx (float)");
      require_float_close(dwf.view(), dweight.view(), 64, "rms_norm dweight (float)");
    }
}

TEST_CASE("norm backward: accumulate adds, parameter gradients sum over calls, dx may alias dy", "[backward][norm]") {
  const Index rows = 3, n = 19;
  auto x = test::random_tensor<double>({rows, n}, 1);
  auto gamma = test::random_tensor<double>({1, n}, 2);
  auto dy = test::random_tensor<double>({rows, n}, 3);
  for (int kind = 0; kind < 2; ++kind) {
    Tensor<double> once({rows, n}), g1({1, n}), b1({1, n});
    const auto run = [&](View<double> dx, double* dg, double* db, bool acc, ConstView<double> grad) {
      if (kind == 0) layer_norm_backward<double>(x.view(), gamma.data(), 1e-5, grad, dx, dg, db, acc);
      else rms_norm_backward<double>(x.view(), gamma.data(), 1e-5, grad, dx, dg, acc);
    };
    run(once.view(), g1.data(), b1.data(), false, dy.view());
    auto acc = test::random_tensor<double>({rows, n}, 4);
    auto start = acc.copy();
    Tensor<double> g2({1, n}), b2({1, n});
    run(acc.view(), g2.data(), b2.data(), true, dy.view());
    run(acc.view(), g2.data(), b2.data(), true, dy.view());
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < n; ++c) CHECK(acc(r, c) == Approx(start(r, c) + 2 * once(r, c)).margin(1e-12));
    for (Index c = 0; c < n; ++c) {
      CHECK(g2(0, c) == Approx(2 * g1(0, c)).margin(1e-12));
      if (kind == 0) CHECK(b2(0, c) == Approx(2 * b1(0, c)).margin(1e-12));
    }
    auto alias = dy.copy();
    run(alias.view(), nullptr, nullptr, false, alias.view());
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < n; ++c) CHECK(alias(r, c) == once(r, c));
  }
  Tensor<double> wrong({rows, n + 1});
  CHECK_THROWS_AS(layer_norm_backward<double>(x.view(), nullptr, 1e-5, dy.view(), wrong.view(), nullptr, nullptr), Error);
  CHECK_THROWS_AS(rms_norm_backward<double>(x.view(), nullptr, 1e-5, wrong.view(), wrong.view(), nullptr), Error);
}

TEST_CASE("activation backward matches finite differences, float matches double, dx may alias dy", "[backward][activation]") {
  using Fwd = std::function<void(View<double>)>;
  using Bwd = std::function<void(ConstView<double>, ConstView<double>, View<double>)>;
  using BwdF = std::function<void(ConstView<float>, ConstView<float>, View<float>)>;
  struct Op {
    const char* name;
    Fwd forward;
    Bwd backward;
    BwdF backward_f;
  };
  const std::vector<Op> ops = {
      {"gelu_tanh", [](View<double> v) { gelu_tanh<double>(v); }, gelu_tanh_backward<double>, gelu_tanh_backward<float>},
      {"gelu_erf", [](View<double> v) { gelu_erf<double>(v); }, gelu_erf_backward<double>, gelu_erf_backward<float>},
      {"silu", [](View<double> v) { silu<double>(v); }, silu_backward<double>, silu_backward<float>},
      {"relu",
       [](View<double> v) {
         for (Index r = 0; r < v.rows(); ++r)
           for (Index c = 0; c < v.cols(); ++c) v(r, c) = std::max(v(r, c), 0.0);
       },
       relu_backward<double>, relu_backward<float>},
  };
  for (const Op& op : ops)
    for (Index n : kCols) {
      const Index rows = 2;
      auto x = test::random_tensor<double>({rows, n}, 40 + std::uint64_t(n), 3.0);
      auto w = test::random_tensor<double>({rows, n}, 50 + std::uint64_t(n));
      Tensor<double> y({rows, n});
      const Fn loss = [&] {
        copy<double>(x.view(), y.view());
        op.forward(y.view());
        return weighted_sum(y.view(), w.view());
      };
      Tensor<double> dx({rows, n});
      op.backward(x.view(), w.view(), dx.view());
      INFO(op.name << " n = " << n);
      require_gradient(dx.view(), finite_diff(x.view(), loss), op.name);
      auto xf = to_float(x.view()), wf = to_float(w.view());
      op.backward_f(xf.view(), wf.view(), wf.view());  // in place: dx aliases dy
      require_float_close(wf.view(), dx.view(), 32, std::string(op.name) + " (float, in place)");
    }
  // relu at exactly 0 takes the subgradient 0.
  Tensor<float> z({1, 3}), g({1, 3});
  z(0, 0) = 0.f, z(0, 1) = 1.f, z(0, 2) = -1.f;
  g.fill(5.f);
  relu_backward<float>(z.view(), g.view(), g.view());
  CHECK(g(0, 0) == 0.f);
  CHECK(g(0, 1) == 5.f);
  CHECK(g(0, 2) == 0.f);
  Tensor<float> wrong({1, 4});
  CHECK_THROWS_AS(silu_backward<float>(z.view(), wrong.view(), wrong.view()), Error);
}

TEST_CASE("sigmoid_backward from the output matches finite differences", "[backward][activation]") {
  for (Index n : kCols) {
    auto x = test::random_tensor<double>({2, n}, 60 + std::uint64_t(n), 3.0);
    auto w = test::random_tensor<double>({2, n}, 70 + std::uint64_t(n));
    Tensor<double> y({2, n});
    const Fn loss = [&] {
      copy<double>(x.view(), y.view());
      sigmoid<double>(y.view());
      return weighted_sum(y.view(), w.view());
    };
    loss();  // y = sigmoid(x)
    Tensor<double> dx({2, n});
    sigmoid_backward<double>(y.view(), w.view(), dx.view());
    INFO("n = " << n);
    require_gradient(dx.view(), finite_diff(x.view(), loss), "sigmoid");
  }
}

TEST_CASE("softmax_rows_backward matches finite differences, masked entries get 0", "[backward][softmax]") {
  for (Index n : kCols) {
    const Index rows = 3;
    auto x = test::random_tensor<double>({rows, n}, 80 + std::uint64_t(n), 2.0);
    auto w = test::random_tensor<double>({rows, n}, 90 + std::uint64_t(n));
    Tensor<double> p({rows, n});
    const Fn loss = [&] {
      copy<double>(x.view(), p.view());
      softmax_rows<double>(p.view());
      return weighted_sum(p.view(), w.view());
    };
    loss();
    Tensor<double> dx({rows, n});
    softmax_rows_backward<double>(p.view(), w.view(), dx.view());
    INFO("n = " << n);
    require_gradient(dx.view(), finite_diff(x.view(), loss), "softmax");
    auto pf = to_float(p.view()), wf = to_float(w.view());
    softmax_rows_backward<float>(pf.view(), wf.view(), wf.view());  // dx aliases dp
    require_float_close(wf.view(), dx.view(), 32, "softmax (float, in place)");
  }
  // Causal softmax: masked columns (p = 0) get zero gradient, and the visible part matches FD.
  const Index rows = 4, n = 6;
  auto x = test::random_tensor<double>({rows, n}, 5);
  auto w = test::random_tensor<double>({rows, n}, 6);
  Tensor<double> p({rows, n});
  const Fn loss = [&] {
    copy<double>(x.view(), p.view());
    softmax_rows_causal<double>(p.view(), 0);
    return weighted_sum(p.view(), w.view());
  };
  loss();
  Tensor<double> dx({rows, n});
  softmax_rows_backward<double>(p.view(), w.view(), dx.view());
  require_gradient(dx.view(), finite_diff(x.view(), loss), "causal softmax");
  for (Index r = 0; r < rows; ++r)
    for (Index c = r + 1; c < n; ++c) CHECK(dx(r, c) == 0.0);
}

TEST_CASE("apply_rope_backward is the transpose of the rotation for both pairings and every scaling", "[backward][rope]") {
  const Index heads = 3, d = 16, rows = 5;
  RopeScaling linear{RopeScaling::Kind::linear, 4.0};
  RopeScaling ntk{RopeScaling::Kind::ntk, 4.0, 2.0};
  RopeScaling llama3{RopeScaling::Kind::llama3, 8.0, 1.0, 1.0, 4.0, 64.0};  // short original context: all three bands
  const std::vector<std::int64_t> pos = {3, 4, 5, 900, 70000, 70001, 12};
  for (const RopeScaling& scaling : {RopeScaling{}, linear, ntk, llama3}) {
    const auto inv = rope_inv_freq(d, 10000.0, scaling);
    const auto table = make_rope_table<double>(inv, pos);
    const auto table_f = make_rope_table<float>(inv, pos);
    for (RopePairing pairing : {RopePairing::rotate_half, RopePairing::interleaved})
      for (Index row0 : {Index(0), Index(2)}) {
        auto x = test::random_tensor<double>({rows, heads * d}, 11);
        auto w = test::random_tensor<double>({rows, heads * d}, 12);
        Tensor<double> y({rows, heads * d});
        const Fn loss = [&] {
          copy<double>(x.view(), y.view());
          apply_rope<double>(y.view(), heads, d, table, pairing, row0);
          return weighted_sum(y.view(), w.view());
        };
        auto dx = w.copy();
        apply_rope_backward<double>(dx.view(), heads, d, table, pairing, row0);
        INFO("scaling " << int(scaling.kind) << " pairing " << int(pairing) << " row0 " << row0);
        require_gradient(dx.view(), finite_diff(x.view(), loss), "rope");
        // The inverse undoes the forward.
        auto back = x.copy();
        apply_rope<double>(back.view(), heads, d, table, pairing, row0);
        apply_rope_backward<double>(back.view(), heads, d, table, pairing, row0);
        test::require_close<double>(back.view(), test::to_mat<double>(x.view()), 1e-13, "rope inverse");
        auto wf = to_float(w.view());
        apply_rope_backward<float>(wf.view(), heads, d, table_f, pairing, row0);
        require_float_close(wf.view(), dx.view(), 16, "rope (float)");
      }
  }
  const auto table = make_rope_table<double>(rope_inv_freq(d, 10000.0), pos);
  Tensor<double> wrong({rows, heads * d + 2});
  CHECK_THROWS_AS(apply_rope_backward<double>(wrong.view(), heads, d, table, RopePairing::rotate_half), Error);
  Tensor<double> too_many({8, heads * d});
  CHECK_THROWS_AS(apply_rope_backward<double>(too_many.view(), heads, d, table, RopePairing::rotate_half), Error);
}
