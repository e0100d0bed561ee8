// Byte-level tokenizer: ids 0..255 are the bytes of the text, a few specials follow, so the tasks
// need no vocabulary file and any byte string round-trips.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engram/core/error.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tasks {

struct ByteTokenizer {
  static constexpr std::int32_t pad = 256;     ///< padding
  static constexpr std::int32_t cls = 257;     ///< start of an encoder input ([CLS])
  static constexpr std::int32_t sep = 258;     ///< separator ([SEP])
  static constexpr std::int32_t answer = 259;  ///< "generate the answer now" (BABILong's GEN)
  static constexpr std::int32_t eos = 260;     ///< end of sequence
  static constexpr Index vocab_size = 261;

  static bool is_special(std::int32_t id) { return id >= 256 && id < std::int32_t(vocab_size); }

  /// One id per byte.
  static std::vector<std::int32_t> encode(std::string_view text) {
    std::vector<std::int32_t> ids(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) ids[i] = std::int32_t(static_cast<unsigned char>(text[i]));
    return ids;
  }

  /// Bytes of the ids; specials are written as <pad>, <cls>, <sep>, <ans>, <eos> unless skipped.
  /// Throws Error for an id outside [0, vocab_size).
  static std::string decode(std::span<const std::int32_t> ids, bool skip_specials = false) {
    static constexpr std::string_view names[] = {"<pad>", "<cls>", "<sep>", "<ans>", "<eos>"};
    std::string out;
    out.reserve(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const std::int32_t id = ids[i];
      check(id >= 0 && id < std::int32_t(vocab_size), "tasks::ByteTokenizer", "id ", id, " at index ", i, " outside [0, ", vocab_size, ")");
      if (id < 256) out.push_back(char(static_cast<unsigned char>(id)));
      else if (!skip_specials) out += names[id - 256];
    }
    return out;
  }
};

}  // namespace tasks
ENGRAM_NAMESPACE_END
