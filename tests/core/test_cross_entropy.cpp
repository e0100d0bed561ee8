// Cross-entropy against a naive double log-softmax: the classifier form and the fused, chunked LM
// head (losses, log-probabilities, gradients by finite differences), ignored labels, chunk sizes
// that do not divide N, non-finite logits, bad labels.
#include <functional>

#include "engram/core/cross_entropy.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {

// Naive reference on a [N, V] logits matrix in double: per-row -log softmax(label), its gradient.
struct Ref {
  double loss_sum = 0;
  Index count = 0;
  std::vector<double> log_probs;
  test::Mat dlogits;
};

Ref naive(const test::Mat& logits, const std::vector<std::int32_t>& labels, double grad_scale) {
  Ref ref;
  ref.dlogits = test::Mat(logits.rows, logits.cols);
  ref.log_probs.assign(std::size_t(logits.rows), 0.0);
  for (Index r = 0; r < logits.rows; ++r) {
    const std::int32_t y = labels[std::size_t(r)];
    if (y < 0) continue;
    double z = 0;
    for (Index c = 0; c < logits.cols; ++c) z += std::exp(logits(r, c));
    const double lp = logits(r, y) - std::log(z);
    ref.log_probs[std::size_t(r)] = lp;
    ref.loss_sum -= lp;
    ++ref.count;
    for (Index c = 0; c < logits.cols; ++c) ref.dlogits(r, c) = grad_scale * (std::exp(logits(r, c)) / z - (c == y));
  }
  return ref;
}

template <class T>
test::Mat head_logits(const Tensor<T>& hidden, const Tensor<T>& W) {
  test::Mat l(hidden.rows(), W.rows());
  for (Index r = 0; r < hidden.rows(); ++r)
    for (Index v = 0; v < W.rows(); ++v) {
      double s = 0;
      for (Index e = 0; e < hidden.cols(); ++e) s += double(hidden(r, e)) * double(W(v, e));
      l(r, v) = s;
    }
  return l;
}

std::vector<std::int32_t> make_labels(Index n, Index classes, std::uint64_t seed, bool with_ignored) {
  std::mt19937 rng{unsigned(seed)};
  std::vector<std::int32_t> labels(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) labels[std::size_t(i)] = std::int32_t(rng() % std::uint32_t(classes));
  if (with_ignored)
    for (Index i = 1; i < n; i += 3) labels[std::size_t(i)] = -100;  // PyTorch's ignore_index
  return labels;
}

}  // namespace

TEMPLATE_TEST_CASE("softmax_cross_entropy equals the naive log-softmax, loss and gradient", "[cross_entropy]", float, double) {
  for (Index classes : {Index(1), Index(2), Index(17), Index(300)})
    for (bool ignored : {false, true}) {
      const Index n = 11;
      auto logits = test::random_tensor<TestType>({n, classes}, std::uint64_t(classes), 3.0);
      const auto labels = make_labels(n, classes, 5, ignored);
      const double scale = 0.25;
      const Ref ref = naive(test::to_mat<TestType>(logits.view()), labels, scale);
      Tensor<TestType> dlogits({n, classes});
      const auto stats = softmax_cross_entropy<TestType>(logits.view(), labels, TestType(scale), dlogits.view());
      INFO("classes " << classes << " ignored " << ignored);
      CHECK(stats.count == ref.count);
      CHECK(stats.loss_sum == Approx(ref.loss_sum).epsilon(64 * test::eps<TestType>()).margin(64 * test::eps<TestType>()));
      test::require_close<TestType>(dlogits.view(), ref.dlogits, 64 * test::eps<TestType>(), "dlogits");
      // In place (dlogits aliases logits) and without gradient: same loss.
      const auto no_grad = softmax_cross_entropy<TestType>(logits.view(), labels, TestType(scale), View<TestType>());
      CHECK(no_grad.loss_sum == stats.loss_sum);
      softmax_cross_entropy<TestType>(logits.view(), labels, TestType(scale), logits.view());
      test::require_close<TestType>(logits.view(), ref.dlogits, 64 * test::eps<TestType>(), "dlogits in place");
    }
}

TEST_CASE("softmax_cross_entropy gradient matches finite differences", "[cross_entropy][fd]") {
  const test::ThreadCount one(1);  // many tiny calls
  const Index n = 5, classes = 9;
  auto logits = test::random_tensor<double>({n, classes}, 3, 2.0);
  auto labels = make_labels(n, classes, 4, false);
  labels[2] = -1;
  Tensor<double> grad({n, classes});
  softmax_cross_entropy<double>(logits.view(), labels, 1.0, grad.view());
  double err = 0, scale = 0;
  for (Index r = 0; r < n; ++r)
    for (Index c = 0; c < classes; ++c) {
      const double keep = logits(r, c), h = 1e-5;
      logits(r, c) = keep + h;
      const double up = softmax_cross_entropy<double>(logits.view(), labels, 1.0, View<double>()).loss_sum;
      logits(r, c) = keep - h;
      const double down = softmax_cross_entropy<double>(logits.view(), labels, 1.0, View<double>()).loss_sum;
      logits(r, c) = keep;
      err = std::max(err, std::abs((up - down) / (2 * h) - grad(r, c)));
      scale = std::max(scale, std::abs(grad(r, c)));
    }
  CHECK(err <= 1e-6 * scale);
  for (Index c = 0; c < classes; ++c) CHECK(grad(2, c) == 0.0);
}

TEMPLATE_TEST_CASE("lm_cross_entropy and lm_log_probs equal the materialised head for any chunking", "[cross_entropy][lm]", float,
                   double) {
  const Index n = 13, d = 7, vocab = 37;
  auto hidden = test::random_tensor<TestType>({n, d}, 1);
  auto W = test::random_tensor<TestType>({vocab, d}, 2, 0.7);
  for (bool ignored : {false, true}) {
    const auto labels = make_labels(n, vocab, 9, ignored);
    const double scale = 1.0 / 8;
    const test::Mat logits = head_logits(hidden, W);
    const Ref ref = naive(logits, labels, scale);
    // dhidden = dlogits * W, dW = dlogits^T * hidden, from the reference dlogits.
    test::Mat dh(n, d), dw(vocab, d);
    for (Index r = 0; r < n; ++r)
      for (Index v = 0; v < vocab; ++v)
        for (Index e = 0; e < d; ++e) {
          dh(r, e) += ref.dlogits(r, v) * double(W(v, e));
          dw(v, e) += ref.dlogits(r, v) * double(hidden(r, e));
        }
    for (Index chunk : {Index(0), Index(1), Index(3), Index(5), Index(13), Index(100)}) {
      INFO("ignored " << ignored << " chunk " << chunk);
      Tensor<TestType> dhidden = test::random_tensor<TestType>({n, d}, 77);  // overwritten
      Tensor<TestType> dW({vocab, d});
      const auto stats = lm_cross_entropy<TestType>(hidden.view(), W.view(), labels, TestType(scale), dhidden.view(),
                                                    dW.view(), chunk);
      const double tol = 256 * test::eps<TestType>();
      CHECK(stats.count == ref.count);
      CHECK(stats.loss_sum == Approx(ref.loss_sum).epsilon(tol));
      test::require_close<TestType>(dhidden.view(), dh, tol, "dhidden");
      test::require_close<TestType>(dW.view(), dw, tol, "dW");
      for (Index r = 0; r < n; ++r)
        if (labels[std::size_t(r)] < 0)
          for (Index e = 0; e < d; ++e) CHECK(dhidden(r, e) == TestType(0));
      // dW accumulates.
      lm_cross_entropy<TestType>(hidden.view(), W.view(), labels, TestType(scale), View<TestType>(), dW.view(), chunk);
      test::Mat dw2 = dw;
      for (double& x : dw2.v) x *= 2;
      test::require_close<TestType>(dW.view(), dw2, 2 * tol, "dW accumulated twice");
      // Loss only.
      const auto loss_only = lm_cross_entropy<TestType>(hidden.view(), W.view(), labels, TestType(scale), View<TestType>(),
                                                        View<TestType>(), chunk);
      CHECK(loss_only.loss_sum == Approx(ref.loss_sum).epsilon(tol));
      std::vector<double> lp(static_cast<std::size_t>(n), 123.0);
      lm_log_probs<TestType>(hidden.view(), W.view(), labels, lp, chunk);
      for (Index r = 0; r < n; ++r) CHECK(lp[std::size_t(r)] == Approx(ref.log_probs[std::size_t(r)]).margin(tol * 8));
    }
  }
}

TEST_CASE("lm_cross_entropy gradients match finite differences of its own loss", "[cross_entropy][lm][fd]") {
  const test::ThreadCount one(1);  // many tiny calls
  const Index n = 6, d = 5, vocab = 11;
  auto hidden = test::random_tensor<double>({n, d}, 3);
  auto W = test::random_tensor<double>({vocab, d}, 4);
  auto labels = make_labels(n, vocab, 5, false);
  labels[4] = -1;
  const double scale = 0.5;
  Tensor<double> dh({n, d}), dW({vocab, d});
  lm_cross_entropy<double>(hidden.view(), W.view(), labels, scale, dh.view(), dW.view(), 4);
  const auto loss = [&] {
    return scale * lm_cross_entropy<double>(hidden.view(), W.view(), labels, scale, View<double>(), View<double>(), 4).loss_sum;
  };
  for (auto [x, g, what] : {std::tuple{&hidden, &dh, "dhidden"}, std::tuple{&W, &dW, "dW"}}) {
    double err = 0, mag = 0;
    for (Index r = 0; r < x->rows(); ++r)
      for (Index c = 0; c < x->cols(); ++c) {
        const double keep = (*x)(r, c), h = 1e-5;
        (*x)(r, c) = keep + h;
        const double up = loss();
        (*x)(r, c) = keep - h;
        const double down = loss();
        (*x)(r, c) = keep;
        err = std::max(err, std::abs((up - down) / (2 * h) - (*g)(r, c)));
        mag = std::max(mag, std::abs((*g)(r, c)));
      }
    INFO(what << ": max error " << err << ", max |grad| " << mag);
    CHECK(err <= 1e-6 * mag);
  }
}

TEST_CASE("cross-entropy: a non-finite logit gives a NaN loss; bad labels and shapes are Errors", "[cross_entropy][errors]") {
  const Index n = 4, d = 3, vocab = 20;
  auto hidden = test::random_tensor<float>({n, d}, 1);
  auto W = test::random_tensor<float>({vocab, d}, 2);
  const std::vector<std::int32_t> labels = {1, 2, 3, -1};
  Tensor<float> dh({n, d}), dW({vocab, d});
  W(7, 1) = std::numeric_limits<float>::quiet_NaN();  // every row's logit 7 is NaN
  CHECK(std::isnan(lm_cross_entropy<float>(hidden.view(), W.view(), labels, 1.f, dh.view(), dW.view()).loss_sum));
  W(7, 1) = 1.f;
  hidden(2, 0) = std::numeric_limits<float>::infinity();  // row 2 has infinite logits
  const auto stats = lm_cross_entropy<float>(hidden.view(), W.view(), labels, 1.f, View<float>(), View<float>());
  CHECK(std::isnan(stats.loss_sum));
  std::vector<double> lp(4);
  lm_log_probs<float>(hidden.view(), W.view(), labels, lp);
  CHECK(std::isfinite(lp[0]));
  CHECK(std::isnan(lp[2]));
  hidden(2, 0) = 0.f;
  Tensor<float> logits({2, 3});
  logits(0, 0) = -std::numeric_limits<float>::infinity();
  CHECK(std::isnan(softmax_cross_entropy<float>(logits.view(), std::vector<std::int32_t>{1, 0}, 1.f, View<float>()).loss_sum));
  // An ignored row may hold anything.
  CHECK(std::isfinite(softmax_cross_entropy<float>(logits.view(), std::vector<std::int32_t>{-1, 0}, 1.f, View<float>()).loss_sum));

  const std::vector<std::int32_t> out_of_range = {1, 20, 3, 0};
  try {
    lm_cross_entropy<float>(hidden.view(), W.view(), out_of_range, 1.f, dh.view(), dW.view());
    FAIL("expected an Error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("row 1") != std::string::npos);
  }
  CHECK_THROWS_AS(lm_log_probs<float>(hidden.view(), W.view(), out_of_range, lp), Error);
  CHECK_THROWS_AS(softmax_cross_entropy<float>(logits.view(), std::vector<std::int32_t>{3, 0}, 1.f, View<float>()), Error);
  CHECK_THROWS_AS(lm_cross_entropy<float>(hidden.view(), W.view(), std::vector<std::int32_t>{1, 2}, 1.f, dh.view(), dW.view()), Error);
  Tensor<float> wrong_dh({n, d + 1}), wrong_w({vocab, d + 1});
  CHECK_THROWS_AS(lm_cross_entropy<float>(hidden.view(), W.view(), labels, 1.f, wrong_dh.view(), dW.view()), Error);
  CHECK_THROWS_AS(lm_cross_entropy<float>(hidden.view(), wrong_w.view(), labels, 1.f, dh.view(), View<float>()), Error);
  CHECK_THROWS_AS(lm_cross_entropy<float>(hidden.view(), W.view(), labels, 1.f, dh.view(), dW.view(), -1), Error);
  std::vector<double> short_out(3);
  CHECK_THROWS_AS(lm_log_probs<float>(hidden.view(), W.view(), labels, short_out), Error);
  // Every row ignored: nothing counted, zero gradient.
  const std::vector<std::int32_t> none = {-1, -1, -1, -1};
  dh.fill(5.f);
  const auto empty = lm_cross_entropy<float>(hidden.view(), W.view(), none, 1.f, dh.view(), View<float>());
  CHECK(empty.count == 0);
  CHECK(empty.loss_sum == 0);
  CHECK(dh(3, 2) == 0.f);
}
