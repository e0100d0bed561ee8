// tokenizer.json decoders: ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, WordPiece,
// BPEDecoder and Sequence. Each rewrites the list of token strings, as the reference's decode_chain.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engram/tokenizers/byte_level.hpp"
#include "engram/tokenizers/json_fields.hpp"
#include "engram/tokenizers/normalizers.hpp"
#include "engram/tokenizers/pre_tokenizers.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

/// Byte-level symbols back to bytes (a token outside the alphabet, e.g. an added token, stays as
/// it is), then the whole byte string read as UTF-8 with U+FFFD for invalid sequences.
class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      if (auto b = byte_level::decode(t)) bytes += *b;
      else bytes += t;
    }
    tokens.assign(1, utf8::repair(bytes));
  }
};

/// The replacement character back to spaces; the first token loses its prepended one.
class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, bool strip_first) : replacement_(utf8::encode(replacement)), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      std::string_view t = tokens[i];
      for (std::size_t p = t.find(replacement_), last = 0;; p = t.find(replacement_, last)) {
        out.append(t.substr(last, p == std::string_view::npos ? std::string_view::npos : p - last));
        if (p == std::string_view::npos) break;
        if (!(i == 0 && strip_first_)) out += ' ';
        last = p + replacement_.size();
      }
      tokens[i] = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

/// Runs of <0xNN> tokens become their bytes when those form valid UTF-8, else one U+FFFD each.
class ByteFallbackDecoder final : public Decoder {
 public:
  static int byte_of(std::string_view t) {
    if (t.size() != 6 || !t.starts_with("<0x") || t[5] != '>') return -1;
    int v = 0;
    for (int k = 3; k < 5; ++k) {
      const char c = t[std::size_t(k)];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return -1;
      v = v * 16 + d;
    }
    return v;
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string bytes;
    std::size_t n_bytes = 0;
    const auto flush = [&] {
      if (n_bytes == 0) return;
      if (utf8::is_valid(bytes)) out.push_back(bytes);
      else
        for (std::size_t k = 0; k < n_bytes; ++k) out.emplace_back(utf8::kReplacementUtf8);
      bytes.clear();
      n_bytes = 0;
    };
    for (std::string& t : tokens) {
      const int b = byte_of(t);
      if (b >= 0) {
        bytes += char(b);
        ++n_bytes;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

/// Removes up to `start` leading and `stop` trailing copies of one character from each token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(char32_t content, std::size_t start, std::size_t stop) : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::vector<std::pair<std::size_t, char32_t>> chars;  // (byte offset, code point)
      for (std::size_t i = 0; i < t.size();) {
        const utf8::Decoded d = utf8::decode(t, i);
        chars.emplace_back(i, d.cp);
        i += std::size_t(d.length);
      }
      std::size_t b = 0, e = chars.size();
      while (b < std::min(start_, chars.size()) && chars[b].second == content_) ++b;
      for (std::size_t k = 0; k < stop_ && e > b && chars[e - 1].second == content_; ++k) --e;
      const std::size_t from = b < chars.size() ? chars[b].first : t.size();
      const std::size_t to = e < chars.size() ? chars[e].first : t.size();
      t = t.substr(from, to > from ? to - from : 0);
    }
  }

 private:
  char32_t content_;
  std::size_t start_, stop_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(const detail::Pattern& p, std::string content) : replacer_(p, std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) t = replacer_.apply(t);
  }

 private:
  detail::Replacer replacer_;
};

/// WordPiece: continuation tokens lose their prefix, others get a space; optional cleanup of the
/// spaces before punctuation and in English contractions (as BERT's tokenizer does).
class WordPieceDecoder final : public Decoder {
 public:
  WordPieceDecoder(std::string prefix, bool cleanup) : prefix_(std::move(prefix)), cleanup_(cleanup) {}
  static std::string cleanup(std::string s) {
    static constexpr std::pair<std::string_view, std::string_view> rules[] = {
        {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
        {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    for (const auto& [from, to] : rules) s = detail::Replacer({std::string(from), false}, std::string(to)).apply(s);
    return s;
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      if (i != 0) {
        if (t.starts_with(prefix_)) t.erase(0, prefix_.size());
        else t.insert(0, " ");
      }
      if (cleanup_) t = cleanup(std::move(t));
    }
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

/// BPE with an end-of-word suffix: the suffix becomes a space (nothing after the last token).
class BpeSuffixDecoder final : public Decoder {
 public:
  explicit BpeSuffixDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::size_t i = 0; i < tokens.size(); ++i)
      tokens[i] = detail::Replacer({suffix_, false}, i + 1 == tokens.size() ? "" : " ").apply(tokens[i]);
  }

 private:
  std::string suffix_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& d : steps_) d->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

/// Builds the decoder a tokenizer.json describes (nullptr for null: tokens joined by spaces).
inline std::unique_ptr<Decoder> make_decoder(const json::Value& v, std::string_view where = "decoder") {
  if (v.is_null()) return nullptr;
  const std::string& type = detail::type_of(v, where);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> steps;
    for (const json::Value& d : detail::require(v, "decoders", where).as_array("decoder.decoders"))
      if (auto step = make_decoder(d, where)) steps.push_back(std::move(step));
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    bool strip_first = detail::get_bool(v, "add_prefix_space", true, where);
    if (const auto scheme = detail::get_optional_string(v, "prepend_scheme", where)) strip_first = *scheme != "never";
    return std::make_unique<MetaspaceDecoder>(detail::get_char(v, "replacement", U'\u2581', where), strip_first);
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    const auto start = detail::get_int(v, "start", 0, where), stop = detail::get_int(v, "stop", 0, where);
    check(start >= 0 && stop >= 0, "tokenizer.json", where, ": Strip start and stop must be >= 0, got ", start, " and ", stop);
    return std::make_unique<StripDecoder>(detail::get_char(v, "content", U' ', where), std::size_t(start), std::size_t(stop));
  }
  if (type == "Replace") return std::make_unique<ReplaceDecoder>(detail::get_pattern(v, where), detail::require_string(v, "content", where));
  if (type == "WordPiece")
    return std::make_unique<WordPieceDecoder>(detail::get_string(v, "prefix", "##", where), detail::get_bool(v, "cleanup", true, where));
  if (type == "BPEDecoder") return std::make_unique<BpeSuffixDecoder>(detail::get_string(v, "suffix", "</w>", where));
  fail("tokenizer.json", where, ".type \"", type,
       "\" is not supported (supported: Sequence, ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, WordPiece, BPEDecoder)");
}

}  // namespace tokenizers
ENGRAM_NAMESPACE_END
