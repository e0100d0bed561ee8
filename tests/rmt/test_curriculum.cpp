// The curriculum trainer: sample lengths per stage, stages ending on the step budget, the best
// checkpoint, CSV + SVG, a crash resumed bit-identically (RMT and ARMT); tasks that do not fit.
#include <filesystem>
#include <fstream>

#include "engram/eval/memory_tasks.hpp"
#include "engram/eval/rmt_reader.hpp"
#include "engram/nn/init.hpp"
#include "engram/rmt/armt_io.hpp"
#include "engram/rmt/curriculum.hpp"
#include "engram/rmt/init.hpp"
#include "test_util.hpp"

using namespace engram;

namespace {

std::shared_ptr<Decoder<float>> tiny_backbone(Index positions, std::uint64_t seed) {
  auto bb = std::make_shared<Decoder<float>>(Decoder<float>::create(ModelConfig::gpt2(tasks::ByteTokenizer::vocab_size, 16, 1, 2, positions)));
  init_for_training(*bb, seed);
  return bb;
}

rmt::RecurrentWrapper<float> tiny_rmt(std::uint64_t seed = 1, Index segment = 64) {
  auto bb = tiny_backbone(segment + 4, seed);
  return rmt::RecurrentWrapper<float>(rmt::MemoryCell<float>(bb, rmt::Config::decoder(2, segment), rmt::hf_initial_memory(*bb, 2, seed + 1)));
}

rmt::ArmtWrapper<float> tiny_armt(std::uint64_t seed = 1) {
  auto bb = tiny_backbone(64 + 2, seed);
  const auto c = rmt::ArmtConfig::make(2, 64, 4);
  return rmt::ArmtWrapper<float>(bb, c, rmt::hf_initial_memory(*bb, 2, seed + 1), rmt::init_associative<float>(*bb, c, seed + 2));
}

rmt::CurriculumOptions tiny_options(const std::filesystem::path& out) {
  rmt::CurriculumOptions o;
  o.stages = {{1, 3}, {2, 4}};
  o.min_stage_steps = 1;
  o.advance_accuracy = 2;  // never early: the budgets decide
  o.batch = 2, o.micro_batch = 1;
  o.lr = 1e-2, o.min_lr = 1e-3, o.warmup = 1;
  o.log_every = 1, o.eval_every = 2, o.checkpoint_every = 1;
  o.out_dir = out;
  return o;
}

template <class W>
typename rmt::CurriculumTrainer<W>::HeldOut held_out(const tasks::Corpus& corpus) {
  return [&corpus](const W& m, Index segments) {
    tasks::TaskOptions t{tasks::Task::fact_memorization, segments * m.segment_size() - tasks::max_answer_bytes(), m.segment_size()};
    eval::TaskEvalOptions e;
    e.samples = 2, e.first_sample = 1'000'000, e.parallel = false;
    return eval::score_task(eval::MemoryReader<W>(m), corpus, t, e).accuracy;
  };
}

template <class W>
std::vector<Tensor<float>> parameters(W& w) {
  std::vector<Tensor<float>> p;
  w.visit_parameters([&](const std::string&, Tensor<float>& t) { p.push_back(t.copy()); });
  return p;
}

// A run to the end, and the same run stopped by a "crash" after step 4 and resumed: same weights.
template <class W>
void check_resume(W a, W b, Index burn_in = 0) {
  const tasks::Corpus corpus = tasks::Corpus::fortunes();
  test::TempDir dir;
  auto options = [&](const std::filesystem::path& out) {
    auto o = tiny_options(out);
    o.burn_in_segments = burn_in;
    return o;
  };
  rmt::CurriculumTrainer<W> full(a, corpus, options(dir.path() / "a"), held_out<W>(corpus));
  full.run();
  CHECK(full.history().size() == 7);
  CHECK(std::filesystem::exists(dir.path() / "a" / "best" / "config.json"));
  CHECK(std::filesystem::exists(dir.path() / "a" / "final" / "config.json"));
  CHECK(std::filesystem::exists(dir.path() / "a" / "curriculum_accuracy.svg"));
  {
    std::ifstream csv(dir.path() / "a" / "curriculum.csv");
    std::string line;
    Index lines = 0;
    while (std::getline(csv, line)) ++lines;
    CHECK(lines == 8);  // header + 7 steps
  }
  {
    rmt::CurriculumTrainer<W> crashing(b, corpus, options(dir.path() / "b"), held_out<W>(corpus));
    CHECK_THROWS_WITH(crashing.run([](const rmt::CurriculumProgress& p) {
      if (p.step == 5) throw std::runtime_error("crash");
    }), "crash");
  }
  auto o = options(dir.path() / "b");
  o.resume = true;
  rmt::CurriculumTrainer<W> resumed(b, corpus, o, held_out<W>(corpus));
  resumed.run();
  CHECK(resumed.history().size() == 7);
  const auto pa = parameters(a), pb = parameters(b);
  REQUIRE(pa.size() == pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) CHECK(test::relative_error<float>(pb[i].view(), pa[i].view()) == 0.0);
  CHECK(full.history().back().loss == resumed.history().back().loss);
}

}  // namespace

TEST_CASE("curriculum sample lengths stay within the stage and fill the last segment", "[rmt][curriculum]") {
  auto w = tiny_rmt();
  const tasks::Corpus corpus = tasks::Corpus::fortunes();
  rmt::CurriculumOptions o = tiny_options({});
  o.stages = {{1, 10}, {4, 10}};
  rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>> t(w, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus));
  std::vector<int> seen(5, 0);
  for (Index step = 1; step <= 200; ++step) {
    const Index one = t.sample_length(0, step);
    CHECK(one + tasks::max_answer_bytes() <= 64);
    CHECK(one >= rmt::task_min_length(tasks::Task::fact_memorization));
    const Index four = t.sample_length(1, step);
    CHECK(four + tasks::max_answer_bytes() <= 4 * 64);
    ++seen[std::size_t((four + tasks::max_answer_bytes() + 63) / 64)];
    const auto b = t.batch(1, step, 0, 2);
    CHECK(b.n_seqs == 2);
    CHECK(b.length == four + tasks::max_answer_bytes());
    CHECK(b.count(rmt::Layout::decoder) >= 2 * 8);  // every answer byte of both samples is labelled
  }
  for (int k = 1; k <= 4; ++k) CHECK(seen[std::size_t(k)] > 20);  // 1 to 4 segments, all drawn
}

TEST_CASE("boundary samples end the document within the answer's length of a segment end", "[rmt][curriculum]") {
  auto w = tiny_rmt();
  const tasks::Corpus corpus = tasks::Corpus::fortunes();
  rmt::CurriculumOptions o = tiny_options({});
  o.stages = {{1, 10}, {4, 10}};
  const rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>> plain(w, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus));
  o.boundary_fraction = 1;
  const rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>> edge(w, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus));
  o.boundary_fraction = 0.25;
  const rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>> some(w, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus));
  const Index a = tasks::max_answer_bytes();
  auto at_boundary = [&](Index length) { return length > 64 - a && (length + a - 1) % 64 < a; };  // ends in [k s - a + 1, k s]
  int plain_edges = 0, some_edges = 0;
  for (Index step = 1; step <= 400; ++step) {
    CHECK(edge.sample_length(0, step) == plain.sample_length(0, step));  // one segment: nothing to cross
    const Index p = plain.sample_length(1, step), e = edge.sample_length(1, step), m = some.sample_length(1, step);
    // Samples of one segment stay; every longer one ends at a boundary, within the stage's segments.
    if (p <= 64 - a) CHECK(e == p);
    else CHECK(at_boundary(e));
    CHECK(e + a <= 4 * 64);
    CHECK((m == p || at_boundary(m)));
    plain_edges += at_boundary(p), some_edges += at_boundary(m);
  }
  // The natural rate is about a / 64 of the ~300 samples of 2+ segments (a = 10: about 47); a
  // quarter of the rest more with 0.25 (about 63 more; 5 sigma below that is still above 30).
  CHECK(plain_edges < 80);
  CHECK(some_edges > plain_edges + 30);
  o.boundary_fraction = 1.5;
  CHECK_THROWS_AS(rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>>(w, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus)), Error);
}

TEST_CASE("burn-in puts whole segments of background, without labels, in front of the same samples", "[rmt][curriculum]") {
  auto w = tiny_rmt();
  const tasks::Corpus corpus = tasks::Corpus::fortunes();
  rmt::CurriculumOptions o = tiny_options({});
  o.stages = {{1, 10}, {4, 10}};
  const rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>> plain(w, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus));
  o.burn_in_segments = 8;
  const rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>> burnt(w, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus));
  std::vector<int> depth(9, 0);
  for (Index step = 1; step <= 300; ++step) {
    CHECK(plain.burn_in(1, step) == 0);
    const Index d = burnt.burn_in(1, step);
    REQUIRE(d >= 0);
    REQUIRE(d <= 8);
    ++depth[std::size_t(d)];
    if (step > 40) continue;
    const auto a = plain.batch(1, step, 0, 2), b = burnt.batch(1, step, 0, 2);
    REQUIRE(b.length == a.length + d * 64);
    for (Index q = 0; q < 2; ++q) {
      const auto at = std::size_t(q * b.length);
      for (Index i = 0; i < d * 64; ++i) {
        CHECK(b.labels[at + std::size_t(i)] == train::kIgnore);
        CHECK((b.tokens[at + std::size_t(i)] >= 0 && b.tokens[at + std::size_t(i)] < 256));
      }
      for (Index i = 0; i < a.length; ++i) {
        CHECK(b.tokens[at + std::size_t(d * 64 + i)] == a.tokens[std::size_t(q * a.length + i)]);
        CHECK(b.labels[at + std::size_t(d * 64 + i)] == a.labels[std::size_t(q * a.length + i)]);
      }
    }
    if (d > 0) CHECK(!std::equal(b.tokens.begin(), b.tokens.begin() + d * 64, b.tokens.begin() + b.length));  // own background each
  }
  CHECK(depth[0] > depth[4]);  // log-uniform: short burn-ins are the most frequent
  for (int k = 0; k <= 7; ++k) CHECK(depth[std::size_t(k)] > 0);
  o.burn_in_segments = -1;
  CHECK_THROWS_AS(rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>>(w, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus)), Error);
}

TEST_CASE("no gradient reaches the memory through a burn-in, and it resumes bit-identically", "[rmt][curriculum]") {
  const tasks::Corpus corpus = tasks::Corpus::fortunes();
  for (Index most : {Index(0), Index(3)}) {
    auto w = tiny_rmt();
    rmt::CurriculumOptions o = tiny_options({});
    o.stages = {{2, 1}};
    o.burn_in_segments = most;
    // A seed whose single step has the burn-in asked for (none, or at least one segment).
    for (o.seed = 1;; ++o.seed)
      if ((rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>>(w, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus)).burn_in(0, 1) > 0) ==
          (most > 0))
        break;
    rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>> t(w, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus));
    t.run();
    const Tensor<float>* g = t.gradients().find(w.cell().initial_memory());
    REQUIRE(g != nullptr);
    double norm = 0;
    for (Index i = 0; i < g->numel(); ++i) norm += double(g->data()[i]) * double(g->data()[i]);
    // The initial memory feeds the first segment only: through a burn-in it reaches the loss
    // through no path (the memory entering the sample is detached); without one it does.
    if (most > 0) CHECK(norm == 0.0);
    else CHECK(norm > 0.0);
  }
}

TEST_CASE("curriculum training resumes bit-identically after a crash (RMT and ARMT)", "[rmt][armt][curriculum]") {
  check_resume(tiny_rmt(), tiny_rmt());
  check_resume(tiny_armt(), tiny_armt());
}

TEST_CASE("curriculum training with a burn-in resumes bit-identically after a crash", "[rmt][curriculum]") {
  check_resume(tiny_rmt(), tiny_rmt(), 3);
}

TEST_CASE("a task whose facts, question and answer do not fit a segment is refused", "[rmt][curriculum][errors]") {
  auto bb = tiny_backbone(48 + 4, 1);
  auto w = rmt::RecurrentWrapper<float>(rmt::MemoryCell<float>(bb, rmt::Config::decoder(2, 48), rmt::hf_initial_memory(*bb, 2, 2)));
  const tasks::Corpus corpus = tasks::Corpus::fortunes();
  auto o = tiny_options({});
  CHECK_THROWS_AS(rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>>(w, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus)), Error);
  auto big = tiny_rmt();
  o.task = tasks::Task::reasoning;  // two facts and the question need 125 tokens
  CHECK_THROWS_AS(rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>>(big, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus)), Error);
  o = tiny_options({});
  o.stages = {};
  CHECK_THROWS_AS(rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>>(big, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus)), Error);
  o = tiny_options({});
  o.resume = true;  // no output directory
  CHECK_THROWS_AS(rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>>(big, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus)), Error);
}

TEST_CASE("a checkpoint of other question forms is not resumed", "[rmt][curriculum][errors]") {
  const tasks::Corpus corpus = tasks::Corpus::fortunes();
  test::TempDir dir;
  auto o = tiny_options(dir.path());
  o.stages = {{1, 2}};
  o.questions = tasks::Questions::direct;
  auto a = tiny_rmt();
  rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>>(a, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus)).run();
  o.resume = true;
  o.questions = tasks::Questions::both;
  auto b = tiny_rmt();
  CHECK_THROWS_WITH(rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>>(b, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus)).run(),
                    Catch::Contains("checkpoint of direct questions, this run trains both"));
  o.questions = tasks::Questions::direct;  // the same forms resume
  CHECK_NOTHROW(rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>>(b, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus)).run());
}

TEST_CASE("binding labels reach the curriculum's batches and a checkpoint without them is not resumed", "[rmt][curriculum][bindings]") {
  const tasks::Corpus corpus = tasks::Corpus::fortunes();
  test::TempDir dir;
  auto o = tiny_options(dir.path());
  o.task = tasks::Task::reasoning;
  o.stages = {{1, 2}};
  auto w = tiny_rmt(1, 160);
  const rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>> plain(w, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus));
  o.bindings = true;
  const rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>> bound(w, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus));
  for (Index step = 1; step <= 5; ++step) {
    const auto a = plain.batch(0, step, 0, 2), b = bound.batch(0, step, 0, 2);
    REQUIRE(a.tokens == b.tokens);
    CHECK(b.count(rmt::Layout::decoder) == a.count(rmt::Layout::decoder) + 2 * 6);  // 2 bytes at each of 3 directions, per sample
  }
  // A run with bindings does not resume one without, nor the other way round.
  o.bindings = false;
  auto a = tiny_rmt(1, 160);
  rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>>(a, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus)).run();
  o.resume = true;
  o.bindings = true;
  auto b = tiny_rmt(1, 160);
  CHECK_THROWS_WITH(rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>>(b, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus)).run(),
                    Catch::Contains("checkpoint trained without binding labels, this run with"));
  o.task = tasks::Task::fact_memorization;
  o.resume = false;
  CHECK_THROWS_AS(rmt::CurriculumTrainer<rmt::RecurrentWrapper<float>>(b, corpus, o, held_out<rmt::RecurrentWrapper<float>>(corpus)), Error);
}
