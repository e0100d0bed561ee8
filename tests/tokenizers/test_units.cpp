// Unit tests of the tokenizer pieces on hand-made vocabularies: UTF-8 repair, the byte-level
// alphabet, BPE merges with byte fallback and unk fusion, added tokens (lstrip, rstrip,
// single_word), decoders, the streaming Detokenizer, and the Errors for bad tokenizer.json files.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "engram/tokenizers/tokenizers.hpp"

using namespace engram;
using namespace engram::tokenizers;
using Ids = std::vector<std::int32_t>;

namespace {

const std::filesystem::path kFixtures = std::filesystem::path(ENGRAM_FIXTURES_DIR) / "tokenizers";

std::unique_ptr<HfTokenizer> from_text(const std::string& text) { return HfTokenizer::from_json(json::parse(text, "test tokenizer.json")); }

// A GPT-2-style byte-level BPE: ids 0..255 are the bytes (in the byte-level alphabet), four
// merges, an added token, and "hello" (261), which no merge produces.
std::string tiny_byte_level_json(const std::string& extra_model_fields = "") {
  json::Value vocab = json::Value::object();
  for (int b = 0; b < 256; ++b) vocab.set(utf8::encode(byte_level::byte_to_char()[std::size_t(b)]), b);
  vocab.set("he", 256), vocab.set("ll", 257), vocab.set("hell", 258), vocab.set("\xC4\xA0w", 259);  // "Ġw"
  vocab.set("hello", 261);
  std::string s = R"({"added_tokens": [{"id": 260, "content": "<|endoftext|>", "special": true, "normalized": false}],
    "normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
    "post_processor": {"type": "ByteLevel"}, "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", )" + extra_model_fields + R"("merges": [["h", "e"], ["l", "l"], ["he", "ll"], ["\u0120", "w"]], "vocab": )" +
                  json::dump(vocab) + "}}";
  return s;
}

// Expects an Error whose message contains `needle`.
template <class F>
void require_error(F&& f, const std::string& needle) {
  try {
    f();
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
    return;
  }
  FAIL("expected an engram::Error containing \"" << needle << "\"");
}

// One text with the ids, decoding and skip-special decoding the reference gives.
struct RefCase {
  std::string text;
  Ids ids;
  std::string decoded, decoded_skip;
};

void check_cases(const Tokenizer& t, std::initializer_list<RefCase> cases) {
  for (const RefCase& c : cases) {
    INFO(c.text);
    CHECK(t.encode(c.text) == c.ids);
    CHECK(t.decode(c.ids) == c.decoded);
    CHECK(t.decode(c.ids, true) == c.decoded_skip);
  }
}

}  // namespace

TEST_CASE("utf8: decoding, validation and repair with maximal subparts") {
  CHECK(utf8::is_valid("h\xC3\xA9llo \xF0\x9F\x98\x80"));
  CHECK_FALSE(utf8::is_valid("\xC0\x80"));          // overlong
  CHECK_FALSE(utf8::is_valid("\xED\xA0\x80"));      // surrogate
  CHECK_FALSE(utf8::is_valid("\xF4\x90\x80\x80"));  // above U+10FFFF
  CHECK_FALSE(utf8::is_valid("ab\xE2\x82"));        // truncated
  // One U+FFFD per maximal subpart, as TextDecoder: "\xE2\x82" is one, "\xC0\x80" two, "\xED\xA0\x80" three.
  CHECK(utf8::repair("a\xE2\x82" "b") == "a\xEF\xBF\xBD" "b");
  CHECK(utf8::repair("\xC0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(utf8::repair("\xED\xA0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(utf8::repair("\xF0\x9F\x98") == "\xEF\xBF\xBD");
  CHECK(utf8::length("h\xC3\xA9") == 2);
}

TEST_CASE("byte_level: the GPT-2 alphabet is a bijection on bytes") {
  std::string all;
  for (int b = 0; b < 256; ++b) all += char(b);
  const std::string mapped = byte_level::encode(all);
  CHECK(utf8::length(mapped) == 256);
  CHECK(byte_level::decode(mapped).value() == all);
  CHECK(byte_level::byte_to_char()[' '] == 0x120);  // 'Ġ'
  CHECK(byte_level::byte_to_char()['A'] == 'A');
  CHECK_FALSE(byte_level::decode("\xE2\x98\x83").has_value());  // ☃ is outside the alphabet
}

TEST_CASE("regex: Oniguruma's \\s is Unicode White_Space, U+0085 included") {
  const Regex re("\\s+|[^\\s]+");
  std::vector<std::string> parts;
  const std::string text = "a\xC2\x85" "b\xE3\x80\x80" "c";  // NEL and ideographic space
  re.for_each_match(text, [&](std::size_t s, std::size_t e) { parts.push_back(text.substr(s, e - s)); });
  CHECK(parts == std::vector<std::string>{"a", "\xC2\x85", "b", "\xE3\x80\x80", "c"});
  require_error([] { Regex("[^\\S]"); }, "\\S inside a character class");
  require_error([] { Regex("(unclosed"); }, "cannot compile pattern");
}

TEST_CASE("byte-level BPE: merges by rank, the GPT-2 split, raw bytes, invalid UTF-8") {
  const auto t = from_text(tiny_byte_level_json());
  // "hello" -> h e l l o -> he ll -> hell o;  " world" -> Ġw o r l d
  CHECK(t->encode("hello world") == Ids{258, 'o', 259, 'o', 'r', 'l', 'd'});
  CHECK(t->decode(t->encode("hello world")) == "hello world");
  CHECK(t->encode("hello<|endoftext|>") == Ids{258, 'o', 260});
  CHECK(t->decode(Ids{258, 260}, true) == "hell");
  CHECK(t->decode(Ids{258, 260}, false) == "hell<|endoftext|>");
  // Invalid UTF-8 is read as U+FFFD (EF BF BD), one per maximal subpart.
  CHECK(t->encode("a\xFF" "b") == Ids{'a', 0xEF, 0xBF, 0xBD, 'b'});
  // A lone lead byte decodes lossily.
  CHECK(t->decode(Ids{0xE2, 0x82}) == "\xEF\xBF\xBD");
  CHECK(t->vocab_size() == 262);
  CHECK(t->id_to_token(259) == "\xC4\xA0w");
  CHECK(t->token_to_id("\xC4\xA0w") == 259);
  CHECK(t->token_to_id("<|endoftext|>") == 260);
  CHECK(t->is_special(260));
  CHECK_FALSE(t->is_special(259));
  require_error([&] { t->token_to_id("missing"); }, "no token \"missing\"");
}

TEST_CASE("byte-level BPE: ignore_merges takes whole words from the vocabulary") {
  CHECK(from_text(tiny_byte_level_json())->encode("hello") == Ids{258, 'o'});  // merges cannot reach "hello"
  const auto t = from_text(tiny_byte_level_json(R"("ignore_merges": true, )"));
  CHECK(t->encode("hello") == Ids{261});                 // ... but the word is in the vocabulary
  CHECK(t->encode("hello hello") == Ids{261, ' ', 258, 'o'});  // " hello" (with its space) is not a vocabulary word
  CHECK(t->encode("hellos") == Ids{258, 'o', 's'});      // not in the vocabulary: merges apply
}

TEST_CASE("Metaspace-style BPE: byte fallback, fused unk, template, added tokens (ids from the reference)") {
  // Expected ids and texts computed by huggingface/tokenizers 0.22 on this fixture.
  const auto t = HfTokenizer::from_file(kFixtures / "tiny_metaspace_bpe.json");
  check_cases(*t, {
      {"hello world", {1, 17, 21}, "<s> hello world", "hello world"},
      {"\xC3\xA9", {1, 5, 3, 4}, "<s> \xC3\xA9", "\xC3\xA9"},
      {"hello \xE2\x98\x83", {1, 17, 5, 0}, "<s> hello <unk>", "hello "},
      {"\xE2\x98\x83\xE2\x98\x83", {1, 5, 0}, "<s> <unk>", ""},
      {"hello  [X]  world", {1, 17, 23, 21}, "<s> hello[X] world", "hello[X] world"},  // lstrip + rstrip
      {"ok go", {1, 24, 5, 5, 0, 9}, "<s>ok  <unk>o", "ok  o"},                         // single_word matches
      {"book", {1, 5, 0, 9, 9, 0}, "<s> <unk>oo<unk>", "oo"},                           // ... but not inside a word
      {"", {1}, "<s>", ""},
      {"hello</s>world", {1, 17, 2, 21}, "<s> hello</s> world", "hello world"},
      {" hello", {1, 5, 17}, "<s>  hello", " hello"},
  });
  CHECK(t->encode("hello world", false) == Ids{17, 21});
  CHECK(t->bos() == 1);
  CHECK(t->eos() == 2);
}

TEST_CASE("WordPiece: vocab.txt, greedy longest match, unk for unmatchable words") {
  const auto t = load(kFixtures / "wordpiece_vocab.txt");
  // [PAD]0 [UNK]1 [CLS]2 [SEP]3 [MASK]4 hello5 world6 un7 ##aff8 ##able9 ##ab10 !11 ,12 ##s13
  CHECK(t->encode("Hello, unaffable worlds!") == Ids{2, 5, 12, 7, 8, 9, 6, 13, 11, 3});
  CHECK(t->encode("xyz hello", false) == Ids{1, 5});
  CHECK(t->decode(t->encode("Hello, unaffable worlds!"), true) == "hello, unaffable worlds!");
  CHECK(t->decode(Ids{2, 5, 3}) == "[CLS] hello [SEP]");
  CHECK(t->bos() == 2);
  CHECK(t->eos() == 3);
}

TEST_CASE("Detokenizer: streams text and holds back incomplete UTF-8") {
  const auto t = from_text(tiny_byte_level_json());
  Detokenizer d(*t);
  CHECK(d.push(258) == "hell");
  CHECK(d.push(0xE2).empty());  // "€" is E2 82 AC
  CHECK(d.push(0x82).empty());
  CHECK(d.push(0xAC) == "\xE2\x82\xAC");
  CHECK(d.push(259) == " w");
  CHECK(d.push(0xF0).empty());
  CHECK(d.flush() == "\xEF\xBF\xBD");
  CHECK(d.push('a') == "a");
}

TEST_CASE("tokenizer.json errors name the field and value") {
  const std::string ok = tiny_byte_level_json();
  require_error([] { from_text(R"({"model": {"type": "Foo", "vocab": {}}})"); }, "model.type \"Foo\"");
  require_error([] { from_text(R"({"model": {"type": "Unigram", "vocab": []}})"); }, "Unigram");
  require_error([] { from_text(R"({"pre_tokenizer": {"type": "Foo"}, "model": {"type": "BPE", "vocab": {}, "merges": []}})"); },
                "pre_tokenizer.type \"Foo\"");
  require_error([] { from_text(R"({"normalizer": {"type": "Precompiled", "precompiled_charsmap": ""}, "model": {"type": "BPE", "vocab": {}, "merges": []}})"); },
                "normalizer.type \"Precompiled\"");
  require_error([] { from_text(R"({"decoder": {"type": "CTC"}, "model": {"type": "BPE", "vocab": {}, "merges": []}})"); }, "decoder.type \"CTC\"");
  require_error([] { from_text(R"({"post_processor": {"type": "Foo"}, "model": {"type": "BPE", "vocab": {}, "merges": []}})"); },
                "post_processor.type \"Foo\"");
  require_error([] { from_text(R"({"model": {"type": "BPE", "vocab": {"a": 0}}})"); }, "\"merges\"");
  require_error([] { from_text(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})"); }, "merges[0] \"a b\"");
  require_error([] { from_text(R"({"model": {"type": "BPE", "vocab": {"a": -3}, "merges": []}})"); }, "vocab[\"a\"]");
  require_error([] { from_text(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "unk_token": "<unk>"}})"); }, "unk_token \"<unk>\"");
  require_error([] { from_text(R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Sideways"}, "model": {"type": "BPE", "vocab": {}, "merges": []}})"); },
                "behavior \"Sideways\"");
  require_error([] { from_text(R"({"model": {"type": "BPE", "vocab": {}, "merges": []},)"); }, "invalid JSON");
  require_error([] { from_text("[]"); }, "top level");
  require_error([] { from_text("{}"); }, "\"model\"");
  const auto t = from_text(ok);
  require_error([&] { t->decode(Ids{5, 999}); }, "id 999 at index 1 outside [0, 262)");
  require_error([&] { t->decode(Ids{-1}); }, "id -1 at index 0");
  require_error([] { load("/nonexistent/tokenizer"); }, "does not exist");
  require_error([] { load(std::filesystem::path(ENGRAM_FIXTURES_DIR) / "tokenizers"); }, "no tokenizer.json, tokenizer.model or vocab.txt");
}

TEST_CASE("byte-level BPE: scan (short words) and heap (long words) merging agree with a naive BPE") {
  const auto t = from_text(tiny_byte_level_json());
  // The obvious algorithm: repeatedly merge the leftmost occurrence of the lowest-ranked pair.
  const std::vector<std::pair<std::pair<int, int>, int>> merges = {{{'h', 'e'}, 256}, {{'l', 'l'}, 257}, {{256, 257}, 258}, {{' ', 'w'}, 259}};
  const auto naive = [&](const std::string& word) {
    Ids s(word.begin(), word.end());
    while (true) {
      std::size_t best_rank = merges.size(), best_pos = 0;
      for (std::size_t i = 0; i + 1 < s.size(); ++i)
        for (std::size_t r = 0; r < best_rank; ++r)
          if (s[i] == merges[r].first.first && s[i + 1] == merges[r].first.second) best_rank = r, best_pos = i;
      if (best_rank == merges.size()) return s;
      s[best_pos] = merges[best_rank].second;
      s.erase(s.begin() + std::ptrdiff_t(best_pos) + 1);
    }
  };
  std::uint64_t seed = 42;
  for (int trial = 0; trial < 300; ++trial) {
    std::string word;
    const int length = 1 + int((seed = seed * 6364136223846793005ull + 1442695040888963407ull) >> 58);  // 1..64 letters
    for (int k = 0; k < length; ++k) word += "hell"[(seed = seed * 6364136223846793005ull + 1442695040888963407ull) >> 62];
    INFO(word);
    CHECK(t->encode(word) == naive(word));  // one pre-token: letters only
  }
}

TEST_CASE("Metaspace pre-tokenizer and decoder (prepend_scheme first), Sequence post-processor (ids from the reference)") {
  // Expected ids and texts computed by huggingface/tokenizers 0.22 on this fixture.
  const auto t = HfTokenizer::from_file(kFixtures / "tiny_metaspace_pretokenizer.json");
  check_cases(*t, {
      {"hello world", {1, 17, 21}, "<s> hello world", "hello world"},
      {"hello  world", {1, 17, 5, 21}, "<s> hello  world", "hello  world"},
      {" hello", {1, 17}, "<s> hello", "hello"},
      {"hello</s>world", {1, 17, 2, 10, 18, 22}, "<s> hello</s>world", "helloworld"},  // "first": no ▁ after an added token
      {"hello</s> world", {1, 17, 2, 21}, "<s> hello</s> world", "hello world"},
      {"\xC3\xA9 hello", {1, 5, 3, 4, 17}, "<s> <0xC3><0xA9> hello", "<0xC3><0xA9> hello"},  // no ByteFallback decoder here
      {"ok hello", {1, 24, 17}, "<s>ok hello", "ok hello"},
  });
}

TEST_CASE("one tokenizer serves several threads at once") {
  const auto t = HfTokenizer::from_file(kFixtures / "tiny_metaspace_bpe.json");
  const std::string texts[2] = {"hello world hello  [X]  world ok", "\xC3\xA9 book hello</s>world \xE2\x98\x83"};
  const Ids expected[2] = {t->encode(texts[0]), t->encode(texts[1])};
  bool same[2] = {true, true};
  std::thread workers[2];
  for (int w = 0; w < 2; ++w)
    workers[w] = std::thread([&, w] {
      for (int i = 0; i < 300; ++i) same[w] = same[w] && t->encode(texts[w]) == expected[w] && t->decode(expected[w], true).size() > 0;
    });
  for (auto& w : workers) w.join();
  CHECK(same[0]);
  CHECK(same[1]);
}
