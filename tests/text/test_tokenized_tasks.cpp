// The memory tasks in a model's own tokens (eval::score_task with a TextEncoder): a recording reader
// around a random decoder of the tokenizer's vocabulary size checks the pipeline, not accuracy:
// each sample is read as the encoding of its whole text, the 6 scored candidates are the answers'
// tokens, the prediction is the most likely one and the accuracy counts them.
#include <catch2/catch.hpp>

#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engram/eval/memory_tasks.hpp"
#include "engram/nn/init.hpp"
#include "test_util.hpp"

#if ENGRAM_HAVE_TOKENIZERS
#include "engram/tokenizers/tokenizers.hpp"
#endif

using namespace engram;
using Ids = std::vector<std::int32_t>;

namespace {

// What one sample's session (and its forks) saw.
struct Log {
  Ids read;
  std::vector<Ids> scored;
};

class RecordingSession final : public eval::Session {
 public:
  RecordingSession(std::unique_ptr<eval::Session> inner, std::shared_ptr<Log> log) : inner_(std::move(inner)), log_(std::move(log)) {}
  void read(std::span<const std::int32_t> t) override {
    log_->read.insert(log_->read.end(), t.begin(), t.end());
    inner_->read(t);
  }
  void score(std::span<const std::int32_t> c, std::span<double> out) override {
    log_->scored.emplace_back(c.begin(), c.end());
    inner_->score(c, out);
  }
  std::unique_ptr<eval::Session> fork() const override { return std::make_unique<RecordingSession>(inner_->fork(), log_); }
  std::size_t state_bytes() const override { return inner_->state_bytes(); }

 private:
  std::unique_ptr<eval::Session> inner_;
  std::shared_ptr<Log> log_;
};

// Records every session it starts, in order (score_task runs with parallel = false here).
class RecordingReader final : public eval::Reader {
 public:
  explicit RecordingReader(const eval::Reader& inner) : inner_(inner) {}
  std::unique_ptr<eval::Session> start() const override {
    logs.push_back(std::make_shared<Log>());
    return std::make_unique<RecordingSession>(inner_.start(), logs.back());
  }
  std::string describe() const override { return "recording " + inner_.describe(); }
  Index vocab_size() const override { return inner_.vocab_size(); }
  mutable std::vector<std::shared_ptr<Log>> logs;

 private:
  const eval::Reader& inner_;
};

const tasks::Corpus& background() {
  static const tasks::Corpus c = tasks::Corpus::from_text(
      "The garden is quiet in the morning. Daniel keeps a lamp in the office, and nobody knows why.\n\n"
      "Rain again; the hallway smells of wet coats and zyxwv. Where the bedroom is, the kitchen is not.\n\n"
      "John said the bathroom was north of everything, which is not true.",
      "test background");
  return c;
}

// Words of the tasks and the background: the vocabulary of the test tokenizers (ids from 2 on).
std::vector<std::string> words() {
  std::vector<std::string> w = {"Where", "is", "the", "to", "back", "The", "?", ".", ",", ";", "What", "of", "went", "moved", "journeyed", "travelled"};
  for (auto n : tasks::kNames) w.emplace_back(n);
  for (auto p : tasks::kPlaces) w.emplace_back(p);
  for (auto d : tasks::kDirections) w.emplace_back(d);
  for (const char* b : {"quiet", "in", "morning", "keeps", "a", "lamp", "and", "nobody"}) w.emplace_back(b);
  return w;
}

std::string sample_text(const tasks::TaskOptions& o, Index i) {
  tasks::SampleStream s(background(), o, eval::eval_seed(i));
  std::vector<std::int32_t> bytes(std::size_t(o.length));
  s.read(bytes);
  std::string text;
  for (std::int32_t b : bytes) text.push_back(char(static_cast<unsigned char>(b)));
  return text;
}

// score_task through `encode` on a random decoder of `vocab` ids: checks what was read and scored.
void check_pipeline(const eval::TextEncoder& encode, Index vocab, const std::vector<std::int32_t>& place_ids) {
  auto model = Decoder<float>::create(ModelConfig::llama(vocab, 32, 1, 2, 1, 48));
  init_random(model, 11, 0.3);
  const eval::DecoderReader<float> plain(model);
  const RecordingReader reader(plain);
  for (tasks::Task task : {tasks::Task::fact_detection, tasks::Task::reasoning}) {
    INFO(tasks::name(task));
    tasks::TaskOptions o;
    o.task = task, o.length = 400;
    const Index n = 5;
    reader.logs.clear();
    const eval::TaskScore r = eval::score_task(reader, background(), o, {.samples = n, .read_chunk = 37, .parallel = false, .encode = encode});
    REQUIRE(reader.logs.size() == std::size_t(n));
    Index correct = 0;
    double tokens = 0;
    for (Index i = 0; i < n; ++i) {
      const Log& log = *reader.logs[std::size_t(i)];
      const Ids expected = encode(sample_text(o, i), true);
      CHECK(log.read == expected);  // the whole text in the model's tokens, read in chunks
      tokens += double(expected.size()) / double(n);
      for (std::int32_t id : log.read) REQUIRE((id >= 0 && id < vocab));
      REQUIRE(log.scored.size() == tasks::kAnswerClasses);
      for (int c = 0; c < int(tasks::kAnswerClasses); ++c) CHECK(log.scored[std::size_t(c)] == Ids{place_ids[std::size_t(c)]});
      // The prediction is the argmax of the candidates' log-probabilities after the same context.
      auto s = plain.start();
      s->read(expected);
      int best = -1;
      double best_lp = -INFINITY;
      for (int c = 0; c < int(tasks::kAnswerClasses); ++c) {
        std::vector<double> lp(1);
        s->fork()->score(log.scored[std::size_t(c)], lp);
        if (lp[0] > best_lp) best_lp = lp[0], best = c;
      }
      CHECK(r.predictions[std::size_t(i)] == best);
      tasks::SampleStream truth(background(), o, eval::eval_seed(i));
      correct += best == truth.info().answer;
    }
    CHECK(r.correct == correct);
    CHECK(r.accuracy == Approx(double(correct) / double(n)));
    CHECK(r.ci.lo <= r.accuracy);
    CHECK(r.ci.hi >= r.accuracy);
    CHECK(r.mean_tokens == Approx(tokens));
    CHECK(r.mean_tokens < double(o.length) / 2);  // words, not bytes
  }
}

}  // namespace

TEST_CASE("score_task in words: a hand-written word encoder") {
  std::map<std::string, std::int32_t> vocab;  // 0: unknown, 1: start of text
  for (const std::string& w : words()) vocab.emplace(w, std::int32_t(vocab.size() + 2));
  // Splits at whitespace and before ? . , ; so the question's "Mary?" is two words.
  const eval::TextEncoder encode = [&vocab](std::string_view text, bool special) {
    Ids ids;
    if (special) ids.push_back(1);
    std::string word;
    auto flush = [&] {
      if (word.empty()) return;
      const auto it = vocab.find(word);
      ids.push_back(it == vocab.end() ? 0 : it->second);
      word.clear();
    };
    for (char ch : text) {
      if (ch == ' ' || ch == '\n' || ch == '\t') flush();
      else if (ch == '?' || ch == '.' || ch == ',' || ch == ';') flush(), word = ch, flush();
      else word += ch;
    }
    flush();
    return ids;
  };
  std::vector<std::int32_t> places;
  for (auto p : tasks::kPlaces) places.push_back(vocab.at(std::string(p)));
  check_pipeline(encode, Index(vocab.size() + 2), places);
}

TEST_CASE("score_task in words: ids outside the model's vocabulary and answers merged into the question are Errors") {
  auto model = Decoder<float>::create(ModelConfig::llama(8, 16, 1, 2, 1, 32));
  init_random(model, 1);
  const eval::DecoderReader<float> reader(model);
  tasks::TaskOptions o;
  o.task = tasks::Task::fact_memorization, o.length = 200;
  const eval::TextEncoder too_large = [](std::string_view t, bool) { return Ids(t.size() / 8 + 1, 9); };
  CHECK_THROWS_WITH(eval::score_task(reader, background(), o, {.samples = 1, .parallel = false, .encode = too_large}),
                    Catch::Contains("outside the model's vocabulary [0, 8)"));
  // One token per text: the answer is not a continuation of the question's tokens.
  const eval::TextEncoder whole = [](std::string_view, bool) { return Ids{3}; };
  CHECK_THROWS_WITH(eval::score_task(reader, background(), o, {.samples = 1, .parallel = false, .encode = whole}),
                    Catch::Contains("merges the end of the question"));
}

#if ENGRAM_HAVE_TOKENIZERS
TEST_CASE("score_task in words: a tokenizer.json (WordLevel, Whitespace, BOS template) of a small vocabulary") {
  json::Value vocab = json::Value::object();
  vocab.set("[UNK]", 0), vocab.set("<s>", 1);
  std::int64_t next = 2;
  for (const std::string& w : words()) vocab.set(w, next++);
  const std::string text = R"({"added_tokens": [
      {"id": 0, "content": "[UNK]", "special": true, "normalized": false},
      {"id": 1, "content": "<s>", "special": true, "normalized": false}],
    "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
    "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
      "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
    "decoder": null,
    "model": {"type": "WordLevel", "unk_token": "[UNK]", "vocab": )" + json::dump(vocab) + "}}";
  const auto tok = tokenizers::HfTokenizer::from_json(json::parse(text, "test tokenizer.json"));
  REQUIRE(tok->vocab_size() == next);
  CHECK(tok->encode("Where is Mary?") == Ids{1, std::int32_t(tok->token_to_id("Where")), tok->token_to_id("is"), tok->token_to_id("Mary"), tok->token_to_id("?")});
  const eval::TextEncoder encode = [&tok](std::string_view t, bool special) { return tok->encode(t, special); };
  std::vector<std::int32_t> places;
  for (auto p : tasks::kPlaces) places.push_back(tok->token_to_id(p));
  check_pipeline(encode, tok->vocab_size(), places);
}
#endif
