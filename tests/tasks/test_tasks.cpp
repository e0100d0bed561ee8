// Memory tasks: byte tokenizer round trip, corpus parsing (strfile, paragraphs, Debian's fortunes)
// and its errors, determinism (pinned bytes), exact lengths, fact / question / answer placement.
#include <fstream>
#include <regex>
#include <set>

#include "engram/tasks/bindings.hpp"
#include "engram/tasks/memory_tasks.hpp"
#include "engram/train/data.hpp"
#include "test_util.hpp"

using namespace engram;
using namespace engram::tasks;

namespace {

const Corpus& small_corpus() {
  static const Corpus c = Corpus::from_text(
      "The quick brown fox jumps over the lazy dog.\n%\nA journey of a thousand miles\nbegins with a single step.\n%\n"
      "All that glitters is not gold.\n%\n\n%\nNo man is an island, entire of itself.\n");
  return c;
}

std::uint64_t fnv1a(const std::vector<std::int32_t>& v) {
  std::uint64_t h = 1469598103934665603ull;
  for (std::int32_t x : v) h = (h ^ std::uint64_t(std::uint32_t(x))) * 1099511628211ull;
  return h;
}

std::string text_of(const Sample& s, Span sp) {
  return ByteTokenizer::decode(std::span<const std::int32_t>(s.tokens).subspan(std::size_t(sp.begin), std::size_t(sp.size)));
}

int place_id(const std::string& p) {
  for (std::size_t i = 0; i < kPlaces.size(); ++i)
    if (kPlaces[i] == p) return int(i);
  return -1;
}

// Solves a qa4 sample from its text: facts "The P is R of the C.", question direct or inverse.
int solve_qa4(const SampleInfo& info) {
  const std::regex fact(R"(The (\w+) is (\w+) of the (\w+)\.)");
  const std::regex direct(R"(What is (\w+) of the (\w+)\?)"), inverse(R"(What is the (\w+) (\w+) of\?)");
  auto opposite = [](const std::string& d) {
    for (std::size_t i = 0; i < kDirections.size(); ++i)
      if (kDirections[i] == d) return std::string(kDirections[i ^ 1]);
    return std::string();
  };
  std::smatch m, q;
  for (const auto& f : info.facts) {
    REQUIRE(std::regex_match(f, m, fact));
    if (std::regex_match(info.question, q, direct) && q[1] == m[2] && q[2] == m[3]) return place_id(m[1]);
    if (std::regex_match(info.question, q, inverse) && q[1] == m[3] && opposite(q[2]) == m[2]) return place_id(m[1]);
  }
  return -1;
}

}  // namespace

TEST_CASE("byte tokenizer round-trips every byte and names its specials", "[tasks]") {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(char(b));
  const auto ids = ByteTokenizer::encode(all);
  REQUIRE(ids.size() == 256);
  for (int b = 0; b < 256; ++b) CHECK(ids[std::size_t(b)] == b);
  CHECK(ByteTokenizer::decode(ids) == all);
  CHECK(ByteTokenizer::decode(ByteTokenizer::encode("Where is Mary?")) == "Where is Mary?");
  const std::vector<std::int32_t> with_specials = {ByteTokenizer::cls, 'h', 'i', ByteTokenizer::sep, ByteTokenizer::pad,
                                                   ByteTokenizer::answer, ByteTokenizer::eos};
  CHECK(ByteTokenizer::decode(with_specials) == "<cls>hi<sep><pad><ans><eos>");
  CHECK(ByteTokenizer::decode(with_specials, true) == "hi");
  CHECK(ByteTokenizer::vocab_size == 261);
  CHECK(ByteTokenizer::is_special(ByteTokenizer::eos));
  CHECK(!ByteTokenizer::is_special('a'));
  CHECK_THROWS_AS(ByteTokenizer::decode(std::vector<std::int32_t>{261}), Error);
  CHECK_THROWS_AS(ByteTokenizer::decode(std::vector<std::int32_t>{-1}), Error);
}

TEST_CASE("corpora parse strfile entries and paragraphs and reject missing or empty sources", "[tasks][corpus]") {
  const Corpus& c = small_corpus();
  REQUIRE(c.passages().size() == 4);  // the empty entry is dropped
  CHECK(c.passages()[1] == "A journey of a thousand miles begins with a single step.");
  const Corpus para = Corpus::from_text("First  paragraph\nstill first.\n\n  \nSecond\tone.\n");
  REQUIRE(para.passages().size() == 2);
  CHECK(para.passages()[0] == "First paragraph still first.");
  CHECK(para.passages()[1] == "Second one.");
  CHECK_THROWS_AS(Corpus::from_text("%\n%\n  \n"), Error);
  CHECK_THROWS_AS(Corpus::from_path("/nonexistent/engram/corpus"), Error);
  test::TempDir dir;
  std::ofstream(dir.path() / "empty.txt") << "\n\n";
  CHECK_THROWS_AS(Corpus::from_path(dir.path() / "empty.txt"), Error);
  try {
    (void)Corpus::from_path(dir.path() / "missing.txt");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("missing.txt") != std::string::npos);
  }
  // A directory: every text file, sorted; strfile indexes (*.dat) and symlinks are skipped.
  std::ofstream(dir.path() / "b") << "Bee.\n%\nBuzz.\n";
  std::ofstream(dir.path() / "a") << "Ant.\n";
  std::ofstream(dir.path() / "a.dat") << "\x01\x02 binary index";
  std::filesystem::create_symlink(dir.path() / "a", dir.path() / "a.u8");
  std::filesystem::remove(dir.path() / "empty.txt");
  const Corpus d = Corpus::from_path(dir.path());
  CHECK(d.passages() == std::vector<std::string>{"Ant.", "Bee.", "Buzz."});
}

TEST_CASE("the default corpus is Debian's fortunes", "[tasks][corpus]") {
  // cmake/bootstrap.sh installs fortunes-min.
  const Corpus c = Corpus::fortunes();
  CHECK(c.passages().size() > 500);
  CHECK(c.bytes() > 50000);
  for (const auto& p : c.passages()) {
    CHECK(!p.empty());
    CHECK(p.find('\n') == std::string::npos);
  }
}

TEST_CASE("samples are deterministic: same seed same bytes on every machine", "[tasks]") {
  const Corpus& c = small_corpus();
  for (Task task : {Task::fact_memorization, Task::fact_detection, Task::reasoning}) {
    const TaskOptions o{task, 700, 100, false};
    const Sample a = make_sample(c, o, 42), b = make_sample(c, o, 42), other = make_sample(c, o, 43);
    INFO(name(task));
    CHECK(a.tokens == b.tokens);
    CHECK(a.tokens != other.tokens);
    CHECK(a.info.facts == b.info.facts);
    CHECK(a.info.fact_spans == b.info.fact_spans);
  }
  // Pinned: mt19937_64 and the hand-written distributions give these bytes with any standard library.
  CHECK(fnv1a(make_sample(c, {Task::fact_memorization, 300}, 1).tokens) == 0x76bb382bcda7a508ull);
  CHECK(fnv1a(make_sample(c, {Task::fact_detection, 1000, 128}, 2).tokens) == 0xe85dc754b7bf5ae5ull);
  CHECK(fnv1a(make_sample(c, {Task::reasoning, 1000, 128, true}, 3).tokens) == 0xed9c55b579cf7297ull);
  const Sample s = make_sample(c, {Task::reasoning, 1000, 128, true}, 3);
  CHECK(s.info.facts == std::vector<std::string>{"The garden is south of the kitchen.", "The office is west of the kitchen."});
  CHECK(s.info.question == "What is the kitchen east of?");
  CHECK(s.info.answer_text() == "office");
}

TEST_CASE("samples have the exact length and stream in any chunks", "[tasks]") {
  const Corpus& c = small_corpus();
  for (Index length : {60, 61, 499, 4096, 100000}) {
    const Sample s = make_sample(c, {Task::fact_detection, length}, 9);
    CHECK(Index(s.tokens.size()) == length);
    CHECK(std::all_of(s.tokens.begin(), s.tokens.end(), [](std::int32_t t) { return t >= 0 && t < 256; }));
    SampleStream st(c, {Task::fact_detection, length}, 9);
    std::vector<std::int32_t> chunked, buf(37);
    while (st.remaining() > 0) {
      const Index n = st.read(buf);
      chunked.insert(chunked.end(), buf.begin(), buf.begin() + n);
    }
    CHECK(chunked == s.tokens);
    CHECK(st.read(buf) == 0);
  }
  // A million tokens stream through a small buffer.
  SampleStream big(c, {Task::reasoning, 1 << 20, 512}, 5);
  std::vector<std::int32_t> buf(4096);
  Index total = 0;
  while (big.remaining() > 0) total += big.read(buf);
  CHECK(total == 1 << 20);
  // Too short for the facts and the question; bad options.
  CHECK_THROWS_AS(make_sample(c, {Task::fact_memorization, 20}, 1), Error);
  CHECK_THROWS_AS(make_sample(c, {Task::reasoning, 60}, 1), Error);
  CHECK_THROWS_AS(make_sample(c, {Task::fact_detection, 0}, 1), Error);
  CHECK_THROWS_AS(make_sample(c, {Task::reasoning, 1000, 40}, 1), Error);  // a segment cannot hold both facts
}

TEST_CASE("facts, question and answer are placed by each task's rule", "[tasks]") {
  const Corpus& c = small_corpus();
  std::set<int> answers;
  std::set<Index> detection_segments, reasoning_segments;
  for (std::uint64_t seed = 0; seed < 200; ++seed) {
    // Fact memorization: the fact at token 0, the question in the last tokens.
    const Sample m = make_sample(c, {Task::fact_memorization, 400}, seed);
    REQUIRE(m.info.facts.size() == 1);
    CHECK(m.info.fact_spans[0].begin == 0);
    CHECK(text_of(m, m.info.fact_spans[0]) == m.info.facts[0]);
    CHECK(m.info.question_span.end() == 400);
    CHECK(text_of(m, m.info.question_span) == m.info.question);
    // qa1: "{name} {verb} to the {place}." asks "Where is {name}?" and the answer is the place.
    const std::regex qa1(R"((Mary|John|Daniel|Sandra) (moved|went|went back|journeyed|travelled) to the (\w+)\.)");
    std::smatch f;
    REQUIRE(std::regex_match(m.info.facts[0], f, qa1));
    CHECK(m.info.question == "Where is " + f[1].str() + "?");
    CHECK(m.info.answer == place_id(f[3]));
    CHECK(m.info.answer_text() == f[3].str());
    answers.insert(m.info.answer);

    // Fact detection: at the start of a segment (left-aligned, s = 100) that fits before the question.
    const Sample d = make_sample(c, {Task::fact_detection, 1000, 100}, seed);
    const Span fd = d.info.fact_spans[0];
    CHECK(fd.begin % 100 == 0);
    CHECK(fd.end() <= d.info.question_span.begin);
    CHECK(text_of(d, fd) == d.info.facts[0]);
    detection_segments.insert(fd.begin / 100);
    // Right-aligned (1030 = 30 + 10 x 100): segment starts 0 (skipped when the fact is longer than
    // 30 tokens), 30, 130, ...
    const Sample dr = make_sample(c, {Task::fact_detection, 1030, 100, true}, seed);
    const Span fr = dr.info.fact_spans[0];
    CHECK((fr.begin % 100 == 30 || (fr.begin == 0 && fr.size <= 30)));

    // Reasoning: two qa4 facts at segment starts (or the second right after the first when they
    // share a segment); the answer follows from the facts.
    const Sample r = make_sample(c, {Task::reasoning, 2000, 200}, seed);
    REQUIRE(r.info.facts.size() == 2);
    const Span a = r.info.fact_spans[0], b = r.info.fact_spans[1];
    CHECK(a.begin % 200 == 0);
    CHECK((b.begin % 200 == 0 || b.begin == a.end() + 1));
    CHECK((a.end() <= b.begin || b.end() <= a.begin));
    CHECK(std::max(a.end(), b.end()) <= r.info.question_span.begin);
    CHECK(text_of(r, a) == r.info.facts[0]);
    CHECK(text_of(r, b) == r.info.facts[1]);
    CHECK(text_of(r, r.info.question_span) == r.info.question);
    CHECK(solve_qa4(r.info) == r.info.answer);
    reasoning_segments.insert(a.begin / 200);
    // No segments: two facts anywhere before the question, in order, not overlapping.
    const Sample u = make_sample(c, {Task::reasoning, 300}, seed);
    CHECK(u.info.fact_spans[0].end() < u.info.fact_spans[1].begin);
    CHECK(u.info.fact_spans[1].end() <= u.info.question_span.begin);
    CHECK(solve_qa4(u.info) == u.info.answer);
  }
  CHECK(answers.size() == 6);               // every answer class occurs
  CHECK(detection_segments.size() >= 8);    // facts spread over the segments
  CHECK(reasoning_segments.size() >= 8);
}

TEST_CASE("reasoning asks the chosen question forms, with the same facts and answer for a seed", "[tasks]") {
  const Corpus& c = small_corpus();
  const std::regex direct(R"(What is (\w+) of the (\w+)\?)"), inverse(R"(What is the (\w+) (\w+) of\?)");
  int both_direct = 0;
  for (std::uint64_t seed = 0; seed < 200; ++seed) {
    TaskOptions o{Task::reasoning, 600, 200};
    const Sample b = make_sample(c, o, seed);
    o.questions = Questions::direct;
    const Sample d = make_sample(c, o, seed);
    o.questions = Questions::inverse;
    const Sample i = make_sample(c, o, seed);
    CHECK(std::regex_match(d.info.question, direct));
    CHECK(std::regex_match(i.info.question, inverse));
    both_direct += std::regex_match(b.info.question, direct) ? 1 : 0;
    // Only the question differs: same facts where they were, same answer, and the solver agrees.
    for (const Sample* s : {&d, &i}) {
      CHECK(s->info.facts == b.info.facts);
      CHECK(s->info.fact_spans == b.info.fact_spans);
      CHECK(s->info.answer == b.info.answer);
      CHECK(solve_qa4(s->info) == s->info.answer);
    }
    CHECK((b.info.question == d.info.question || b.info.question == i.info.question));
  }
  CHECK(both_direct > 70);  // both forms: about half direct (binomial 200, 1/2: 70..130 is beyond 4 sigma)
  CHECK(both_direct < 130);
  CHECK(parse_questions("inverse") == Questions::inverse);
  CHECK(parse_task("reasoning") == Task::reasoning);
  CHECK_THROWS_AS(parse_questions("sideways"), Error);
  CHECK_THROWS_AS(parse_task("qa4"), Error);
}

TEST_CASE("binding labels name each fact's place at its direction and the answer at the question's", "[tasks][bindings]") {
  const Corpus& c = small_corpus();
  // Read back from the sample's bytes with regexes: every label sits on the first two bytes of a
  // direction word and names the first two bytes of the place bound to it.
  const std::regex fact(R"(The (\w+) is (north|south|east|west) of the (\w+)\.)");
  for (std::uint64_t seed = 0; seed < 100; ++seed) {
    for (Index segment : {Index(0), Index(200)}) {
      const Sample s = make_sample(c, TaskOptions{Task::reasoning, 600, segment, false, seed % 3 == 0 ? Questions::inverse : Questions::both}, seed);
      const std::vector<BindingLabel> labels = binding_labels(s.info);
      REQUIRE(labels.size() == 6);
      std::vector<std::pair<Index, std::string>> expected;  // (direction's first byte, place)
      for (std::size_t f = 0; f < 2; ++f) {
        std::smatch m;
        const std::string text = text_of(s, s.info.fact_spans[f]);
        REQUIRE(std::regex_match(text, m, fact));
        expected.push_back({s.info.fact_spans[f].begin + Index(m.position(2)), m[1]});
      }
      std::smatch q;
      const std::string question = text_of(s, s.info.question_span);
      REQUIRE(std::regex_search(question, q, std::regex("north|south|east|west")));
      expected.push_back({s.info.question_span.begin + Index(q.position(0)), std::string(s.info.answer_text())});
      for (std::size_t k = 0; k < 3; ++k)
        for (Index i = 0; i < 2; ++i) {
          const BindingLabel& l = labels[2 * k + std::size_t(i)];
          CHECK(l.position == expected[k].first + i);
          CHECK(l.token == static_cast<unsigned char>(expected[k].second[std::size_t(i)]));
        }
    }
  }
  CHECK_THROWS_AS(binding_labels(make_sample(c, TaskOptions{Task::fact_detection, 600}, 1).info), Error);
}

TEST_CASE("a task source with bindings adds the binding labels and keeps the answer's", "[tasks][bindings]") {
  const Corpus& c = small_corpus();
  const TaskOptions o{Task::reasoning, 300, 150};
  const train::TaskSource plain(c, o, 7), bound(c, o, 7, true, true);
  const train::Batch a = plain.train_batch(3, 0, 4), b = bound.train_batch(3, 0, 4);
  REQUIRE(a.tokens == b.tokens);
  Index extra = 0;
  for (std::size_t i = 0; i < a.labels.size(); ++i) {
    if (a.labels[i] != train::kIgnore) CHECK(b.labels[i] == a.labels[i]);  // the answer's labels unchanged
    if (a.labels[i] == train::kIgnore && b.labels[i] != train::kIgnore) ++extra;
  }
  CHECK(extra == 4 * 6);
  CHECK_THROWS_AS(train::TaskSource(c, TaskOptions{Task::fact_memorization, 300}, 7, true, true), Error);
  CHECK_THROWS_AS(train::TaskSource(c, o, 7, false, true), Error);
}
