// Hugging Face tokenizer.json (and BERT's vocab.txt): added tokens, normalizer, pre-tokenizer,
// model, post-processor template and decoder, run in the reference's order.
#pragma once

#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engram/io/json.hpp"
#include "engram/tokenizers/added_tokens.hpp"
#include "engram/tokenizers/decoders.hpp"
#include "engram/tokenizers/flat_map.hpp"
#include "engram/tokenizers/models.hpp"
#include "engram/tokenizers/normalizers.hpp"
#include "engram/tokenizers/post_processors.hpp"
#include "engram/tokenizers/pre_tokenizers.hpp"
#include "engram/tokenizers/tokenizer.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers {

namespace detail {
inline std::string read_text_file(const std::filesystem::path& path, std::string_view where) {
  std::ifstream in(path, std::ios::binary);
  check(in.good(), where, "cannot open ", path.string());
  std::ostringstream s;
  s << in.rdbuf();
  check(!in.bad(), where, "cannot read ", path.string());
  return s.str();
}

/// A token named in tokenizer_config.json: "tok" or {"content": "tok", ...}.
inline std::optional<std::string> config_token(const json::Value* config, std::string_view key) {
  if (!config) return std::nullopt;
  const json::Value* v = config->find(key);
  if (!v) return std::nullopt;
  if (v->is_string()) return v->as_string();
  if (const json::Value* c = v->find("content"); c && c->is_string()) return c->as_string();
  return std::nullopt;
}

/// Per-call memo of word -> ids: prose repeats its words, so most words skip the model.
class WordCache {
 public:
  /// Appends the cached ids of `word` to `out`; false when the word is not cached.
  bool lookup(std::string_view word, std::vector<std::int32_t>& out) const {
    const Span* s = map_.find(word);
    if (s == nullptr) return false;
    out.insert(out.end(), ids_.begin() + s->offset, ids_.begin() + s->offset + s->count);
    return true;
  }
  void insert(std::string_view word, std::span<const std::int32_t> ids) {
    // Long words rarely repeat; a bounded table keeps the memo proportional to the text's vocabulary.
    if (word.size() > 64 || map_.size() >= kMaxEntries) return;
    map_.insert(word, Span{std::uint32_t(ids_.size()), std::uint32_t(ids.size())});
    ids_.insert(ids_.end(), ids.begin(), ids.end());
  }

 private:
  static constexpr std::size_t kMaxEntries = 1 << 17;
  struct Span {
    std::uint32_t offset = 0, count = 0;
  };
  StringTable<Span> map_{4096};
  std::vector<std::int32_t> ids_;
};
}  // namespace detail

/// A tokenizer.json tokenizer. Supported: models BPE, WordPiece, WordLevel; the normalizers,
/// pre-tokenizers, post-processors and decoders of their headers. Anything else is an Error
/// naming the field and value (Unigram models: load their tokenizer.model with SentencePiece).
class HfTokenizer final : public Tokenizer {
 public:
  /// Parses a tokenizer.json document; `config` is tokenizer_config.json (for bos/eos) or null.
  static std::unique_ptr<HfTokenizer> from_json(const json::Value& root, const json::Value* config = nullptr) {
    check(root.is_object(), "tokenizer.json", "expected an object at the top level, got ", root.type_name());
    auto t = std::unique_ptr<HfTokenizer>(new HfTokenizer());
    const json::Value null;
    const auto field = [&](std::string_view key) -> const json::Value& {
      const json::Value* v = root.find(key);
      return v ? *v : null;
    };
    t->normalizer_ = make_normalizer(field("normalizer"));
    t->pre_tokenizer_ = make_pre_tokenizer(field("pre_tokenizer"));
    t->decoder_ = make_decoder(field("decoder"));
    t->template_ = make_template(field("post_processor"));

    const json::Value& m = detail::require(root, "model", "tokenizer.json");
    check(m.is_object(), "tokenizer.json", "model expected an object, got ", m.type_name());
    std::string type;
    if (const auto ty = detail::get_optional_string(m, "type", "model")) type = *ty;
    else if (m.contains("merges")) type = "BPE";  // files written before "type" was serialized
    else if (m.contains("max_input_chars_per_word")) type = "WordPiece";
    else fail("tokenizer.json", "model: missing string field \"type\"");
    const bool byte_level = t->pre_tokenizer_ && t->pre_tokenizer_->byte_level();
    if (type == "BPE") t->model_ = std::make_unique<BpeModel>(m, byte_level);
    else if (type == "WordPiece") t->model_ = WordPieceModel::from_json(m);
    else if (type == "WordLevel") t->model_ = std::make_unique<WordLevelModel>(m);
    else if (type == "Unigram") fail("tokenizer.json", "model.type \"Unigram\" is not supported: load the model's tokenizer.model (SentencePiece) instead");
    else fail("tokenizer.json", "model.type \"", type, "\" is not supported (supported: BPE, WordPiece, WordLevel)");
    check(!byte_level || type == "BPE", "tokenizer.json", "a ByteLevel pre-tokenizer needs a BPE model, got ", type);

    std::vector<AddedToken> added;
    if (const json::Value& a = field("added_tokens"); !a.is_null()) {
      const auto& list = a.as_array("added_tokens");
      for (std::size_t i = 0; i < list.size(); ++i) added.push_back(AddedToken::from_json(list[i], i));
    }
    t->finish(std::move(added), config);
    return t;
  }

  /// Reads a tokenizer.json file, and tokenizer_config.json beside it when present.
  static std::unique_ptr<HfTokenizer> from_file(const std::filesystem::path& path) {
    const std::string text = detail::read_text_file(path, "tokenizers::HfTokenizer: ");
    const json::Value root = json::parse(text, path.string());
    const auto config_path = path.parent_path() / "tokenizer_config.json";
    std::optional<json::Value> config;
    if (std::filesystem::exists(config_path)) config = json::parse(detail::read_text_file(config_path, "tokenizers::HfTokenizer: "), config_path.string());
    return from_json(root, config ? &*config : nullptr);
  }

  /// BERT's vocab.txt (one token per line, id = line number): BertNormalizer, BertPreTokenizer,
  /// WordPiece, [CLS] $A [SEP]. Lowercasing follows do_lower_case in tokenizer_config.json when
  /// present, else is on when no ordinary token has an upper-case ASCII letter (an uncased vocabulary).
  static std::unique_ptr<HfTokenizer> from_wordpiece_vocab(const std::filesystem::path& path) {
    const std::string text = detail::read_text_file(path, "tokenizers::HfTokenizer: ");
    detail::VocabMap vocab;
    std::vector<std::string> tokens;
    bool has_upper = false;
    for (std::size_t pos = 0; pos < text.size();) {
      std::size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      std::string line = text.substr(pos, end - pos);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      pos = end + 1;
      check(!line.empty() || pos >= text.size(), "tokenizers::HfTokenizer", path.string(), ": empty line for id ", tokens.size());
      if (line.empty()) break;
      if (!(line.front() == '[' && line.back() == ']'))
        for (char c : line) has_upper |= c >= 'A' && c <= 'Z';
      vocab.emplace(line, std::int32_t(tokens.size()));
      tokens.push_back(std::move(line));
    }
    check(!tokens.empty(), "tokenizers::HfTokenizer", path.string(), ": empty vocabulary");
    bool lowercase = !has_upper;
    const auto config_path = path.parent_path() / "tokenizer_config.json";
    std::optional<json::Value> config;
    if (std::filesystem::exists(config_path)) {
      config = json::parse(detail::read_text_file(config_path, "tokenizers::HfTokenizer: "), config_path.string());
      lowercase = detail::get_bool(*config, "do_lower_case", lowercase, "tokenizer_config");
    }
    auto t = std::unique_ptr<HfTokenizer>(new HfTokenizer());
    t->normalizer_ = std::make_unique<BertNormalizer>(true, true, lowercase, lowercase);
    t->pre_tokenizer_ = std::make_unique<BertPreTokenizer>();
    t->decoder_ = std::make_unique<WordPieceDecoder>("##", true);
    std::vector<AddedToken> added;
    for (const char* name : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"})
      if (const auto id = detail::lookup(vocab, name)) added.push_back({*id, name, false, false, false, false, true});
    const auto cls = detail::lookup(vocab, "[CLS]"), sep = detail::lookup(vocab, "[SEP]");
    if (cls && sep) t->template_ = Template{{*cls}, {*sep}};
    t->model_ = std::make_unique<WordPieceModel>(std::move(vocab), std::move(tokens), "[UNK]", "##", 100);
    t->finish(std::move(added), config ? &*config : nullptr);
    return t;
  }

  std::vector<std::int32_t> encode(std::string_view text, bool add_special = true) const override {
    std::string repaired;
    if (!utf8::is_valid(text)) text = repaired = utf8::repair(text);
    std::vector<std::int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    detail::WordCache cache;
    std::vector<std::int32_t> word_ids;
    const auto encode_word = [&](std::string_view word, bool) {
      if (cache.lookup(word, ids)) return;
      word_ids.clear();
      model_->tokenize(word, word_ids);
      cache.insert(word, word_ids);
      ids.insert(ids.end(), word_ids.begin(), word_ids.end());
    };
    std::vector<Segment> raw, normalized;
    added_.split(text, false, raw);
    for (const Segment& seg : raw) {
      if (seg.token >= 0) {
        ids.push_back(added_.tokens()[std::size_t(seg.token)].id);
        continue;
      }
      std::string normed;
      std::string_view piece = text.substr(seg.begin, seg.end - seg.begin);
      if (normalizer_) piece = normed = normalizer_->normalize(piece);
      normalized.clear();
      added_.split(piece, true, normalized);
      for (const Segment& sub : normalized) {
        if (sub.token >= 0) {
          ids.push_back(added_.tokens()[std::size_t(sub.token)].id);
          continue;
        }
        const std::string_view words = piece.substr(sub.begin, sub.end - sub.begin);
        const bool at_start = seg.begin == 0 && sub.begin == 0;
        if (pre_tokenizer_) pre_tokenizer_->split(words, at_start, encode_word);
        else if (!words.empty()) encode_word(words, at_start);
      }
    }
    if (add_special) template_.apply(ids);
    return ids;
  }

  std::string decode(std::span<const std::int32_t> ids, bool skip_special = false) const override {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const std::int32_t id = ids[i];
      check(id >= 0 && id < size_, "tokenizers::HfTokenizer::decode", "id ", id, " at index ", i, " outside [0, ", size_, ")");
      if (const std::int32_t a = added_index_[std::size_t(id)]; a >= 0) {
        const AddedToken& t = added_.tokens()[std::size_t(a)];
        if (!(skip_special && t.special)) tokens.push_back(t.content);
        continue;
      }
      const std::string* token = model_->id_to_token(id);
      check(token != nullptr, "tokenizers::HfTokenizer::decode", "id ", id, " at index ", i, " has no token in the vocabulary");
      tokens.push_back(*token);
    }
    std::string out;
    if (decoder_) {
      decoder_->decode_chain(tokens);
      for (const std::string& t : tokens) out += t;
    } else {
      for (std::size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    }
    return out;
  }

  Index vocab_size() const override { return size_; }
  std::string id_to_token(std::int32_t id) const override {
    check(id >= 0 && id < size_, "tokenizers::HfTokenizer::id_to_token", "id ", id, " outside [0, ", size_, ")");
    if (const std::int32_t a = added_index_[std::size_t(id)]; a >= 0) return added_.tokens()[std::size_t(a)].content;
    const std::string* token = model_->id_to_token(id);
    check(token != nullptr, "tokenizers::HfTokenizer::id_to_token", "id ", id, " has no token in the vocabulary");
    return *token;
  }
  std::optional<std::int32_t> find_token(std::string_view token) const override {
    for (const AddedToken& t : added_.tokens())
      if (t.content == token) return t.id;
    return model_->token_to_id(token);
  }
  bool is_special(std::int32_t id) const override {
    return id >= 0 && id < size_ && added_index_[std::size_t(id)] >= 0 && added_.tokens()[std::size_t(added_index_[std::size_t(id)])].special;
  }
  std::optional<std::int32_t> bos() const override { return bos_; }
  std::optional<std::int32_t> eos() const override { return eos_; }

  /// The ids encode(text, true) puts around the text.
  const Template& special_template() const { return template_; }

 private:
  HfTokenizer() = default;

  void finish(std::vector<AddedToken> added, const json::Value* config) {
    size_ = model_->size();
    for (const AddedToken& t : added) size_ = std::max(size_, t.id + 1);
    for (std::int32_t id : template_.before) size_ = std::max(size_, id + 1);
    for (std::int32_t id : template_.after) size_ = std::max(size_, id + 1);
    added_index_.assign(std::size_t(size_), -1);
    for (std::size_t i = 0; i < added.size(); ++i) added_index_[std::size_t(added[i].id)] = std::int32_t(i);
    added_ = AddedVocabulary(std::move(added), normalizer_.get());
    const auto named = [&](std::string_view key, std::initializer_list<std::string_view> fallbacks,
                           const std::vector<std::int32_t>& from_template, bool front) -> std::optional<std::int32_t> {
      if (const auto name = detail::config_token(config, key)) return find_token(*name);
      if (!from_template.empty()) return front ? from_template.front() : from_template.back();
      for (std::string_view f : fallbacks)
        if (const auto id = find_token(f)) return id;
      return std::nullopt;
    };
    bos_ = named("bos_token", {"<|begin_of_text|>", "<s>", "<|endoftext|>"}, template_.before, true);
    eos_ = named("eos_token", {"<|end_of_text|>", "</s>", "<|endoftext|>"}, template_.after, false);
  }

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Decoder> decoder_;
  Template template_;
  AddedVocabulary added_;
  std::vector<std::int32_t> added_index_;  // id -> index into added_.tokens(), or -1
  std::int32_t size_ = 0;
  std::optional<std::int32_t> bos_, eos_;
};

}  // namespace tokenizers
ENGRAM_NAMESPACE_END
