// load(): the tokenizer of a model directory or file (tokenizer.json, tokenizer.model, vocab.txt).
#pragma once

#include <filesystem>
#include <memory>

#include "engram/tokenizers/hf_tokenizer.hpp"
#include "engram/tokenizers/sentencepiece.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers {

/// Loads `dir_or_file`: a file by its name (*.json: tokenizer.json; *.model: SentencePiece;
/// *.txt: WordPiece vocab.txt), or a directory's tokenizer.json, else tokenizer.model, else
/// vocab.txt. Throws Error naming the path when there is none or it cannot be read.
inline std::unique_ptr<Tokenizer> load(const std::filesystem::path& dir_or_file) {
  namespace fs = std::filesystem;
  check(fs::exists(dir_or_file), "tokenizers::load", dir_or_file.string(), " does not exist");
  if (fs::is_directory(dir_or_file)) {
    for (const char* name : {"tokenizer.json", "tokenizer.model", "vocab.txt"})
      if (fs::exists(dir_or_file / name)) return load(dir_or_file / name);
    fail("tokenizers::load", dir_or_file.string(), " has no tokenizer.json, tokenizer.model or vocab.txt");
  }
  const auto ext = dir_or_file.extension().string();
  if (ext == ".json") return HfTokenizer::from_file(dir_or_file);
  if (ext == ".model") return SentencePieceTokenizer::from_file(dir_or_file);
  if (ext == ".txt") return HfTokenizer::from_wordpiece_vocab(dir_or_file);
  fail("tokenizers::load", dir_or_file.string(), ": unknown tokenizer file type (expected .json, .model or .txt)");
}

}  // namespace tokenizers
ENGRAM_NAMESPACE_END
