// Consumer check of the tokenizers component: an installed engram::tokenizers compiles, links
// PCRE2, ICU and SentencePiece, and round-trips text through a model directory's tokenizer.
#include <cstdio>
#include <string>

#include <engram/tokenizers/tokenizers.hpp>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer_tokenizers MODEL_DIR\n");
    return 2;
  }
  try {
    const auto tok = engram::tokenizers::load(argv[1]);
    const std::string text = "Hello world! Caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC";
    const auto ids = tok->encode(text, false);
    engram::tokenizers::Detokenizer stream(*tok);
    std::string streamed;
    for (auto id : ids) streamed += stream.push(id);
    streamed += stream.flush();
    const bool ok = !ids.empty() && tok->decode(ids) == text && streamed == text;
    std::printf("engram tokenizers consumer: %zu ids, vocabulary %td: %s\n", ids.size(), tok->vocab_size(), ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
  } catch (const engram::Error& e) {
    std::fprintf(stderr, "consumer_tokenizers: %s\n", e.what());
    return 1;
  }
}
