// Tape<T>: the per-step activation arena of training. A training forward pushes what its backward
// will need; the backward pops it in reverse order. Sized by the first step and reused, so a warm
// training step allocates nothing.
#pragma once

#include <memory>
#include <new>
#include <vector>

#include "engram/core/tensor.hpp"

ENGRAM_NAMESPACE_BEGIN

/// A last-in first-out arena of matrices. push() hands out a [rows, cols] view (64-byte aligned,
/// padded rows, contents unspecified) that stays valid until it is popped or rewound; pop() returns
/// the most recent one and checks its shape, so a forward and its backward that disagree about
/// what was saved fail loudly instead of reading the wrong buffer. mark()/rewind() drop everything
/// pushed since a mark (gradient checkpointing keeps a block's input and drops its internals).
///
/// Memory: blocks are never moved while in use. When a step needed more than one block, clear()
/// replaces them by one block of the high-water size, so from the second step on there is exactly
/// one allocation, made once.
template <class T>
class Tape {
 public:
  Tape() = default;
  Tape(Tape&&) noexcept = default;
  Tape& operator=(Tape&&) noexcept = default;

  /// A fresh [rows, cols] matrix on top of the tape.
  View<T> push(Index rows, Index cols) {
    check(rows >= 0 && cols >= 0, "Tape::push", "negative shape [", rows, ", ", cols, "]");
    const Index stride = padded_cols<T>(cols), need = rows * stride;
    if (blocks_.empty() || blocks_.back().used + need > blocks_.back().capacity) {
      // A new block: at least what the whole tape holds so far, so the number of blocks stays
      // logarithmic in the peak until clear() merges them.
      const Index grow = std::max<Index>(need, std::max<Index>(in_use_, Index(1) << 16));
      blocks_.push_back(Block{allocate(grow), grow, 0});
    }
    Block& b = blocks_.back();
    T* p = b.data.get() + b.used;
    entries_.push_back(Entry{blocks_.size() - 1, b.used, rows, cols, stride});
    b.used += need;
    in_use_ += need;
    peak_ = std::max(peak_, in_use_);
    return View<T>(p, rows, cols, stride);
  }

  /// Removes and returns the most recent matrix, which must be [rows, cols] (it stays readable
  /// until the next push).
  View<T> pop(Index rows, Index cols) {
    check(!entries_.empty(), "Tape::pop", "nothing saved: the backward pops more than its forward pushed");
    const Entry e = entries_.back();
    check(e.rows == rows && e.cols == cols, "Tape::pop", "expected the saved [", rows, ", ", cols, "] on top, found [", e.rows,
          ", ", e.cols, "]: backward and forward disagree about what was saved");
    drop_last();
    return View<T>(blocks_[e.block].data.get() + e.offset, e.rows, e.cols, e.stride);
  }
  /// The matrix `depth` entries below the top (0 = the top), without removing it.
  View<T> peek(Index depth = 0) const {
    check(depth >= 0 && depth < Index(entries_.size()), "Tape::peek", "depth ", depth, " with ", entries_.size(), " saved");
    const Entry& e = entries_[entries_.size() - 1 - std::size_t(depth)];
    return View<T>(blocks_[e.block].data.get() + e.offset, e.rows, e.cols, e.stride);
  }

  /// Number of matrices saved (a mark).
  Index mark() const { return Index(entries_.size()); }
  /// Drops every matrix pushed after `mark`.
  void rewind(Index mark) {
    check(mark >= 0 && mark <= Index(entries_.size()), "Tape::rewind", "mark ", mark, " with ", entries_.size(), " saved");
    while (Index(entries_.size()) > mark) drop_last();
  }
  /// Empties the tape; merges its blocks into one of the high-water size (the only allocation a
  /// steady training loop makes, once).
  void clear() {
    rewind(0);
    if (blocks_.size() > 1 || (blocks_.size() == 1 && blocks_[0].capacity < peak_)) {
      blocks_.clear();
      blocks_.push_back(Block{allocate(peak_), peak_, 0});
    }
  }

  bool empty() const { return entries_.empty(); }
  /// Bytes in use now, at most ever, and allocated.
  std::size_t bytes_in_use() const { return sizeof(T) * std::size_t(in_use_); }
  std::size_t peak_bytes() const { return sizeof(T) * std::size_t(peak_); }
  std::size_t capacity_bytes() const {
    std::size_t b = 0;
    for (const Block& blk : blocks_) b += sizeof(T) * std::size_t(blk.capacity);
    return b;
  }
  /// Number of separate allocations held (1 once warm).
  std::size_t blocks() const { return blocks_.size(); }

 private:
  struct Block {
    std::unique_ptr<T[], detail::AlignedDelete> data;
    Index capacity = 0, used = 0;
  };
  struct Entry {
    std::size_t block;
    Index offset, rows, cols, stride;
  };
  static std::unique_ptr<T[], detail::AlignedDelete> allocate(Index n) {
    void* p = ::operator new(sizeof(T) * std::size_t(n), std::align_val_t(kAlignment));
    return std::unique_ptr<T[], detail::AlignedDelete>(static_cast<T*>(p));
  }
  void drop_last() {
    const Entry e = entries_.back();
    entries_.pop_back();
    const Index size = e.rows * e.stride;
    blocks_[e.block].used -= size;
    in_use_ -= size;
  }

  std::vector<Block> blocks_;
  std::vector<Entry> entries_;
  Index in_use_ = 0, peak_ = 0;
};

ENGRAM_NAMESPACE_END
