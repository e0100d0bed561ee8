// TTT layers in training: block gradients (both backbones, linear and MLP, a sequence ending in a
// partial mini-batch) against the independent PyTorch autograd reference (tests/fixtures/ttt_grad),
// the whole layer's outer gradients against finite differences in double, forward_train against
// the inference forward, frozen parameters, and errors.
#include <functional>
#include <map>
#include <sstream>

#include "engram/train/step.hpp"
#include "engram/ttt/loader.hpp"
#include "test_util.hpp"
#include "ttt/ttt_fixture.hpp"

using namespace engram;

namespace {

/// Every parameter of a block: the branch norms and each layer's parameters.
template <class T>
struct BlockParams {
  Block<T>& block;
  void visit_parameters(const std::function<void(const std::string&, Tensor<T>&)>& f) {
    for (std::size_t i = 0; i < block.branches.size(); ++i) {
      Branch<T>& br = block.branches[i];
      const std::string p = "branch" + std::to_string(i) + ".";
      f(p + "norm.weight", br.norm.weight);
      if (!br.norm.bias.empty()) f(p + "norm.bias", br.norm.bias);
      br.layer->visit_parameters([&](const std::string& n, Tensor<T>& t) { f(p + n, t); });
    }
  }
};

/// One training step's context with its own tape, workspace and gradients.
template <class T>
struct Trainer {
  Tape<T> tape;
  Workspace<T> ws;
  FlopCounter flops;
  Gradients<T> grads;
  TrainContext<T> ctx;
  template <class Model>
  Trainer(Model& m, Index n_seqs, Index seq_len, const ParameterFilter& train = {}) : grads(m, train) {
    ctx.tape = &tape;
    ctx.grads = &grads;
    ctx.workspace = &ws;
    ctx.flops = &flops;
    ctx.n_seqs = n_seqs;
    ctx.seq_len = seq_len;
  }
};

const char* const kFixtures[] = {"ttt_linear_T", "ttt_linear_M", "ttt_mlp_T", "ttt_mlp_M"};

/// A block bound to a gradient fixture's parameters, and a second block holding the reference
/// gradients in the same layout (bound from the grad.* tensors, so the loader's name mapping,
/// fused rows and conv transposes apply to both alike).
template <class T>
struct GradFixture {
  Checkpoint ck;
  ttt::ModelSpec spec;
  Block<T> block, ref;
  GradFixture(const std::string& name, ttt::InnerForm form)
      : ck(Checkpoint::open(test::fixture("ttt_grad/" + name + ".safetensors"))),
        spec(test::spec_from_metadata(ck.files().at(0).metadata())),
        block(ttt::make_block<T>(spec)),
        ref(ttt::make_block<T>(spec)) {
    hf::WeightBinder<T> b(ck, "fixture");
    ttt::bind_block<T>(b, "param.", spec, block);
    ttt::ttt_layer(block).form = form;
    hf::WeightBinder<T> r(ck, "fixture");
    ttt::bind_block<T>(r, "grad.", spec, ref);
  }
};

}  // namespace

TEMPLATE_TEST_CASE("TTT block gradients match the PyTorch autograd reference (L = 37: two mini-batches and 5 tokens)",
                   "[ttt][train][golden]", float, double) {
  using T = TestType;
  // Double: the reference's float32 RoPE table holds correctly rounded cos/sin as engram's does
  // (ttt_grad_ref.py sets ttt_ref.ROPE_CORRECTLY_ROUNDED; torch's vectorised float32 cos/sin is 1 ulp
  // off in ~10% of the entries and moved the gradients ~1.5e-7), so the comparison is limited by
  // arithmetic alone (every gradient within 1e-13 relative).
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  for (const char* name : kFixtures)
    for (auto form : {ttt::InnerForm::dual, ttt::InnerForm::primal}) {
      if (std::is_same_v<T, float> && form == ttt::InnerForm::primal) continue;
      INFO(name << (form == ttt::InnerForm::dual ? " dual" : " primal"));
      GradFixture<T> f(name, form);
      const auto x = f.ck.template read<float>("input.x"), R = f.ck.template read<float>("input.R");
      const Index L = x.rows();
      BlockParams<T> params{f.block};
      Trainer<T> tr(params, 1, L);
      Tensor<T> h = test::cast<T>(x.view());
      f.block.forward_train(h.view(), tr.ctx);
      const double e_out = test::relative_error<T, double>(h.view(), f.ck.template read<double>("output.block").view());
      Tensor<T> dh = test::cast<T>(R.view());
      f.block.backward(dh.view(), tr.ctx);
      CHECK(tr.tape.empty());
      std::ostringstream report;
      double worst = test::relative_error<T, double>(dh.view(), f.ck.template read<double>("grad.x").view());
      report << "output " << e_out << ", grad.x " << worst << "\n";
      BlockParams<T> refs{f.ref};
      std::vector<Tensor<T>*> ref_tensors;
      refs.visit_parameters([&](const std::string&, Tensor<T>& t) { ref_tensors.push_back(&t); });
      std::size_t i = 0;
      params.visit_parameters([&](const std::string& n, Tensor<T>& p) {
        Tensor<T>* g = tr.grads.find(p);
        REQUIRE(g != nullptr);
        const double e = test::relative_error<T, T>(g->view(), ref_tensors.at(i++)->view());
        report << n << " " << e << "\n";
        worst = std::max(worst, e);
      });
      INFO(report.str());
      CHECK(e_out <= tol);
      CHECK(worst <= tol);
      CHECK(tr.grads.find(ttt::ttt_layer(f.block).token_idx)->data()[3] == 0);  // the clamp
    }
}

namespace {

/// A TTT layer with random weights at the scales of a trained layer (so the inner updates matter).
ttt::Layer<double> random_layer(ttt::Kind kind, bool mamba, std::uint64_t seed) {
  ttt::Config c = mamba ? ttt::Config::mamba(kind, 16, 2) : ttt::Config::transformer(kind, 16, 2);
  ttt::Layer<double> l(c);
  std::uint64_t s = seed;
  l.visit_parameters([&](const std::string& name, Tensor<double>& t) {
    double scale = 1.0 / std::sqrt(double(t.cols()));
    if (name == "W1" || name == "W2") scale = 1.0 / std::sqrt(double(t.dim(1)));
    if (name.find("bias") != std::string::npos || name == "b1" || name == "b2") scale = 0.2;
    if (name == "learnable_token_idx") scale = 0.05;
    if (name.rfind("conv_", 0) == 0) scale = 0.4;
    Tensor<double> r = test::random_tensor<double>(t.shape(), s++, scale);
    for (Index i = 0; i < t.rows(); ++i)
      for (Index j = 0; j < t.cols(); ++j) t.row(i)[j] = r.row(i)[j] + (name.find("norm.weight") != std::string::npos ? 1.0 : 0.0);
  });
  l.token_idx[3] = -0.5;  // the clamp
  return l;
}

/// y of each sequence through the inference forward from a fresh state.
template <class T>
Tensor<T> prefill(const SequenceLayer<T>& layer, ConstView<T> x, Index n_seqs) {
  const Index L = x.rows() / n_seqs;
  Tensor<T> y({x.rows(), x.cols()});
  for (Index s = 0; s < n_seqs; ++s) {
    auto st = layer.make_state();
    Workspace<T> ws;
    StepContext<T> ctx;
    ctx.workspace = &ws;
    layer.forward(x.middle_rows(s * L, L), y.view().middle_rows(s * L, L), st.get(), ctx);
  }
  return y;
}

}  // namespace

TEST_CASE("the TTT layer's outer gradients match finite differences in double (both backbones, two sequences of 21)",
          "[ttt][train][gradient]") {
  const Index n_seqs = 2, L = 21, C = 16;
  for (auto kind : {ttt::Kind::linear, ttt::Kind::mlp})
    for (bool mamba : {false, true}) {
      INFO((kind == ttt::Kind::mlp ? "mlp" : "linear") << (mamba ? " M" : " T"));
      ttt::Layer<double> layer = random_layer(kind, mamba, 40);
      Tensor<double> x = test::random_tensor<double>({n_seqs * L, C}, 1);
      const Tensor<double> R = test::random_tensor<double>({n_seqs * L, C}, 2);
      Trainer<double> tr(layer, n_seqs, L);
      Tensor<double> y({n_seqs * L, C}), dx({n_seqs * L, C});
      layer.forward_train(x.view(), y.view(), tr.ctx);
      CHECK(test::relative_error<double, double>(y.view(), prefill<double>(layer, x.view(), n_seqs).view()) <= 1e-14);
      layer.backward(R.view(), dx.view(), tr.ctx);
      CHECK(tr.tape.empty());
      auto loss = [&] {
        const Tensor<double> out = prefill<double>(layer, x.view(), n_seqs);
        double l = 0;
        for (Index r = 0; r < out.rows(); ++r)
          for (Index c = 0; c < C; ++c) l += R(r, c) * out(r, c);
        return l;
      };
      const test::ThreadCount one_thread(1);  // finite differences: thousands of small evaluations
      std::ostringstream report;
      double worst = 0;
      auto probe = [&](const std::string& name, Tensor<double>& value, const Tensor<double>& grad, Index stride) {
        double err = 0, scale = 0;
        Index k = 0;
        for (Index r = 0; r < value.rows(); ++r)
          for (Index c = 0; c < value.cols(); ++c, ++k) {
            scale = std::max(scale, std::abs(grad(r, c)));
            if (k % stride != 0) continue;
            double& v = value.row(r)[c];
            const double keep = v, h = 3e-6;
            v = keep + h;
            const double lp = loss();
            v = keep - h;
            const double lm = loss();
            v = keep;
            err = std::max(err, std::abs((lp - lm) / (2 * h) - grad(r, c)));
          }
        report << name << ": max |fd - analytic| " << err << ", max |grad| " << scale << "\n";
        CHECK(scale > 0);
        worst = std::max(worst, err / std::max(scale, 1e-300));
      };
      probe("x", x, dx, x.numel() / 8);
      layer.visit_parameters([&](const std::string& name, Tensor<double>& p) {
        probe(name, p, *tr.grads.find(p), std::max<Index>(1, p.numel() / 5));
      });
      INFO(report.str());
      CHECK(worst <= 1e-7);
    }
}

TEST_CASE("CausalConv's training forward equals its inference forward per sequence and its backward matches finite differences",
          "[ttt][train][gradient]") {
  ttt::CausalConv<double> conv(6, 4);
  conv.conv.weight = test::random_tensor<double>({4, 6}, 1);
  conv.conv.bias = test::random_tensor<double>({6}, 2);
  const Index n_seqs = 3, L = 5;
  Tensor<double> x = test::random_tensor<double>({n_seqs * L, 6}, 3);
  const Tensor<double> R = test::random_tensor<double>({n_seqs * L, 6}, 4);
  Trainer<double> tr(conv, n_seqs, L);
  Tensor<double> y({n_seqs * L, 6}), dx({n_seqs * L, 6});
  conv.forward_train(x.view(), y.view(), tr.ctx);
  CHECK(test::relative_error<double, double>(y.view(), prefill<double>(conv, x.view(), n_seqs).view()) == 0);
  conv.backward(R.view(), dx.view(), tr.ctx);
  auto loss = [&] {
    const Tensor<double> out = prefill<double>(conv, x.view(), n_seqs);
    double l = 0;
    for (Index r = 0; r < out.rows(); ++r)
      for (Index c = 0; c < 6; ++c) l += R(r, c) * out(r, c);
    return l;
  };
  const test::ThreadCount one_thread(1);  // finite differences: thousands of small evaluations
  double worst = 0;
  for (auto [value, grad] : {std::pair{&x, &dx}, {&conv.conv.weight, tr.grads.find(conv.conv.weight)}, {&conv.conv.bias, tr.grads.find(conv.conv.bias)}})
    for (Index r = 0; r < value->rows(); ++r)
      for (Index c = 0; c < value->cols(); ++c) {
        double& v = value->row(r)[c];
        const double keep = v;
        v = keep + 1e-5;
        const double lp = loss();
        v = keep - 1e-5;
        const double lm = loss();
        v = keep;
        worst = std::max(worst, std::abs((lp - lm) / 2e-5 - (*grad)(r, c)));
      }
  CHECK(worst <= 1e-9);
}

TEST_CASE("TTT training: forward_train equals prefill in float, frozen parameters, and errors", "[ttt][train]") {
  for (const char* name : kFixtures) {
    INFO(name);
    GradFixture<float> f(name, ttt::InnerForm::dual);
    ttt::Layer<float>& layer = ttt::ttt_layer(f.block);
    const Index n_seqs = 2, L = 37, C = layer.dim();
    const auto x = test::random_tensor<float>({n_seqs * L, C}, 8);
    Trainer<float> tr(layer, n_seqs, L);
    Tensor<float> y({n_seqs * L, C}), dx({n_seqs * L, C});
    layer.forward_train(x.view(), y.view(), tr.ctx);
    CHECK(test::relative_error<float, float>(y.view(), prefill<float>(layer, x.view(), n_seqs).view()) <= 1e-6);
    layer.backward(y.view(), dx.view(), tr.ctx);
    // Freezing the inner initial weights and the inner LayerNorm leaves every other gradient as is.
    Trainer<float> frozen(layer, n_seqs, L, [](const std::string& n) { return n != "W1" && n.rfind("ttt_norm", 0) != 0; });
    Tensor<float> y2({n_seqs * L, C}), dx2({n_seqs * L, C});
    layer.forward_train(x.view(), y2.view(), frozen.ctx);
    layer.backward(y.view(), dx2.view(), frozen.ctx);
    CHECK(frozen.grads.find(layer.W1) == nullptr);
    CHECK(test::relative_error<float, float>(dx2.view(), dx.view()) == 0);
    for (const auto& e : frozen.grads.entries()) CHECK(test::relative_error<float, float>(e.grad.view(), tr.grads.at(e.name).view()) == 0);
  }
  GradFixture<float> f("ttt_linear_T", ttt::InnerForm::dual);
  ttt::Layer<float>& layer = ttt::ttt_layer(f.block);
  Trainer<float> tr(layer, 2, 10);
  Tensor<float> x({21, layer.dim()}), y({21, layer.dim()});
  CHECK_THROWS_AS(layer.forward_train(x.view(), y.view(), tr.ctx), Error);  // 21 rows for 2 x 10
  tr.ctx.seq_len = 21;
  tr.ctx.n_seqs = 1;
  layer.forward_train(x.view(), y.view(), tr.ctx);
  tr.ctx.seq_len = 7;  // backward of another shape than the forward's
  tr.ctx.n_seqs = 3;
  CHECK_THROWS_AS(layer.backward(y.view(), x.view(), tr.ctx), Error);
}

TEMPLATE_TEST_CASE("a two-layer TTT language model's loss and every gradient match the PyTorch reference through train::lm_step",
                   "[ttt][train][golden]", float, double) {
  using T = TestType;
  // Double: the same correctly rounded RoPE table as in the block test above.
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  const auto dir = test::fixture("ttt_grad/model_linear_T");
  Decoder<T> model = ttt::load_decoder<T>(dir);
  const Checkpoint golden = Checkpoint::open(dir / "golden.safetensors");
  const std::vector<std::int32_t> tokens = test::read_tokens(golden);
  train::Batch batch;
  batch.n_seqs = 1, batch.seq_len = Index(tokens.size());
  batch.tokens = tokens;
  for (std::size_t t = 0; t < tokens.size(); ++t) batch.labels.push_back(t + 1 < tokens.size() ? tokens[t + 1] : train::kIgnore);
  Gradients<T> grads(model);
  train::StepBuffers<T> buf;
  const auto stats = train::lm_step<T>(model, batch, &grads, buf, T(1.0 / double(batch.count())));
  const double loss = stats.loss_sum / double(stats.count), ref_loss = golden.read<double>("loss")[0];
  CHECK(std::abs(loss - ref_loss) <= tol * std::abs(ref_loss));
  // The reference gradients in engram's layout: a second model bound from the grad.* tensors.
  const ttt::ModelSpec spec = ttt::config_from_json(read_json_file(dir / "config.json"));
  Decoder<T> ref = ttt::make_decoder<T>(spec);
  hf::WeightBinder<T> b(golden, "golden");
  b.rows_into("grad.model.embed_tokens.weight", {spec.vocab_size, spec.layer.d_model}, ref.embed.weight);
  b.rows_into("grad.model.norm.weight", {spec.layer.d_model}, ref.final_norm.weight);
  for (Index l = 0; l < spec.n_layers; ++l)
    ttt::bind_block<T>(b, "grad.model.layers." + std::to_string(l) + ".", spec, ref.blocks[std::size_t(l)]);
  std::vector<Tensor<T>*> ref_tensors;
  ref.visit_parameters([&](const std::string&, Tensor<T>& t) { ref_tensors.push_back(&t); });
  std::ostringstream report;
  double worst = 0;
  std::size_t i = 0;
  model.visit_parameters([&](const std::string& name, Tensor<T>& p) {
    Tensor<T>* ref_t = ref_tensors.at(i++);
    if (Tensor<T>* g = grads.find(p)) {  // the tied head has the embedding's gradient
      const double e = test::relative_error<T, T>(g->view(), ref_t->view());
      report << name << " " << e << "\n";
      worst = std::max(worst, e);
    }
  });
  INFO(report.str());
  CHECK(i == ref_tensors.size());
  CHECK(worst <= tol);
}
