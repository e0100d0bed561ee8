// SentencePiece tokenizer.model (Llama-2, Mistral, the TTT checkpoints) through the official
// library, with control and unknown pieces in the text matched first, as transformers does.
#pragma once

#include <sentencepiece_processor.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engram/io/json.hpp"
#include "engram/tokenizers/added_tokens.hpp"
#include "engram/tokenizers/hf_tokenizer.hpp"
#include "engram/tokenizers/tokenizer.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers {

/// A tokenizer.model. encode(text, true) adds BOS (and EOS) as tokenizer_config.json's
/// add_bos_token / add_eos_token say, defaulting to Llama's BOS only. Control pieces (<s>, </s>)
/// and <unk> written in the text become their ids; the text between them is encoded piece by
/// piece, each with SentencePiece's dummy prefix (transformers' legacy behaviour, which matches
/// the models' tokenizer.json).
class SentencePieceTokenizer final : public Tokenizer {
 public:
  static std::unique_ptr<SentencePieceTokenizer> from_file(const std::filesystem::path& path) {
    auto t = std::unique_ptr<SentencePieceTokenizer>(new SentencePieceTokenizer());
    const auto status = t->sp_.Load(path.string());
    check(status.ok(), "tokenizers::SentencePieceTokenizer", "cannot load ", path.string(), ": ", status.ToString());
    std::vector<AddedToken> specials;
    for (int id = 0; id < t->sp_.GetPieceSize(); ++id)
      if (t->sp_.IsControl(id) || t->sp_.IsUnknown(id)) specials.push_back({id, t->sp_.IdToPiece(id), false, false, false, false, true});
    t->specials_ = AddedVocabulary(std::move(specials), nullptr);
    const auto config_path = path.parent_path() / "tokenizer_config.json";
    if (std::filesystem::exists(config_path)) {
      const json::Value config = json::parse(detail::read_text_file(config_path, "tokenizers::SentencePieceTokenizer: "), config_path.string());
      t->add_bos_ = detail::get_bool(config, "add_bos_token", true, "tokenizer_config");
      t->add_eos_ = detail::get_bool(config, "add_eos_token", false, "tokenizer_config");
    }
    return t;
  }

  std::vector<std::int32_t> encode(std::string_view text, bool add_special = true) const override {
    std::string repaired;
    if (!utf8::is_valid(text)) text = repaired = utf8::repair(text);
    std::vector<std::int32_t> ids;
    if (add_special && add_bos_ && sp_.bos_id() >= 0) ids.push_back(sp_.bos_id());
    std::vector<Segment> segments;
    specials_.split(text, false, segments);
    std::vector<int> piece_ids;
    for (const Segment& s : segments) {
      if (s.token >= 0) {
        ids.push_back(specials_.tokens()[std::size_t(s.token)].id);
        continue;
      }
      if (s.end == s.begin) continue;
      piece_ids.clear();
      const auto status = sp_.Encode(text.substr(s.begin, s.end - s.begin), &piece_ids);
      check(status.ok(), "tokenizers::SentencePieceTokenizer::encode", status.ToString());
      ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
    }
    if (add_special && add_eos_ && sp_.eos_id() >= 0) ids.push_back(sp_.eos_id());
    return ids;
  }

  /// SentencePiece's decoding; control pieces and <unk> appear as their text unless skipped, and a run
  /// after one keeps the space its first piece starts with (as the tokenizer.json decoders do).
  std::string decode(std::span<const std::int32_t> ids, bool skip_special = false) const override {
    std::string out;
    std::vector<int> run;
    bool emitted = false;
    const auto flush = [&] {
      if (run.empty()) return;
      std::string text;
      const auto status = sp_.Decode(run, &text);
      check(status.ok(), "tokenizers::SentencePieceTokenizer::decode", status.ToString());
      if (emitted && sp_.IdToPiece(run.front()).starts_with("\xE2\x96\x81")) out += ' ';
      out += text;
      emitted = true;
      run.clear();
    };
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const std::int32_t id = ids[i];
      check(id >= 0 && id < sp_.GetPieceSize(), "tokenizers::SentencePieceTokenizer::decode", "id ", id, " at index ", i, " outside [0, ",
            sp_.GetPieceSize(), ")");
      if (is_special(id)) {
        if (skip_special) continue;
        flush();
        out += sp_.IdToPiece(id);
        emitted = true;
        continue;
      }
      run.push_back(id);
    }
    flush();
    return out;
  }

  Index vocab_size() const override { return sp_.GetPieceSize(); }
  std::string id_to_token(std::int32_t id) const override {
    check(id >= 0 && id < sp_.GetPieceSize(), "tokenizers::SentencePieceTokenizer::id_to_token", "id ", id, " outside [0, ", sp_.GetPieceSize(), ")");
    return sp_.IdToPiece(id);
  }
  std::optional<std::int32_t> find_token(std::string_view token) const override {
    const int id = sp_.PieceToId(std::string(token));
    if (id < 0 || sp_.IdToPiece(id) != token) return std::nullopt;  // PieceToId answers unk for unknown pieces
    return id;
  }
  /// Control pieces and <unk> (special in the models' tokenizer.json too).
  bool is_special(std::int32_t id) const override {
    return id >= 0 && id < sp_.GetPieceSize() && (sp_.IsControl(id) || sp_.IsUnknown(id));
  }
  std::optional<std::int32_t> bos() const override { return sp_.bos_id() >= 0 ? std::optional<std::int32_t>(sp_.bos_id()) : std::nullopt; }
  std::optional<std::int32_t> eos() const override { return sp_.eos_id() >= 0 ? std::optional<std::int32_t>(sp_.eos_id()) : std::nullopt; }

  /// The library's processor, for what this interface does not cover (sampling, n-best).
  const sentencepiece::SentencePieceProcessor& processor() const { return sp_; }

 private:
  SentencePieceTokenizer() = default;
  sentencepiece::SentencePieceProcessor sp_;
  AddedVocabulary specials_;
  bool add_bos_ = true, add_eos_ = false;
};

}  // namespace tokenizers
ENGRAM_NAMESPACE_END
