// The real GPT-2, Llama-3, Llama-2 and Mistral (tokenizer.json and SentencePiece tokenizer.model) and BERT
// (tokenizer.json and vocab.txt) vocabularies against ids, decodings and round trips computed by
// the reference, Hugging Face tokenizers, on every test text (tests/tokenizers/texts.json, each
// added token, seeded random strings). The vocabularies and reference files are made by
// fetch_vocabularies.sh (a CTest setup fixture); when they are missing these tests fail.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "engram/tokenizers/tokenizers.hpp"

using namespace engram;
using namespace engram::tokenizers;
using Ids = std::vector<std::int32_t>;
namespace fs = std::filesystem;

namespace {

const fs::path kData = ENGRAM_TOKENIZER_DATA;

struct Case {
  std::string name, input, text;  // input: the bytes we encode; text: the reference's (repaired) input
  Ids ids, ids_plain;
  std::string decoded, decoded_skip;
};

struct Reference {
  Index vocab_size = 0;
  std::vector<Case> cases;
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE(in.good());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

Ids to_ids(const json::Value& v) {
  Ids ids;
  for (const json::Value& x : v.as_array()) ids.push_back(std::int32_t(x.as_integer()));
  return ids;
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) out += char(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

const Reference& reference(const std::string& model) {
  static std::map<std::string, Reference> cache;
  if (auto it = cache.find(model); it != cache.end()) return it->second;
  const fs::path file = kData / "reference" / (model + ".json");
  INFO("missing " << file.string() << ": run tests/tokenizers/fetch_vocabularies.sh " << kData.string() << " (needs node and npm)");
  REQUIRE(fs::exists(file));
  const json::Value root = json::parse(read_file(file), file.string());
  Reference r;
  r.vocab_size = root.at("vocab_size").as_integer();
  for (const json::Value& c : root.at("cases").as_array()) {
    Case k;
    k.name = c.at("name").as_string();
    k.text = c.at("text").as_string();
    k.input = c.contains("bytes_hex") ? from_hex(c.at("bytes_hex").as_string()) : k.text;
    k.ids = to_ids(c.at("ids"));
    k.ids_plain = to_ids(c.at("ids_plain"));
    k.decoded = c.at("decoded").as_string();
    k.decoded_skip = c.at("decoded_skip").as_string();
    r.cases.push_back(std::move(k));
  }
  REQUIRE(r.cases.size() > 50);
  return cache.emplace(model, std::move(r)).first->second;
}

const Tokenizer& tokenizer(const fs::path& path) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto& t = cache[path.string()];
  if (!t) {
    INFO("missing " << path.string() << ": run tests/tokenizers/fetch_vocabularies.sh " << kData.string());
    REQUIRE(fs::exists(path));
    t = load(path);
  }
  return *t;
}

// Ids, decodings and round trips against the reference; streaming equals whole decoding.
void compare(const Tokenizer& t, const Reference& ref, bool compare_decoded_specials) {
  CHECK(t.vocab_size() == ref.vocab_size);
  int round_trips = 0;
  for (const Case& c : ref.cases) {
    INFO("case " << c.name << ": \"" << c.text << "\"");
    const Ids ids = t.encode(c.input);
    CHECK(ids == c.ids);
    CHECK(t.encode(c.input, false) == c.ids_plain);
    if (compare_decoded_specials) CHECK(t.decode(c.ids) == c.decoded);
    CHECK(t.decode(c.ids, true) == c.decoded_skip);
    if (c.decoded_skip == c.text) {  // where the reference round-trips, so do we
      CHECK(t.decode(ids, true) == c.text);  // for invalid UTF-8, the repaired text the reference read
      ++round_trips;
    }
    Detokenizer stream(t, true);
    std::string streamed;
    for (std::int32_t id : c.ids_plain) streamed += stream.push(id);
    streamed += stream.flush();
    CHECK(streamed == t.decode(c.ids_plain, true));
  }
  CHECK(round_trips > 0);
}

}  // namespace

TEST_CASE("GPT-2 tokenizer.json matches the reference") {
  const Tokenizer& t = tokenizer(kData / "models" / "gpt2");
  compare(t, reference("gpt2"), true);
  CHECK(t.bos() == 50256);
  CHECK(t.eos() == 50256);
  CHECK(t.encode("Hello world", false) == Ids{15496, 995});  // the ids every GPT-2 user knows
}

TEST_CASE("Llama-3 tokenizer.json matches the reference") {
  const Tokenizer& t = tokenizer(kData / "models" / "llama3");
  compare(t, reference("llama3"), true);
  CHECK(t.bos() == 128000);
  CHECK(t.token_to_id("<|eot_id|>") == 128009);
  CHECK(t.is_special(128009));
}

TEST_CASE("Mistral tokenizer.json matches the reference") {
  const Tokenizer& t = tokenizer(kData / "models" / "mistral" / "tokenizer.json");
  compare(t, reference("mistral"), true);
  CHECK(t.bos() == 1);
  CHECK(t.eos() == 2);
}

TEST_CASE("Mistral tokenizer.model through SentencePiece matches the reference") {
  const Tokenizer& t = tokenizer(kData / "models" / "mistral" / "tokenizer.model");
  REQUIRE(dynamic_cast<const SentencePieceTokenizer*>(&t) != nullptr);
  compare(t, reference("mistral"), true);
  CHECK(t.bos() == 1);
  CHECK(t.eos() == 2);
}

TEST_CASE("Llama-2 tokenizer.json matches the reference") {
  const Tokenizer& t = tokenizer(kData / "models" / "llama2" / "tokenizer.json");
  compare(t, reference("llama2"), true);
  CHECK(t.encode("Hello world") == Ids{1, 15043, 3186});
}

TEST_CASE("Llama-2 tokenizer.model through SentencePiece matches the reference") {
  const Tokenizer& t = tokenizer(kData / "models" / "llama2" / "tokenizer.model");
  REQUIRE(dynamic_cast<const SentencePieceTokenizer*>(&t) != nullptr);
  compare(t, reference("llama2"), true);
  CHECK(t.encode("Hello world") == Ids{1, 15043, 3186});
}

TEST_CASE("BERT tokenizer.json matches the reference") {
  const Tokenizer& t = tokenizer(kData / "models" / "bert" / "tokenizer.json");
  compare(t, reference("bert"), true);
  CHECK(t.encode("hello world") == Ids{101, 7592, 2088, 102});
}

TEST_CASE("BERT vocab.txt matches the reference") {
  const Tokenizer& t = tokenizer(kData / "models" / "bert" / "vocab.txt");
  compare(t, reference("bert"), true);
}
