// tokenizer.json pre-tokenizers: Sequence, Split (PCRE2), ByteLevel, Metaspace, BertPreTokenizer,
// Whitespace, WhitespaceSplit, Digits, Punctuation. Each splits one piece of normalized text into
// words and hands them on without copying where it can.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "engram/tokenizers/json_fields.hpp"
#include "engram/tokenizers/normalizers.hpp"
#include "engram/tokenizers/regex.hpp"
#include "engram/tokenizers/unicode.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers {

/// A non-owning reference to a callable (cheaper than std::function on the per-word path).
template <class Signature>
class FunctionRef;
template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, FunctionRef>>>
  FunctionRef(F&& f) : object_(const_cast<void*>(static_cast<const void*>(&f))), call_([](void* o, Args... a) -> R {
                         return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<Args>(a)...);
                       }) {}
  R operator()(Args... a) const { return call_(object_, std::forward<Args>(a)...); }

 private:
  void* object_;
  R (*call_)(void*, Args...);
};

/// Receives a word and whether it starts at the beginning of the original text.
using WordSink = FunctionRef<void(std::string_view, bool)>;

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  /// Splits valid UTF-8 `text` into words; `at_start`: text begins at offset 0 of the input.
  virtual void split(std::string_view text, bool at_start, WordSink out) const = 0;
  /// True for ByteLevel, whose words the model reads as raw bytes.
  virtual bool byte_level() const { return false; }
};

/// How a split keeps the delimiters it finds (the reference's SplitDelimiterBehavior).
enum class Behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

inline Behavior parse_behavior(const std::string& name, std::string_view where) {
  if (name == "Removed") return Behavior::removed;
  if (name == "Isolated") return Behavior::isolated;
  if (name == "MergedWithPrevious") return Behavior::merged_with_previous;
  if (name == "MergedWithNext") return Behavior::merged_with_next;
  if (name == "Contiguous") return Behavior::contiguous;
  fail("tokenizer.json", where, ".behavior \"", name, "\" is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
}

namespace detail {

struct Span {
  std::size_t begin, end;
  bool match;
};

/// Applies `behavior` to spans covering `text` in order, and emits the non-empty pieces.
inline void emit_spans(std::string_view text, bool at_start, std::vector<Span>& spans, Behavior behavior, WordSink out) {
  std::vector<Span> pieces;
  pieces.reserve(spans.size());
  bool previous_match = false;
  switch (behavior) {
    case Behavior::removed:
      for (const Span& s : spans)
        if (!s.match) pieces.push_back(s);
      break;
    case Behavior::isolated: pieces = spans; break;
    case Behavior::merged_with_previous:
      for (const Span& s : spans) {
        if (s.match && !previous_match && !pieces.empty()) pieces.back().end = s.end;
        else pieces.push_back(s);
        previous_match = s.match;
      }
      break;
    case Behavior::merged_with_next:
      for (std::size_t i = spans.size(); i-- > 0;) {
        const Span& s = spans[i];
        if (s.match && !previous_match && !pieces.empty()) pieces.back().begin = s.begin;
        else pieces.push_back(s);
        previous_match = s.match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
    case Behavior::contiguous:
      for (const Span& s : spans) {
        if (s.match == previous_match && !pieces.empty()) pieces.back().end = s.end;
        else pieces.push_back(s);
        previous_match = s.match;
      }
      break;
  }
  for (const Span& p : pieces)
    if (p.end > p.begin) out(text.substr(p.begin, p.end - p.begin), at_start && p.begin == 0);
}

/// Spans of `text` split where `is_delimiter(cp)` holds, one span per delimiter character.
template <class Pred>
void char_spans(std::string_view text, Pred&& is_delimiter, std::vector<Span>& spans) {
  std::size_t gap = 0;
  for (std::size_t i = 0; i < text.size();) {
    const utf8::Decoded d = utf8::decode(text, i);
    const std::size_t next = i + std::size_t(d.length);
    if (is_delimiter(d.cp)) {
      if (gap < i) spans.push_back({gap, i, false});
      spans.push_back({i, next, true});
      gap = next;
    }
    i = next;
  }
  if (gap < text.size()) spans.push_back({gap, text.size(), false});
}

/// BERT's punctuation: ASCII punctuation or Unicode P*.
inline bool is_bert_punctuation(char32_t c) {
  if (c < 0x80) return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
  return unicode::is_punctuation(c);
}

}  // namespace detail

/// Splits with a regex or a literal (the reference's Split).
class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(const detail::Pattern& p, Behavior behavior, bool invert)
      : regex_(p.text, !p.regex), behavior_(behavior), invert_(invert) {}

  void split(std::string_view text, bool at_start, WordSink out) const override {
    if (behavior_ == Behavior::isolated) {  // the GPT-2 / Llama-3 path: stream, no span list
      std::size_t gap = 0;
      regex_.for_each_match(text, [&](std::size_t s, std::size_t e) {
        if (gap < s) out(text.substr(gap, s - gap), at_start && gap == 0);
        out(text.substr(s, e - s), at_start && s == 0);
        gap = e;
      });
      if (gap < text.size()) out(text.substr(gap), at_start && gap == 0);
      return;
    }
    std::vector<detail::Span> spans;
    std::size_t gap = 0;
    regex_.for_each_match(text, [&](std::size_t s, std::size_t e) {
      if (gap < s) spans.push_back({gap, s, invert_});
      spans.push_back({s, e, !invert_});
      gap = e;
    });
    if (gap < text.size()) spans.push_back({gap, text.size(), invert_});
    detail::emit_spans(text, at_start, spans, behavior_, out);
  }

 private:
  Regex regex_;
  Behavior behavior_;
  bool invert_;
};

/// GPT-2's byte-level pre-tokenizer: optional leading space, the GPT-2 regex split, and words the
/// model reads as bytes (the byte-to-symbol mapping is folded into the model's vocabulary).
class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  /// The pattern of OpenAI's GPT-2 encoder, which the reference builds in.
  static constexpr std::string_view kGpt2Pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex) : add_prefix_space_(add_prefix_space) {
    if (use_regex) split_ = std::make_unique<SplitPreTokenizer>(detail::Pattern{std::string(kGpt2Pattern), true}, Behavior::isolated, false);
  }
  bool byte_level() const override { return true; }

  void split(std::string_view text, bool at_start, WordSink out) const override {
    std::string prefixed;
    if (add_prefix_space_ && !text.empty() && text.front() != ' ') {
      prefixed = " " + std::string(text);
      text = prefixed;
    }
    if (split_) split_->split(text, at_start, out);
    else if (!text.empty()) out(text, at_start);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<SplitPreTokenizer> split_;
};

/// SentencePiece-style: spaces become the replacement character (▁), optionally prepended, and
/// words start at each replacement.
class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  enum class Prepend { always, first, never };
  MetaspacePreTokenizer(char32_t replacement, Prepend prepend, bool split)
      : replacement_(utf8::encode(replacement)), replacement_cp_(replacement), prepend_(prepend), split_(split) {}

  void split(std::string_view text, bool at_start, WordSink out) const override {
    std::string s;
    s.reserve(text.size() + 8);
    for (char c : text) {
      if (c == ' ') s += replacement_;
      else s += c;
    }
    if ((prepend_ == Prepend::always || (prepend_ == Prepend::first && at_start)) && !std::string_view(s).starts_with(replacement_))
      s.insert(0, replacement_);
    if (!split_) {
      if (!s.empty()) out(s, at_start);
      return;
    }
    std::vector<detail::Span> spans;
    detail::char_spans(s, [&](char32_t c) { return c == replacement_cp_; }, spans);
    detail::emit_spans(s, at_start, spans, Behavior::merged_with_next, out);
  }

 private:
  std::string replacement_;
  char32_t replacement_cp_;
  Prepend prepend_;
  bool split_;
};

/// BERT: split on White_Space (dropped) and on punctuation (kept as words of their own).
class BertPreTokenizer final : public PreTokenizer {
 public:
  void split(std::string_view text, bool at_start, WordSink out) const override {
    std::size_t word = 0;
    for (std::size_t i = 0; i < text.size();) {
      const utf8::Decoded d = utf8::decode(text, i);
      const std::size_t next = i + std::size_t(d.length);
      const bool space = unicode::is_whitespace(d.cp);
      if (space || detail::is_bert_punctuation(d.cp)) {
        if (word < i) out(text.substr(word, i - word), at_start && word == 0);
        if (!space) out(text.substr(i, next - i), at_start && i == 0);
        word = next;
      }
      i = next;
    }
    if (word < text.size()) out(text.substr(word), at_start && word == 0);
  }
};

/// Splits on White_Space, dropping it.
class WhitespaceSplitPreTokenizer final : public PreTokenizer {
 public:
  void split(std::string_view text, bool at_start, WordSink out) const override {
    std::vector<detail::Span> spans;
    detail::char_spans(text, [](char32_t c) { return unicode::is_whitespace(c); }, spans);
    detail::emit_spans(text, at_start, spans, Behavior::removed, out);
  }
};

/// Splits on a character class with a behavior (Digits: ASCII digits; Punctuation: BERT's).
template <bool Digits>
class CharClassPreTokenizer final : public PreTokenizer {
 public:
  explicit CharClassPreTokenizer(Behavior behavior) : behavior_(behavior) {}
  void split(std::string_view text, bool at_start, WordSink out) const override {
    std::vector<detail::Span> spans;
    if constexpr (Digits) detail::char_spans(text, [](char32_t c) { return c >= '0' && c <= '9'; }, spans);
    else detail::char_spans(text, [](char32_t c) { return detail::is_bert_punctuation(c); }, spans);
    detail::emit_spans(text, at_start, spans, behavior_, out);
  }

 private:
  Behavior behavior_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  bool byte_level() const override { return !steps_.empty() && steps_.back()->byte_level(); }
  void split(std::string_view text, bool at_start, WordSink out) const override { run(0, text, at_start, out); }

 private:
  void run(std::size_t step, std::string_view text, bool at_start, WordSink out) const {
    if (step == steps_.size()) return out(text, at_start);
    steps_[step]->split(text, at_start, [&](std::string_view w, bool s) { run(step + 1, w, s, out); });
  }
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

/// Builds the pre-tokenizer a tokenizer.json describes (nullptr for null). ByteLevel must come
/// last in a Sequence (its output is bytes, not text).
inline std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json::Value& v, std::string_view where = "pre_tokenizer") {
  if (v.is_null()) return nullptr;
  const std::string& type = detail::type_of(v, where);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const json::Value& p : detail::require(v, "pretokenizers", where).as_array("pre_tokenizer.pretokenizers")) {
      check(steps.empty() || !steps.back()->byte_level(), "tokenizer.json", where,
            ": ByteLevel must be the last pre-tokenizer of a Sequence (it turns text into bytes)");
      if (auto step = make_pre_tokenizer(p, where)) steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (type == "Split") {
    const Behavior behavior = parse_behavior(detail::require_string(v, "behavior", where), where);
    return std::make_unique<SplitPreTokenizer>(detail::get_pattern(v, where), behavior, detail::get_bool(v, "invert", false, where));
  }
  if (type == "ByteLevel")
    return std::make_unique<ByteLevelPreTokenizer>(detail::get_bool(v, "add_prefix_space", true, where), detail::get_bool(v, "use_regex", true, where));
  if (type == "Metaspace") {
    using P = MetaspacePreTokenizer::Prepend;
    P prepend = detail::get_bool(v, "add_prefix_space", true, where) ? P::always : P::never;
    if (const auto scheme = detail::get_optional_string(v, "prepend_scheme", where)) {
      if (*scheme == "always") prepend = P::always;
      else if (*scheme == "first") prepend = P::first;
      else if (*scheme == "never") prepend = P::never;
      else fail("tokenizer.json", where, ".prepend_scheme \"", *scheme, "\" is not one of always, first, never");
    }
    return std::make_unique<MetaspacePreTokenizer>(detail::get_char(v, "replacement", U'\u2581', where), prepend,
                                                   detail::get_bool(v, "split", true, where));
  }
  if (type == "BertPreTokenizer") return std::make_unique<BertPreTokenizer>();
  if (type == "WhitespaceSplit") return std::make_unique<WhitespaceSplitPreTokenizer>();
  if (type == "Whitespace")
    return std::make_unique<SplitPreTokenizer>(detail::Pattern{"\\w+|[^\\w\\s]+", true}, Behavior::removed, true);
  if (type == "Digits")
    return std::make_unique<CharClassPreTokenizer<true>>(detail::get_bool(v, "individual_digits", false, where) ? Behavior::isolated : Behavior::contiguous);
  if (type == "Punctuation")
    return std::make_unique<CharClassPreTokenizer<false>>(parse_behavior(detail::get_string(v, "behavior", "Isolated", where), where));
  fail("tokenizer.json", where, ".type \"", type,
       "\" is not supported (supported: Sequence, Split, ByteLevel, Metaspace, BertPreTokenizer, Whitespace, WhitespaceSplit, Digits, Punctuation)");
}

}  // namespace tokenizers
ENGRAM_NAMESPACE_END
