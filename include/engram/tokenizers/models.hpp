// tokenizer.json models: BPE (GPT-2 / Llama-3 byte-level, Llama-2 / Mistral with byte fallback,
// ignore_merges, continuing-subword prefix and end-of-word suffix), WordPiece (BERT) and WordLevel.
#pragma once

#include <array>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engram/tokenizers/byte_level.hpp"
#include "engram/tokenizers/flat_map.hpp"
#include "engram/tokenizers/json_fields.hpp"
#include "engram/tokenizers/utf8.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers {

namespace detail {
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
/// token -> id with lookups by string_view.
using VocabMap = std::unordered_map<std::string, std::int32_t, StringHash, std::equal_to<>>;

inline std::optional<std::int32_t> lookup(const VocabMap& m, std::string_view s) {
  const auto it = m.find(s);
  if (it == m.end()) return std::nullopt;
  return it->second;
}
}  // namespace detail

/// Turns one pre-tokenized word into ids.
class Model {
 public:
  virtual ~Model() = default;
  virtual void tokenize(std::string_view word, std::vector<std::int32_t>& out) const = 0;
  virtual std::optional<std::int32_t> token_to_id(std::string_view token) const = 0;
  /// The vocabulary's own string for `id` (for byte-level BPE, in the byte-level alphabet).
  virtual const std::string* id_to_token(std::int32_t id) const = 0;
  /// One more than the largest id.
  virtual std::int32_t size() const = 0;
};

namespace detail {
/// Reads a {token: id} object into both directions, checking ids.
/// Ids without a token stay empty strings in `to_token`; `present` tells them apart.
inline void read_vocab(const json::Value& vocab, VocabMap& to_id, std::vector<std::string>& to_token, std::vector<bool>& present,
                       std::string_view where) {
  for (const auto& [token, idv] : vocab.as_object(std::string(where) + ".vocab")) {
    check(idv.is_integer() && idv.as_integer() >= 0 && idv.as_integer() < (std::int64_t(1) << 31), "tokenizer.json", where,
          ".vocab[\"", token, "\"] expected an id in [0, 2^31), got ", idv.is_integer() ? std::to_string(idv.as_integer()) : idv.type_name());
    const auto id = std::int32_t(idv.as_integer());
    check(id < (std::int32_t(1) << 24), "tokenizer.json", where, ".vocab[\"", token, "\"] id ", id, " is implausibly large (limit 2^24)");
    if (std::size_t(id) >= to_token.size()) to_token.resize(std::size_t(id) + 1), present.resize(std::size_t(id) + 1);
    to_token[std::size_t(id)] = token;
    present[std::size_t(id)] = true;
    to_id[token] = id;
  }
}
}  // namespace detail

/// Byte-pair encoding, merging the lowest-ranked adjacent pair first (leftmost on ties), exactly as
/// the reference's Word::merge_all. In byte-level mode the vocabulary and merges are mapped from
/// GPT-2's alphabet to raw bytes at load, so words are merged as bytes without re-encoding.
class BpeModel final : public Model {
 public:
  BpeModel(const json::Value& m, bool byte_level, std::string_view where = "model") : byte_level_(byte_level) {
    detail::read_vocab(detail::require(m, "vocab", where), vocab_, tokens_, present_, where);
    unk_ = detail::get_optional_string(m, "unk_token", where);
    prefix_ = detail::get_string(m, "continuing_subword_prefix", "", where);
    suffix_ = detail::get_string(m, "end_of_word_suffix", "", where);
    fuse_unk_ = detail::get_bool(m, "fuse_unk", false, where);
    byte_fallback_ = detail::get_bool(m, "byte_fallback", false, where);
    ignore_merges_ = detail::get_bool(m, "ignore_merges", false, where);
    if (const json::Value* d = m.find("dropout"); d && !d->is_null())
      check(d->is_number() && d->as_number() == 0.0, "tokenizer.json", where, ".dropout: BPE dropout is a training feature; expected null or 0");
    if (unk_) {
      unk_id_ = detail::lookup(vocab_, *unk_);
      check(unk_id_.has_value(), "tokenizer.json", where, ".unk_token \"", *unk_, "\" is not in the vocabulary");
    }
    const json::Value* merges = m.find("merges");
    check(merges != nullptr && merges->is_array(), "tokenizer.json", where, ": missing array field \"merges\"");
    const auto& list = merges->as_array();
    merges_.reserve(list.size());
    std::string merged;
    for (std::size_t rank = 0; rank < list.size(); ++rank) {
      std::string_view a, b;
      if (list[rank].is_string()) {  // "a b" (the format before tokenizers 0.20)
        const std::string_view s = list[rank].as_string();
        const auto space = s.find(' ');
        check(space != std::string::npos && space > 0 && space + 1 < s.size() && s.find(' ', space + 1) == std::string::npos, "tokenizer.json",
              where, ".merges[", rank, "] expected \"left right\", got \"", s, "\"");
        a = s.substr(0, space), b = s.substr(space + 1);
      } else {
        const auto& pair = list[rank].as_array("model.merges[i]");
        check(pair.size() == 2 && pair[0].is_string() && pair[1].is_string(), "tokenizer.json", where, ".merges[", rank,
              "] expected two strings");
        a = pair[0].as_string(), b = pair[1].as_string();
      }
      check(b.size() >= prefix_.size(), "tokenizer.json", where, ".merges[", rank, "] right side \"", b, "\" is shorter than the prefix");
      merged.assign(a).append(b.substr(prefix_.size()));
      const auto ia = detail::lookup(vocab_, a), ib = detail::lookup(vocab_, b), im = detail::lookup(vocab_, merged);
      check(ia && ib && im, "tokenizer.json", where, ".merges[", rank, "] \"", list[rank].is_string() ? list[rank].as_string() : std::string(a) + " " + std::string(b),
            "\" uses a token that is not in the vocabulary");
      merges_.insert_or_assign(pair_key(*ia, *ib), Merge{std::int32_t(rank), *im});  // a repeated pair keeps its last rank, as the reference's map does
    }
    if (byte_level_) {  // the model reads raw bytes: key the vocabulary by the bytes each token stands for
      detail::VocabMap bytes;
      bytes.reserve(vocab_.size());
      for (const auto& [token, id] : vocab_) bytes[byte_level::decode(token).value_or(token)] = id;
      vocab_ = std::move(bytes);
      for (int b = 0; b < 256; ++b) byte_ids_[std::size_t(b)] = detail::lookup(vocab_, std::string(1, char(b))).value_or(-1);
    }
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      fallback_ids_[std::size_t(b)] = detail::lookup(vocab_, name).value_or(-1);
    }
  }

  void tokenize(std::string_view word, std::vector<std::int32_t>& out) const override {
    if (word.empty()) return;
    if (ignore_merges_)
      if (const auto id = detail::lookup(vocab_, word)) return out.push_back(*id);
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    initial_symbols(word, symbols);
    merge_all(symbols);
    for (const Symbol& s : symbols)
      if (s.alive) out.push_back(s.id);
  }

  std::optional<std::int32_t> token_to_id(std::string_view token) const override {
    if (byte_level_) {
      const auto bytes = byte_level::decode(token);
      return detail::lookup(vocab_, bytes ? std::string_view(*bytes) : token);
    }
    return detail::lookup(vocab_, token);
  }
  const std::string* id_to_token(std::int32_t id) const override {
    if (id < 0 || std::size_t(id) >= tokens_.size() || !present_[std::size_t(id)]) return nullptr;
    return &tokens_[std::size_t(id)];
  }
  std::int32_t size() const override { return std::int32_t(tokens_.size()); }
  bool byte_fallback() const { return byte_fallback_; }

 private:
  struct Merge {
    std::int32_t rank, id;
  };
  struct Symbol {
    std::int32_t id;
    std::int32_t prev, next;
    bool alive;
  };
  static std::uint64_t pair_key(std::int32_t a, std::int32_t b) { return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b); }

  void push_symbol(std::vector<Symbol>& symbols, std::int32_t id) const {
    const auto n = std::int32_t(symbols.size());
    symbols.push_back({id, n - 1, n + 1, true});
  }

  // One symbol per byte (byte-level) or per character; unknown characters go to their <0xNN>
  // byte tokens (byte_fallback) or to unk (fused when fuse_unk), or vanish when there is no unk.
  void initial_symbols(std::string_view word, std::vector<Symbol>& symbols) const {
    bool last_unk = false;
    std::string piece;
    for (std::size_t i = 0; i < word.size();) {
      const std::size_t len = byte_level_ ? 1 : std::size_t(utf8::decode(word, i).length);
      const bool first = i == 0, last = i + len == word.size();
      std::optional<std::int32_t> id;
      if (byte_level_ && prefix_.empty() && suffix_.empty()) {
        const std::int32_t b = byte_ids_[static_cast<unsigned char>(word[i])];
        if (b >= 0) id = b;
      } else {
        piece.clear();
        if (!first) piece += prefix_;
        piece.append(word.substr(i, len));
        if (last) piece += suffix_;
        id = detail::lookup(vocab_, piece);
      }
      if (id) {
        push_symbol(symbols, *id);
        last_unk = false;
      } else if (byte_fallback_ && fallback_all(word.substr(i, len))) {
        for (std::size_t k = 0; k < len; ++k) push_symbol(symbols, fallback_ids_[static_cast<unsigned char>(word[i + k])]);
        last_unk = false;
      } else if (unk_id_) {
        if (!(fuse_unk_ && last_unk)) push_symbol(symbols, *unk_id_);
        last_unk = true;
      }
      i += len;
    }
    if (!symbols.empty()) symbols.back().next = -1;
  }

  bool fallback_all(std::string_view bytes) const {
    for (unsigned char b : bytes)
      if (fallback_ids_[b] < 0) return false;
    return true;
  }

  void merge_all(std::vector<Symbol>& symbols) const {
    // Short words (nearly all): scan the adjacent pairs for the lowest (rank, position) each round,
    // no heap. Same choice as the heap below, which long words need to stay O(n log n).
    if (symbols.size() <= 24) return merge_by_scan(symbols);
    struct Candidate {
      std::int32_t rank, pos, id;
      bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }  // min-heap on (rank, pos)
    };
    std::priority_queue<Candidate> queue;
    const auto consider = [&](std::int32_t left) {
      const std::int32_t right = symbols[std::size_t(left)].next;
      if (right < 0) return;
      if (const Merge* m = merges_.find(pair_key(symbols[std::size_t(left)].id, symbols[std::size_t(right)].id)))
        queue.push({m->rank, left, m->id});
    };
    for (std::int32_t i = 0; i + 1 < std::int32_t(symbols.size()); ++i) consider(i);
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[std::size_t(top.pos)];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = symbols[std::size_t(left.next)];
      const Merge* m = merges_.find(pair_key(left.id, right.id));
      if (m == nullptr || m->id != top.id) continue;  // stale: a neighbour changed since
      left.id = top.id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) symbols[std::size_t(right.next)].prev = top.pos;
      if (left.prev >= 0) consider(left.prev);
      consider(top.pos);
    }
  }

  void merge_by_scan(std::vector<Symbol>& symbols) const {
    // Symbols stay contiguous here: a merge erases the right symbol.
    std::int32_t ranks[24], ids[24];
    std::size_t n = symbols.size();
    const auto pair_at = [&](std::size_t i) {
      const Merge* m = merges_.find(pair_key(symbols[i].id, symbols[i + 1].id));
      ranks[i] = m ? m->rank : std::numeric_limits<std::int32_t>::max();
      ids[i] = m ? m->id : -1;
    };
    for (std::size_t i = 0; i + 1 < n; ++i) pair_at(i);
    while (n > 1) {
      std::size_t best = 0;
      for (std::size_t i = 1; i + 1 < n; ++i)
        if (ranks[i] < ranks[best]) best = i;
      if (ids[best] < 0) break;
      symbols[best].id = ids[best];
      for (std::size_t i = best + 1; i + 1 < n; ++i) symbols[i] = symbols[i + 1], ranks[i] = ranks[i + 1], ids[i] = ids[i + 1];
      --n;
      if (best > 0) pair_at(best - 1);
      if (best + 1 < n) pair_at(best);
    }
    symbols.resize(n);
  }

  bool byte_level_;
  detail::VocabMap vocab_;            // model-space token (bytes when byte-level) -> id
  std::vector<std::string> tokens_;   // id -> token as written in tokenizer.json
  std::vector<bool> present_;
  detail::U64Table<Merge> merges_;
  std::optional<std::string> unk_;
  std::optional<std::int32_t> unk_id_;
  std::string prefix_, suffix_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::array<std::int32_t, 256> byte_ids_{}, fallback_ids_{};
};

/// WordPiece: greedy longest-match-first with a continuation prefix; a word with any
/// unmatchable part, or longer than max_input_chars_per_word characters, becomes unk.
class WordPieceModel final : public Model {
 public:
  WordPieceModel(detail::VocabMap vocab, std::vector<std::string> tokens, std::string unk, std::string prefix, std::size_t max_chars)
      : vocab_(std::move(vocab)), tokens_(std::move(tokens)), prefix_(std::move(prefix)), max_chars_(max_chars) {
    const auto id = detail::lookup(vocab_, unk);
    check(id.has_value(), "tokenizers::WordPieceModel", "unk_token \"", unk, "\" is not in the vocabulary");
    unk_id_ = *id;
  }

  static std::unique_ptr<WordPieceModel> from_json(const json::Value& m, std::string_view where = "model") {
    detail::VocabMap vocab;
    std::vector<std::string> tokens;
    std::vector<bool> present;
    detail::read_vocab(detail::require(m, "vocab", where), vocab, tokens, present, where);
    const auto max_chars = detail::get_int(m, "max_input_chars_per_word", 100, where);
    check(max_chars > 0, "tokenizer.json", where, ".max_input_chars_per_word expected > 0, got ", max_chars);
    return std::make_unique<WordPieceModel>(std::move(vocab), std::move(tokens), detail::get_string(m, "unk_token", "[UNK]", where),
                                            detail::get_string(m, "continuing_subword_prefix", "##", where), std::size_t(max_chars));
  }

  void tokenize(std::string_view word, std::vector<std::int32_t>& out) const override {
    if (word.empty()) return;
    if (utf8::length(word) > max_chars_) return out.push_back(unk_id_);
    const std::size_t mark = out.size();
    std::string candidate;
    for (std::size_t start = 0; start < word.size();) {
      std::size_t end = word.size();
      std::optional<std::int32_t> found;
      while (end > start) {
        candidate.clear();
        if (start > 0) candidate += prefix_;
        candidate.append(word.substr(start, end - start));
        if ((found = detail::lookup(vocab_, candidate))) break;
        do --end;  // back off by one character
        while (end > start && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80);
      }
      if (!found) {
        out.resize(mark);
        return out.push_back(unk_id_);
      }
      out.push_back(*found);
      start = end;
    }
  }
  std::optional<std::int32_t> token_to_id(std::string_view token) const override { return detail::lookup(vocab_, token); }
  const std::string* id_to_token(std::int32_t id) const override {
    if (id < 0 || std::size_t(id) >= tokens_.size()) return nullptr;
    return &tokens_[std::size_t(id)];
  }
  std::int32_t size() const override { return std::int32_t(tokens_.size()); }
  const std::string& prefix() const { return prefix_; }

 private:
  detail::VocabMap vocab_;
  std::vector<std::string> tokens_;
  std::string prefix_;
  std::size_t max_chars_;
  std::int32_t unk_id_ = 0;
};

/// WordLevel: one id per word, unk otherwise.
class WordLevelModel final : public Model {
 public:
  explicit WordLevelModel(const json::Value& m, std::string_view where = "model") {
    detail::read_vocab(detail::require(m, "vocab", where), vocab_, tokens_, present_, where);
    const std::string unk = detail::get_string(m, "unk_token", "<unk>", where);
    unk_id_ = detail::lookup(vocab_, unk);
  }
  void tokenize(std::string_view word, std::vector<std::int32_t>& out) const override {
    if (const auto id = detail::lookup(vocab_, word)) out.push_back(*id);
    else if (unk_id_) out.push_back(*unk_id_);
    else fail("tokenizers::WordLevelModel", "word \"", word, "\" is not in the vocabulary and there is no unk_token");
  }
  std::optional<std::int32_t> token_to_id(std::string_view token) const override { return detail::lookup(vocab_, token); }
  const std::string* id_to_token(std::int32_t id) const override {
    if (id < 0 || std::size_t(id) >= tokens_.size() || !present_[std::size_t(id)]) return nullptr;
    return &tokens_[std::size_t(id)];
  }
  std::int32_t size() const override { return std::int32_t(tokens_.size()); }

 private:
  detail::VocabMap vocab_;
  std::vector<std::string> tokens_;
  std::vector<bool> present_;
  std::optional<std::int32_t> unk_id_;
};

}  // namespace tokenizers
ENGRAM_NAMESPACE_END
