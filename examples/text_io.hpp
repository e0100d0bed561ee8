// Text in and out for the programs: a model directory's own tokenizer (the optional tokenizers
// component) or, for byte-level models, engram's byte tokenizer, behind one codec; and the
// generation loop that streams decoded text as each token is chosen.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <engram/nn/decoder.hpp>
#include <engram/nn/sampling.hpp>
#include <engram/tasks/tokenizer.hpp>

#if ENGRAM_HAVE_TOKENIZERS  // defined by the engram::tokenizers target
#include <engram/tokenizers/tokenizers.hpp>
#endif

namespace examples {

using namespace engram;

/// Whether the program was built with the tokenizers component.
#if ENGRAM_HAVE_TOKENIZERS
inline constexpr bool kHaveTokenizers = true;
#else
inline constexpr bool kHaveTokenizers = false;
#endif

/// Names of the tokenizer files a model directory may hold, in the order tokenizers::load tries them.
inline constexpr const char* kTokenizerFiles[] = {"tokenizer.json", "tokenizer.model", "vocab.txt"};

/// Text <-> token ids of one model: its tokenizer, or bytes (ids 0..255, engram's byte tokenizer).
class TextCodec {
 public:
  /// The codec of the model in `dir` whose embedding has `model_vocab` rows: the tokenizer in the
  /// directory (tokenizer.json, tokenizer.model or vocab.txt), else bytes when the vocabulary is
  /// byte-level (256 rows, or 261: tasks::ByteTokenizer with its specials). When neither applies
  /// (no tokenizer and another vocabulary, a tokenizer without the tokenizers component, a tokenizer
  /// larger than the model's vocabulary) returns nothing and says why in `why`.
  static std::optional<TextCodec> for_model(const std::filesystem::path& dir, Index model_vocab, std::string& why) {
    std::string found;
    for (const char* name : kTokenizerFiles)
      if (found.empty() && std::filesystem::is_regular_file(dir / name)) found = name;
    const bool byte_vocab = model_vocab == 256 || model_vocab == tasks::ByteTokenizer::vocab_size;
#if ENGRAM_HAVE_TOKENIZERS
    if (!found.empty()) {
      TextCodec c;
      c.tokenizer_ = std::shared_ptr<const tokenizers::Tokenizer>(tokenizers::load(dir / found));
      c.model_vocab_ = model_vocab;
      c.name_ = found;
      if (c.tokenizer_->vocab_size() > model_vocab) {
        why = (dir / found).string() + " has " + std::to_string(c.tokenizer_->vocab_size()) +
              " tokens, more than the model's vocabulary of " + std::to_string(model_vocab) + ": it is not this model's tokenizer";
        return std::nullopt;
      }
      return c;
    }
#endif
    if (byte_vocab) return bytes(model_vocab);
    if (!found.empty())
      why = dir.string() + " has a " + found + " but engram was built without the tokenizers component "
            "(configure with -DENGRAM_TOKENIZERS=ON; it needs libpcre2-dev, libicu-dev and libsentencepiece-dev)";
    else
      why = dir.string() + " has no tokenizer (tokenizer.json, tokenizer.model or vocab.txt) and the model's vocabulary of " +
            std::to_string(model_vocab) + " is not byte-level (256 or 261), so text cannot be turned into its tokens";
    return std::nullopt;
  }

  /// One token per byte, for a byte-level model with `model_vocab` (>= 256) embedding rows.
  static TextCodec bytes(Index model_vocab) {
    check(model_vocab >= 256, "examples::TextCodec", "a byte-level vocabulary has at least 256 ids, got ", model_vocab);
    TextCodec c;
    c.model_vocab_ = model_vocab;
    c.name_ = "bytes";
    return c;
  }

  /// Ids of `text`; `add_special` adds the tokenizer's template (BOS, ...) as for a whole prompt,
  /// false for a continuation of text already read. Bytes need no template.
  std::vector<std::int32_t> encode(std::string_view text, bool add_special = true) const {
#if ENGRAM_HAVE_TOKENIZERS
    if (tokenizer_) return tokenizer_->encode(text, add_special);
#endif
    (void)add_special;
    return tasks::ByteTokenizer::encode(text);
  }

  /// Ids the codec can decode: sampling never chooses an id at or above this (a model's embedding
  /// is often padded past its tokenizer).
  Index decodable() const {
#if ENGRAM_HAVE_TOKENIZERS
    if (tokenizer_) return tokenizer_->vocab_size();
#endif
    return model_vocab_;
  }

  /// The end-of-sequence id generation stops at, if the codec has one.
  std::optional<std::int32_t> eos() const {
#if ENGRAM_HAVE_TOKENIZERS
    if (tokenizer_) return tokenizer_->eos();
#endif
    if (model_vocab_ == tasks::ByteTokenizer::vocab_size) return tasks::ByteTokenizer::eos;
    return std::nullopt;
  }

  /// "tokenizer.json", "tokenizer.model", "vocab.txt" or "bytes".
  const std::string& name() const { return name_; }
  bool is_bytes() const { return name_ == "bytes"; }

  /// Streaming decoder: push(id) returns the text completed by that id (special tokens are not
  /// printed; bytes are written as they come), flush() what is held back at the end.
  class Stream {
   public:
    std::string push(std::int32_t id) {
#if ENGRAM_HAVE_TOKENIZERS
      if (detok_) return detok_->push(id);
#endif
      return tasks::ByteTokenizer::decode(std::span<const std::int32_t>(&id, 1), /*skip_specials=*/true);
    }
    std::string flush() {
#if ENGRAM_HAVE_TOKENIZERS
      if (detok_) return detok_->flush();
#endif
      return {};
    }

   private:
    friend class TextCodec;
#if ENGRAM_HAVE_TOKENIZERS
    std::unique_ptr<tokenizers::Detokenizer> detok_;
#endif
  };
  Stream stream() const {
    Stream s;
#if ENGRAM_HAVE_TOKENIZERS
    if (tokenizer_) s.detok_ = std::make_unique<tokenizers::Detokenizer>(*tokenizer_, /*skip_special=*/true);
#endif
    return s;
  }

 private:
#if ENGRAM_HAVE_TOKENIZERS
  std::shared_ptr<const tokenizers::Tokenizer> tokenizer_;
#endif
  Index model_vocab_ = 0;
  std::string name_;
};

/// What continue_text produced.
struct Continuation {
  std::vector<std::int32_t> ids;  ///< the tokens chosen, the EOS included when it ended the text
  bool stopped_at_eos = false;
};

/// Continues a sequence whose last logits are `logits` ([1, vocab], from prefill): chooses up to
/// `max_tokens` tokens with `sampler` among the ids `codec` can decode, hands the text each one
/// completes to `emit` as soon as it is known (the EOS is not printed), and stops after the EOS.
/// `prompt` (the ids read before) is the decoder's context, so the first word keeps the space a
/// tokenizer writes as part of its token ("▁world").
inline Continuation continue_text(const Decoder<float>& model, Decoder<float>::State& state, Tensor<float> logits, Index max_tokens,
                                  Sampler& sampler, const TextCodec& codec, const std::function<void(std::string_view)>& emit,
                                  std::span<const std::int32_t> prompt = {}) {
  Continuation out;
  TextCodec::Stream stream = codec.stream();
  // The prompt's last tokens set the context; their text was the user's and is not emitted.
  for (std::int32_t id : prompt.subspan(prompt.size() - std::min<std::size_t>(prompt.size(), 8))) (void)stream.push(id);
  const Index choices = std::min(codec.decodable(), model.config.vocab_size);
  const std::optional<std::int32_t> eos = codec.eos();
  for (Index i = 0; i < max_tokens; ++i) {
    const std::int32_t id = sampler.sample<float>(logits.row(0), choices);
    out.ids.push_back(id);
    if (eos && id == *eos) {
      out.stopped_at_eos = true;
      break;
    }
    if (const std::string text = stream.push(id); !text.empty()) emit(text);
    if (i + 1 < max_tokens) logits = model.decode(id, state);
  }
  if (const std::string rest = stream.flush(); !rest.empty()) emit(rest);
  return out;
}

}  // namespace examples
