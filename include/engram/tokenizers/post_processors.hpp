// tokenizer.json post-processors: TemplateProcessing (the BOS/EOS or [CLS]/[SEP] template of a
// single sequence), BertProcessing, RobertaProcessing, ByteLevel (adds nothing) and Sequence.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engram/tokenizers/json_fields.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tokenizers {

/// The ids a single sequence becomes with special tokens: pieces of `before`, the sequence, `after`.
struct Template {
  std::vector<std::int32_t> before, after;

  void apply(std::vector<std::int32_t>& ids) const {
    ids.insert(ids.begin(), before.begin(), before.end());
    ids.insert(ids.end(), after.begin(), after.end());
  }
  /// Wraps this template in `t` (a Sequence of processors: each wraps the result of the previous).
  void append(const Template& t) {
    before.insert(before.begin(), t.before.begin(), t.before.end());
    after.insert(after.end(), t.after.begin(), t.after.end());
  }
};

namespace detail {
inline std::int32_t special_pair_id(const json::Value& pair, std::string_view where) {
  const auto& a = pair.as_array(std::string(where));
  check(a.size() == 2 && a[0].is_string() && a[1].is_integer(), "tokenizer.json", where, " expected [\"token\", id]");
  return std::int32_t(a[1].as_integer());
}
}  // namespace detail

/// Reads the single-sequence template of a tokenizer.json post_processor (empty for null).
inline Template make_template(const json::Value& v, std::string_view where = "post_processor") {
  Template t;
  if (v.is_null()) return t;
  const std::string& type = detail::type_of(v, where);
  if (type == "ByteLevel") return t;
  if (type == "Sequence") {
    for (const json::Value& p : detail::require(v, "processors", where).as_array("post_processor.processors"))
      t.append(make_template(p, where));
    return t;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    t.before.push_back(detail::special_pair_id(detail::require(v, "cls", where), std::string(where) + ".cls"));
    t.after.push_back(detail::special_pair_id(detail::require(v, "sep", where), std::string(where) + ".sep"));
    return t;
  }
  if (type == "TemplateProcessing") {
    std::map<std::string, std::vector<std::int32_t>> specials;
    if (const json::Value* s = v.find("special_tokens"); s && !s->is_null())
      for (const auto& [name, tok] : s->as_object("post_processor.special_tokens")) {
        std::vector<std::int32_t> ids;
        for (const json::Value& id : detail::require(tok, "ids", where).as_array("post_processor.special_tokens[].ids")) {
          check(id.is_integer(), "tokenizer.json", where, ".special_tokens[\"", name, "\"].ids expected integers");
          ids.push_back(std::int32_t(id.as_integer()));
        }
        specials[name] = std::move(ids);
      }
    bool seen_sequence = false;
    for (const json::Value& piece : detail::require(v, "single", where).as_array("post_processor.single")) {
      if (const json::Value* st = piece.find("SpecialToken")) {
        const std::string& name = detail::require_string(*st, "id", "post_processor.single[].SpecialToken");
        const auto it = specials.find(name);
        check(it != specials.end(), "tokenizer.json", where, ".single names special token \"", name, "\" that special_tokens lacks");
        auto& dst = seen_sequence ? t.after : t.before;
        dst.insert(dst.end(), it->second.begin(), it->second.end());
      } else if (const json::Value* sq = piece.find("Sequence")) {
        const std::string& id = detail::require_string(*sq, "id", "post_processor.single[].Sequence");
        check(id == "A" && !seen_sequence, "tokenizer.json", where, ".single expected the sequence $A once, got $", id);
        seen_sequence = true;
      } else {
        fail("tokenizer.json", where, ".single entries expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      }
    }
    check(seen_sequence, "tokenizer.json", where, ".single has no $A sequence");
    return t;
  }
  fail("tokenizer.json", where, ".type \"", type,
       "\" is not supported (supported: TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence)");
}

}  // namespace tokenizers
ENGRAM_NAMESPACE_END
