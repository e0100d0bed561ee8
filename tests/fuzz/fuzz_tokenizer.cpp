// libFuzzer target of the tokenizers component. The first byte picks what the rest is:
//   0: a tokenizer.json document; if it loads, it encodes a few texts and the input itself, decodes
//      the ids and streams them through a Detokenizer;
//   1: text through a Llama-3-style byte-level BPE (the Llama-3 Split regex, ByteLevel, ignore_merges,
//      added tokens): decode(encode(x)) must be x (U+FFFD-repaired when x is not UTF-8), and the
//      streamed text must equal decode(ids);
//   2: text through the Llama-2-style Metaspace BPE with byte fallback (the committed fixture),
//      3: text through WordPiece (vocab.txt fixture): encode, decode, stream;
//   4: the rest as little-endian int32 ids decoded by the byte-level tokenizer (out-of-range ids
//      must be an Error).
// Anything but engram::Error escaping, a crash, a leak or a broken round trip is a finding.
// Build with clang: cmake -DENGRAM_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ ..., then run
// ./tests/fuzz/fuzz_tokenizer -max_total_time=60 tests/fuzz/corpus_tokenizer
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "engram/tokenizers/tokenizers.hpp"

namespace {
using namespace engram;
using namespace engram::tokenizers;

[[noreturn]] void finding(const char* what, std::string_view input) {
  std::fprintf(stderr, "fuzz_tokenizer: %s for input of %zu bytes\n", what, input.size());
  std::abort();
}

// Byte-level BPE in the manner of Llama-3: ids 0..255 are the bytes (byte-level alphabet), then
// the merges of a few frequent English pairs, then two special tokens.
std::unique_ptr<HfTokenizer> llama3_style() {
  json::Value vocab = json::Value::object();
  const auto ch = [](unsigned char b) { return utf8::encode(byte_level::byte_to_char()[b]); };
  for (int b = 0; b < 256; ++b) vocab.set(ch(static_cast<unsigned char>(b)), b);
  const std::string G = ch(' ');  // "Ġ"
  const std::vector<std::pair<std::string, std::string>> merges = {
      {G, "t"}, {"h", "e"}, {G + "t", "he"}, {"i", "n"}, {G, "a"}, {"e", "r"}, {"o", "n"}, {G, "w"}, {"r", "e"}, {G, "s"},
      {"e", "d"}, {"in", "g"}, {G, "o"}, {"n", "d"}, {G + "a", "nd"}, {"o", "u"}, {G, "b"}, {"1", "2"}, {ch('\n'), ch('\n')}, {G, G}};
  json::Value merge_list = json::Value::array();
  std::int64_t next = 256;
  for (const auto& [a, b] : merges) {
    if (!vocab.find(a + b)) vocab.set(a + b, next++);
    merge_list.mutable_array().push_back(json::Value::array({json::Value(a), json::Value(b)}));
  }
  const std::string regex =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  json::Value root = json::Value::object();
  json::Value added = json::Value::array();
  for (const char* t : {"<|begin_of_text|>", "<|end_of_text|>"}) {
    json::Value a = json::Value::object();
    a.set("id", next++), a.set("content", std::string(t)), a.set("special", true), a.set("normalized", false);
    added.mutable_array().push_back(a);
  }
  root.set("added_tokens", added);
  root.set("normalizer", json::Value());
  root.set("pre_tokenizer", json::parse(R"({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": )" +
                                            json::dump(json::Value(regex)) +
                                            R"(}, "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]})",
                                        "pre_tokenizer"));
  root.set("post_processor", json::Value());
  root.set("decoder", json::parse(R"({"type": "ByteLevel"})", "decoder"));
  json::Value model = json::Value::object();
  model.set("type", std::string("BPE")), model.set("ignore_merges", true), model.set("vocab", vocab), model.set("merges", merge_list);
  root.set("model", model);
  return HfTokenizer::from_json(root);
}

struct Tokenizers {
  std::filesystem::path fixtures = std::filesystem::path(ENGRAM_FIXTURES_DIR) / "tokenizers";
  std::unique_ptr<HfTokenizer> byte_level = llama3_style();
  std::unique_ptr<Tokenizer> metaspace = load(fixtures / "tiny_metaspace_bpe.json");
  std::unique_ptr<Tokenizer> wordpiece = load(fixtures / "wordpiece_vocab.txt");
};

const Tokenizers& tokenizers_() {
  static const Tokenizers t;
  return t;
}

// Streams `ids` through a Detokenizer; returns the text it emitted.
std::string streamed(const Tokenizer& t, const std::vector<std::int32_t>& ids, bool skip_special) {
  Detokenizer d(t, skip_special);
  std::string out;
  for (std::int32_t id : ids) out += d.push(id);
  return out + d.flush();
}

// encode, decode, stream; the decoder's own rules decide the text, so only consistency is checked.
void exercise(const Tokenizer& t, std::string_view text) {
  const std::vector<std::int32_t> ids = t.encode(text);
  for (std::int32_t id : ids)
    if (id < 0 || id >= t.vocab_size()) finding("encode gave an id outside the vocabulary", text);
  (void)t.decode(ids, true);
  const std::string all = t.decode(ids);
  try {
    if (streamed(t, ids, false) != all) finding("streamed text differs from decode(ids)", text);
  } catch (const Error&) {  // a decoder that is not prefix-stable says so
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const Tokenizers& tk = tokenizers_();
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    switch (data[0] % 5) {
      case 0: {
        const auto t = HfTokenizer::from_json(json::parse(rest, "tokenizer.json"));
        for (std::string_view text : {std::string_view("Hello world, it's 2024!"), std::string_view(" \n\t  x"), std::string_view("h\xC3\xA9llo \xF0\x9F\x98\x80")})
          exercise(*t, text);
        exercise(*t, rest.substr(0, 256));
        std::vector<std::int32_t> ids;
        for (std::size_t i = 0; i < std::min<std::size_t>(rest.size(), 64); ++i) ids.push_back(std::int32_t(static_cast<unsigned char>(rest[i])) % std::max<std::int32_t>(t->vocab_size(), 1));
        if (t->vocab_size() > 0) (void)t->decode(ids);
        break;
      }
      case 1: {
        const HfTokenizer& t = *tk.byte_level;
        const std::vector<std::int32_t> ids = t.encode(rest, false);
        const std::string expected = utf8::is_valid(rest) ? std::string(rest) : utf8::repair(rest);
        if (t.decode(ids) != expected) finding("byte-level BPE: decode(encode(x)) != x", rest);
        if (streamed(t, ids, false) != expected) finding("byte-level BPE: streamed text != x", rest);
        break;
      }
      case 2: exercise(*tk.metaspace, rest); break;
      case 3: exercise(*tk.wordpiece, rest); break;
      case 4: {
        std::vector<std::int32_t> ids(rest.size() / 4);
        std::memcpy(ids.data(), rest.data(), ids.size() * 4);
        bool in_range = true;
        for (std::int32_t id : ids) in_range &= id >= 0 && id < tk.byte_level->vocab_size();
        try {
          (void)tk.byte_level->decode(ids);
          if (!in_range) finding("decode accepted an id outside the vocabulary", rest);
        } catch (const Error&) {
          if (in_range) finding("decode refused ids inside the vocabulary", rest);
        }
        break;
      }
    }
  } catch (const Error&) {
  }
  return 0;
}
