// RMT configuration: memory size, segment size, layout (decoder / encoder), memory mask, alignment,
// and the checks that tie them to a backbone's ModelConfig.
#pragma once

#include <string_view>

#include "engram/core/error.hpp"
#include "engram/nn/config.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace rmt {

/// How a segment and its memory are laid out for the backbone (rmt.md 1.2, 1.3).
enum class Layout {
  decoder,  ///< [read memory | x | write memory], s + 2m rows; next memory = final hidden rows of the write block
  encoder   ///< [CLS] memory [SEP] x [SEP] PAD.. padded to input_size; next memory = last hidden rows 1..m
};

/// Attention among memory rows in the decoder layout.
enum class MemoryMask {
  causal,        ///< the backbone's causal mask only (HF MemoryCell, rmt.md 1.3)
  bidirectional  ///< NeurIPS-22 (rmt.md 1.4): read-memory rows see all read memory, write-memory rows all write memory
};

/// Where a short segment goes when the length is not a multiple of the segment size (rmt.md 2.1).
enum class Alignment {
  left,  ///< segments of s from the start, the last one short (decoder default)
  right  ///< the first segment short, the last ones full (encoder default); needs the length in advance
};

inline std::string_view name(Layout l) { return l == Layout::decoder ? "decoder" : "encoder"; }
inline std::string_view name(MemoryMask m) { return m == MemoryMask::causal ? "causal" : "bidirectional"; }
inline std::string_view name(Alignment a) { return a == Alignment::left ? "left" : "right"; }

/// Everything that fixes an RMT wrapper around a backbone. Positions restart at 0 every segment in
/// both layouts (the official code passes no position ids), so the backbone only needs positions
/// for one segment's layout.
struct Config {
  Layout layout = Layout::decoder;
  Index memory_tokens = 0;  ///< m
  Index segment_size = 0;   ///< s: content tokens per segment
  MemoryMask memory_mask = MemoryMask::causal;
  Alignment alignment = Alignment::left;
  // Encoder layout only.
  Index input_size = 0;  ///< rows per segment, padded; segment_size = input_size - m - 3 ([CLS], [SEP], [SEP])
  std::int32_t cls_id = 0, sep_id = 0, pad_id = 0;

  /// Decoder layout (HF MemoryCell / RecurrentWrapper defaults: causal mask, left alignment).
  static Config decoder(Index memory_tokens, Index segment_size, MemoryMask mask = MemoryMask::causal) {
    Config c;
    c.memory_tokens = memory_tokens;
    c.segment_size = segment_size;
    c.memory_mask = mask;
    return c;
  }
  /// Encoder layout of the BERT experiments (right alignment, segment_size = input_size - m - 3).
  static Config encoder(Index memory_tokens, Index input_size, std::int32_t cls, std::int32_t sep, std::int32_t pad) {
    Config c;
    c.layout = Layout::encoder;
    c.memory_tokens = memory_tokens;
    c.input_size = input_size;
    // 3 special tokens: [CLS] before the memory, [SEP] after it and [SEP] after the segment.
    c.segment_size = input_size - memory_tokens - 3;
    c.alignment = Alignment::right;
    c.cls_id = cls, c.sep_id = sep, c.pad_id = pad;
    return c;
  }

  /// Rows the backbone sees per segment of `s` content tokens: s + 2m (decoder) or input_size (encoder).
  Index rows(Index s) const { return layout == Layout::decoder ? s + 2 * memory_tokens : input_size; }
  /// Row of the first content token inside a segment's layout.
  Index content_row() const { return layout == Layout::decoder ? memory_tokens : memory_tokens + 2; }
  /// First row of the memory the segment writes (the next memory).
  Index write_row(Index s) const { return layout == Layout::decoder ? memory_tokens + s : 1; }

  /// Bounds validate() enforces: far beyond the papers (m <= 128, s <= 4096), small enough that a
  /// segment's layout s + 2m and its buffers never overflow.
  static constexpr Index kMaxMemoryTokens = Index(1) << 16;
  static constexpr Index kMaxSegment = Index(1) << 24;

  /// Throws Error naming the first value that does not fit `backbone`.
  void validate(const ModelConfig& backbone) const {
    const char* where = "rmt::Config";
    check(memory_tokens >= 0 && memory_tokens <= kMaxMemoryTokens, where, "memory_tokens must be in [0, ", kMaxMemoryTokens,
          "], got ", memory_tokens);
    check(segment_size >= 1 && segment_size <= kMaxSegment, where, "segment_size must be in [1, ", kMaxSegment, "], got ",
          segment_size);
    // A segment shorter than the memory spends more rows on memory than on the text it reads.
    check(segment_size >= memory_tokens, where, "segment_size ", segment_size, " is smaller than the memory (", memory_tokens, " tokens)");
    if (layout == Layout::decoder) {
      check(backbone.causal, where, "the decoder layout needs a causal backbone, got a bidirectional ", backbone.architecture);
      // RoPE has no table to run out of; learned positions must cover one segment's layout.
      if (backbone.positions == PositionKind::learned)
        check(rows(segment_size) <= backbone.max_positions, where, "segment_size + 2 * memory_tokens = ", segment_size, " + 2 * ",
              memory_tokens, " = ", rows(segment_size), " exceeds the backbone's max positions ", backbone.max_positions);
    } else {
      check(!backbone.causal, where, "the encoder layout needs a bidirectional backbone, got a causal ", backbone.architecture);
      check(input_size >= 1 && input_size <= kMaxSegment, where, "input_size must be in [1, ", kMaxSegment, "], got ", input_size);
      check(memory_tokens <= backbone.vocab_size, where, "memory_tokens ", memory_tokens,
            " exceeds the vocabulary (the encoder layout's memory is the last memory_tokens embedding rows), vocab_size ",
            backbone.vocab_size);
      check(memory_mask == MemoryMask::causal, where,
            "memory_mask bidirectional applies to the decoder layout (the encoder is bidirectional already)");
      check(segment_size == input_size - memory_tokens - 3, where, "segment_size must be input_size - memory_tokens - 3 = ",
            input_size, " - ", memory_tokens, " - 3 = ", input_size - memory_tokens - 3, ", got ", segment_size);
      if (backbone.positions == PositionKind::learned)
        check(input_size <= backbone.max_positions, where, "input_size ", input_size, " exceeds the backbone's max positions ",
              backbone.max_positions);
      for (std::int32_t id : {cls_id, sep_id, pad_id})
        check(id >= 0 && id < backbone.vocab_size, where, "special token id ", id, " outside the vocabulary [0, ",
              backbone.vocab_size, ")");
    }
  }
};

}  // namespace rmt
ENGRAM_NAMESPACE_END
