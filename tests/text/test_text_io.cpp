// Text in, text out for the programs (examples/text_io.hpp): which codec a model directory gets
// (its tokenizer, bytes for byte-level vocabularies, or a reason), and the generation loop that
// streams decoded text: the streamed pieces are the decoding of the ids, ids stay decodable, EOS
// ends the text.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engram/io/hf.hpp"
#include "engram/nn/init.hpp"
#include "test_util.hpp"
#include "text_io.hpp"

using namespace engram;
using Ids = std::vector<std::int32_t>;

namespace {

#if ENGRAM_HAVE_TOKENIZERS
// A model directory: llama_tiny's config and weights (vocabulary 67), plus `tokenizer` as tokenizer.json.
void make_model_dir(const std::filesystem::path& dir, const std::string& tokenizer_fixture) {
  for (const char* f : {"config.json", "model.safetensors"}) std::filesystem::copy_file(test::fixture(std::string("llama_tiny/") + f), dir / f);
  std::filesystem::copy_file(test::fixture("tokenizers/" + tokenizer_fixture), dir / "tokenizer.json");
}
#endif

// Runs continue_text and returns the pieces it emitted, concatenated, with the ids.
std::pair<std::string, examples::Continuation> generate(const Decoder<float>& model, const examples::TextCodec& codec, const Ids& prompt,
                                                        Index n, SamplerOptions so) {
  auto state = model.make_state();
  Sampler sampler(so);
  std::string streamed;
  Index pieces = 0;
  auto c = examples::continue_text(
      model, state, model.prefill(prompt, state), n, sampler, codec,
      [&](std::string_view t) {
        CHECK_FALSE(t.empty());  // only new text is emitted
        streamed += t, ++pieces;
      },
      prompt);
  CHECK(pieces <= Index(c.ids.size()) + 1);
  return {streamed, c};
}

}  // namespace

TEST_CASE("TextCodec: bytes for byte-level vocabularies, a reason otherwise") {
  test::TempDir dir;
  std::string why;
  const auto bytes = examples::TextCodec::for_model(dir.path(), 261, why);
  REQUIRE(bytes.has_value());
  CHECK(bytes->is_bytes());
  CHECK(bytes->encode("Hi\xC3\xA9") == Ids{'H', 'i', 0xC3, 0xA9});
  CHECK(bytes->eos() == tasks::ByteTokenizer::eos);
  CHECK(examples::TextCodec::for_model(dir.path(), 256, why)->eos() == std::nullopt);
  CHECK_FALSE(examples::TextCodec::for_model(dir.path(), 67, why).has_value());
  CHECK(why.find("no tokenizer") != std::string::npos);
  CHECK(why.find("67") != std::string::npos);
  CHECK_THROWS_AS(examples::TextCodec::bytes(100), Error);
}

TEST_CASE("continue_text on a byte-level model: bytes streamed as chosen, specials never printed") {
  auto c = ModelConfig::llama(tasks::ByteTokenizer::vocab_size, 32, 1, 2, 1, 48);
  auto model = Decoder<float>::create(c);
  init_random(model, 3, 0.5);
  const auto codec = examples::TextCodec::bytes(c.vocab_size);
  const auto [text, out] = generate(model, codec, codec.encode("The "), 40, {.temperature = 1.0, .seed = 5});
  std::string expected;
  for (std::int32_t id : out.ids)
    if (id < 256) expected.push_back(char(id));
  CHECK(text == expected);
  CHECK(out.stopped_at_eos == (out.ids.back() == tasks::ByteTokenizer::eos));
  CHECK(std::count(out.ids.begin(), out.ids.end() - 1, tasks::ByteTokenizer::eos) == 0);
}

#if ENGRAM_HAVE_TOKENIZERS
TEST_CASE("TextCodec: the model directory's tokenizer, checked against the model's vocabulary") {
  test::TempDir dir;
  make_model_dir(dir.path(), "tiny_metaspace_bpe.json");  // Llama-2 style: <s> </s>, 25 ids
  std::string why;
  const auto codec = examples::TextCodec::for_model(dir.path(), 67, why);
  REQUIRE(codec.has_value());
  CHECK(codec->name() == "tokenizer.json");
  CHECK(codec->encode("hello world") == Ids{1, 17, 21});  // <s> ▁hello ▁world
  CHECK(codec->encode("hello world", false) == Ids{17, 21});
  CHECK(codec->decodable() == 25);
  CHECK(codec->eos() == 2);
  // The same tokenizer beside a model with fewer embedding rows is not its tokenizer.
  CHECK_FALSE(examples::TextCodec::for_model(dir.path(), 20, why).has_value());
  CHECK(why.find("more than the model's vocabulary of 20") != std::string::npos);
}

TEST_CASE("continue_text with a real tokenizer: streamed text == decode(ids), ids decodable, EOS ends the text") {
  test::TempDir dir;
  make_model_dir(dir.path(), "tiny_metaspace_bpe.json");
  const auto model = hf::load_decoder<float>(dir.path());
  std::string why;
  const auto codec = examples::TextCodec::for_model(dir.path(), model.config.vocab_size, why);
  REQUIRE(codec.has_value());
  const auto tok = tokenizers::load(dir.path());
  const Ids prompt = codec->encode("hello world");
  int ended = 0;
  for (std::uint64_t seed = 1; seed <= 6; ++seed) {
    INFO("seed " << seed);
    const auto [text, out] = generate(model, *codec, prompt, 60, {.temperature = 2.0, .seed = seed});
    REQUIRE_FALSE(out.ids.empty());
    for (std::int32_t id : out.ids) CHECK((id >= 0 && id < 25));  // never the model's ids past the tokenizer's
    const bool eos_last = out.ids.back() == 2;
    CHECK(out.stopped_at_eos == eos_last);
    CHECK((eos_last || out.ids.size() == 60));
    CHECK(std::count(out.ids.begin(), out.ids.end() - 1, 2) == 0);
    // The continuation's text: what the generated ids add to the prompt's decoding (its spaces included).
    Ids all = prompt;
    all.insert(all.end(), out.ids.begin(), out.ids.end() - (eos_last ? 1 : 0));
    const std::string before = tok->decode(prompt, true), after = tok->decode(all, true);
    REQUIRE(after.compare(0, before.size(), before) == 0);
    CHECK(text == after.substr(before.size()));
    ended += eos_last;
  }
  CHECK(ended > 0);  // some seed reached EOS within 60 tokens (p = 1/25 per token at this temperature)
  // Greedy is deterministic: the same text twice.
  CHECK(generate(model, *codec, prompt, 12, {}).first == generate(model, *codec, prompt, 12, {}).first);
}
#endif
