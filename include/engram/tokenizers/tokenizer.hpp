// The one tokenizer interface (text <-> ids) every format implements, and the incremental decoder
// that turns a stream of generated ids into newly completed UTF-8 text.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engram/core/error.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers {

/// Text to ids and back. Implementations are immutable after loading: every method is const and
/// safe to call from several threads at once.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  /// Ids of `text` (UTF-8; invalid sequences are read as U+FFFD, one per maximal invalid subpart).
  /// `add_special` applies the format's template (BOS, [CLS] ... [SEP], ...).
  virtual std::vector<std::int32_t> encode(std::string_view text, bool add_special = true) const = 0;

  /// Text of `ids`; `skip_special` drops special tokens. Throws Error for an id that is not in the
  /// vocabulary, naming it and its position.
  virtual std::string decode(std::span<const std::int32_t> ids, bool skip_special = false) const = 0;

  /// One more than the largest id: the rows a model's embedding needs.
  virtual Index vocab_size() const = 0;

  /// The token of `id`, as stored in the vocabulary. Throws Error when there is none.
  virtual std::string id_to_token(std::int32_t id) const = 0;
  /// The id of a vocabulary token or added token, if any.
  virtual std::optional<std::int32_t> find_token(std::string_view token) const = 0;
  /// True for special tokens (skipped by decode(ids, true)).
  virtual bool is_special(std::int32_t id) const = 0;

  virtual std::optional<std::int32_t> bos() const = 0;
  virtual std::optional<std::int32_t> eos() const = 0;

  /// The id of `token`; throws Error naming it when the vocabulary lacks it.
  std::int32_t token_to_id(std::string_view token) const {
    const auto id = find_token(token);
    check(id.has_value(), "tokenizers::Tokenizer::token_to_id", "no token \"", token, "\" in the vocabulary");
    return *id;
  }
};

/// Streaming decoder for generation: feed ids one at a time, get back the text they complete.
/// Text that is not final yet (an incomplete UTF-8 sequence, which decodes as U+FFFD) is held back
/// until a later id completes it. This is the reference's DecodeStream: decode the ids emitted
/// last (context for spacing rules) plus the new ones, and emit what grew past the context's text.
/// Everything returned plus flush() equals decode(all ids) for prefix-stable decoders (byte-level
/// BPE, SentencePiece, Metaspace and WordPiece all are); Error if a decoder is not.
class Detokenizer {
 public:
  explicit Detokenizer(const Tokenizer& tokenizer, bool skip_special = false) : tok_(&tokenizer), skip_special_(skip_special) {}

  /// The newly completed text after `id` (empty while a character is incomplete).
  std::string push(std::int32_t id) {
    window_.push_back(id);
    const std::string text = tok_->decode(window_, skip_special_);
    if (text.size() <= context_text_.size() || text.ends_with("\xEF\xBF\xBD")) return {};
    check(text.compare(0, context_text_.size(), context_text_) == 0, "tokenizers::Detokenizer",
          "decoding is not prefix-stable: \"", context_text_, "\" then \"", text, "\"");
    std::string fresh = text.substr(context_text_.size());
    // The ids just emitted become the context of the next step; older ones are dropped.
    window_.erase(window_.begin(), window_.begin() + std::ptrdiff_t(context_size_));
    context_size_ = window_.size();
    context_text_ = tok_->decode(window_, skip_special_);
    return fresh;
  }

  /// Whatever is still held back (with U+FFFD for an incomplete sequence); then starts afresh.
  std::string flush() {
    const std::string text = tok_->decode(window_, skip_special_);
    std::string rest = text.size() > context_text_.size() ? text.substr(context_text_.size()) : std::string();
    window_.clear();
    context_text_.clear();
    context_size_ = 0;
    return rest;
  }

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::vector<std::int32_t> window_;  // context ids, then ids not emitted yet
  std::size_t context_size_ = 0;
  std::string context_text_;          // decode(window_[0, context_size_))
};

}  // namespace tokenizers
ENGRAM_NAMESPACE_END
