// Added and special tokens: found in the text before normalization and pre-tokenization
// (leftmost-longest, like the reference's Aho-Corasick matcher), honouring single_word, lstrip,
// rstrip and normalized (matched against the normalized text).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engram/tokenizers/json_fields.hpp"
#include "engram/tokenizers/normalizers.hpp"
#include "engram/tokenizers/unicode.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers {

struct AddedToken {
  std::int32_t id = 0;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;

  static AddedToken from_json(const json::Value& v, std::size_t index) {
    const std::string where = "added_tokens[" + std::to_string(index) + "]";
    AddedToken t;
    const auto id = detail::get_int(v, "id", -1, where);
    check(id >= 0 && id < (std::int64_t(1) << 24), "tokenizer.json", where, ".id expected an id in [0, 2^24), got ", id);
    t.id = std::int32_t(id);
    t.content = detail::require_string(v, "content", where);
    check(!t.content.empty(), "tokenizer.json", where, ".content is empty");
    t.single_word = detail::get_bool(v, "single_word", false, where);
    t.lstrip = detail::get_bool(v, "lstrip", false, where);
    t.rstrip = detail::get_bool(v, "rstrip", false, where);
    t.special = detail::get_bool(v, "special", false, where);
    t.normalized = detail::get_bool(v, "normalized", !t.special, where);
    return t;
  }
};

/// A piece of the input: either an added token (`token` >= 0) or text for the pipeline.
struct Segment {
  std::size_t begin, end;
  std::int32_t token;  // index into the token list, or -1
};

/// Byte trie over token contents with leftmost-longest search.
class TokenMatcher {
 public:
  void add(std::string_view pattern, std::int32_t token) {
    std::int32_t node = 0;
    for (unsigned char c : pattern) {
      std::int32_t next = -1;
      for (const auto& [byte, child] : nodes_[std::size_t(node)].children)
        if (byte == c) next = child;
      if (next < 0) {
        next = std::int32_t(nodes_.size());
        nodes_[std::size_t(node)].children.emplace_back(c, next);
        nodes_.push_back({});
      }
      node = next;
    }
    nodes_[std::size_t(node)].token = token;
    first_[static_cast<unsigned char>(pattern.front())] = true;
    empty_ = false;
  }
  bool empty() const { return empty_; }

  /// Longest pattern starting at text[pos]: its token and length, or token -1.
  std::pair<std::int32_t, std::size_t> longest_at(std::string_view text, std::size_t pos) const {
    std::pair<std::int32_t, std::size_t> best{-1, 0};
    if (!first_[static_cast<unsigned char>(text[pos])]) return best;
    std::int32_t node = 0;
    for (std::size_t i = pos; i < text.size(); ++i) {
      std::int32_t next = -1;
      for (const auto& [byte, child] : nodes_[std::size_t(node)].children)
        if (byte == static_cast<unsigned char>(text[i])) next = child;
      if (next < 0) break;
      node = next;
      if (nodes_[std::size_t(node)].token >= 0) best = {nodes_[std::size_t(node)].token, i + 1 - pos};
    }
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, std::int32_t>> children;
    std::int32_t token = -1;
  };
  std::vector<Node> nodes_{Node{}};
  bool first_[256] = {};
  bool empty_ = true;
};

/// The added tokens of a tokenizer and the two matchers (raw text, normalized text).
class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  AddedVocabulary(std::vector<AddedToken> tokens, const Normalizer* normalizer) : tokens_(std::move(tokens)) {
    for (std::size_t i = 0; i < tokens_.size(); ++i) {
      const AddedToken& t = tokens_[i];
      if (!t.normalized) raw_.add(t.content, std::int32_t(i));
      else if (const std::string n = normalizer ? normalizer->normalize(t.content) : t.content; !n.empty()) normalized_.add(n, std::int32_t(i));
    }
  }

  const std::vector<AddedToken>& tokens() const { return tokens_; }
  bool empty() const { return tokens_.empty(); }

  /// Splits `text` around the tokens of the raw (normalized = false) or normalized matcher.
  void split(std::string_view text, bool normalized, std::vector<Segment>& out) const {
    const TokenMatcher& m = normalized ? normalized_ : raw_;
    if (m.empty() || text.empty()) {
      out.push_back({0, text.size(), -1});
      return;
    }
    std::size_t start_offset = 0;
    for (std::size_t pos = 0; pos < text.size();) {
      const auto [token, length] = m.longest_at(text, pos);
      if (token < 0) {
        ++pos;
        continue;
      }
      std::size_t start = pos, stop = pos + length;
      pos = stop;  // the search resumes after this match even if it is discarded, as Aho-Corasick's iterator does
      const AddedToken& t = tokens_[std::size_t(token)];
      if (t.single_word) {
        const bool space_before = start == 0 || !ends_with_word(text.substr(0, start));
        const bool space_after = stop == text.size() || !starts_with_word(text.substr(stop));
        if (!space_before || !space_after) continue;
      }
      if (t.lstrip) start = std::max(start_of_trailing_space(text.substr(0, start)), start_offset);
      if (t.rstrip) stop += end_of_leading_space(text.substr(stop));
      if (start_offset < start) out.push_back({start_offset, start, -1});
      out.push_back({start, stop, token});
      start_offset = stop;
    }
    if (start_offset != text.size()) out.push_back({start_offset, text.size(), -1});
  }

 private:
  static char32_t last_char(std::string_view s) {
    std::size_t i = s.size() - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    return utf8::decode(s, i).cp;
  }
  static bool ends_with_word(std::string_view s) { return !s.empty() && unicode::is_word(last_char(s)); }
  static bool starts_with_word(std::string_view s) { return !s.empty() && unicode::is_word(utf8::decode(s, 0).cp); }
  static std::size_t start_of_trailing_space(std::string_view s) {
    std::size_t e = s.size();
    while (e > 0) {
      std::size_t i = e - 1;
      while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
      if (!unicode::is_whitespace(utf8::decode(s, i).cp)) break;
      e = i;
    }
    return e;
  }
  static std::size_t end_of_leading_space(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size()) {
      const utf8::Decoded d = utf8::decode(s, i);
      if (!unicode::is_whitespace(d.cp)) break;
      i += std::size_t(d.length);
    }
    return i;
  }

  std::vector<AddedToken> tokens_;
  TokenMatcher raw_, normalized_;
};

}  // namespace tokenizers
ENGRAM_NAMESPACE_END
