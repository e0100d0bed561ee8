// The KV cache as token tables: per KV head, rows of (key, value, absolute position) plus any
// per-token columns an eviction policy registers; one gather compacts every column at once.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engram/core/tensor.hpp"

ENGRAM_NAMESPACE_BEGIN

/// The cached tokens of one KV head. Row i of every column belongs to the same token, always:
/// append() adds to all columns and gather() keeps the same rows of all columns.
template <class T>
class TokenTable {
 public:
  TokenTable() = default;
  explicit TokenTable(Index head_dim) : d_(head_dim), k_({0, head_dim}), v_({0, head_dim}), pos_({0, 1}) {}

  Index size() const { return k_.rows(); }
  Index head_dim() const { return d_; }
  ConstView<T> keys() const { return k_.view(); }
  ConstView<T> values() const { return v_.view(); }
  View<T> keys() { return k_.view(); }
  View<T> values() { return v_.view(); }
  std::int64_t position(Index i) const { return pos_(i, 0); }
  std::vector<std::int64_t> positions() const {
    std::vector<std::int64_t> p(static_cast<std::size_t>(size()));
    for (Index i = 0; i < size(); ++i) p[std::size_t(i)] = pos_(i, 0);
    return p;
  }

  /// Registers a per-token column of `width` values (zero for tokens already cached); returns its
  /// id. Registering an existing name with the same width returns the existing id.
  Index add_column(const std::string& name, Index width) {
    check(width > 0, "TokenTable::add_column", "column \"", name, "\" needs a positive width, got ", width);
    for (std::size_t i = 0; i < cols_.size(); ++i)
      if (cols_[i].first == name) {
        check(cols_[i].second.cols() == width, "TokenTable::add_column", "column \"", name, "\" exists with width ",
              cols_[i].second.cols(), ", requested ", width);
        return Index(i);
      }
    cols_.emplace_back(name, Tensor<T>({size(), width}));
    return Index(cols_.size() - 1);
  }
  /// Id of a column, or -1.
  Index column_id(std::string_view name) const {
    for (std::size_t i = 0; i < cols_.size(); ++i)
      if (cols_[i].first == name) return Index(i);
    return -1;
  }
  View<T> column(Index id) { return cols_.at(std::size_t(id)).second.view(); }
  ConstView<T> column(Index id) const { return cols_.at(std::size_t(id)).second.view(); }
  Index n_columns() const { return Index(cols_.size()); }

  /// Appends n tokens: keys and values [n, head_dim], absolute positions [n]. Extra columns get zeros.
  void append(ConstView<T> k, ConstView<T> v, std::span<const std::int64_t> positions) {
    const Index n = k.rows();
    check_shape(k, -1, d_, "TokenTable::append", "keys");
    check_shape(v, n, d_, "TokenTable::append", "values");
    check(Index(positions.size()) == n, "TokenTable::append", "expected ", n, " positions, got ", positions.size());
    const Index old = size();
    k_.resize_rows(old + n);
    v_.resize_rows(old + n);
    pos_.resize_rows(old + n);
    for (auto& [_, c] : cols_) c.resize_rows(old + n);
    for (Index i = 0; i < n; ++i) {
      std::copy_n(k.row(i), d_, k_.row(old + i));
      std::copy_n(v.row(i), d_, v_.row(old + i));
      pos_(old + i, 0) = positions[std::size_t(i)];
    }
  }

  /// Keeps the rows `kept` (strictly increasing indices) in order in every column. Freed memory is
  /// returned once at least half the capacity is unused (a quarter of headroom is kept, so a policy
  /// that evicts one token per decoded token never reallocates). Throws Error for an index out of
  /// range or out of order.
  void gather(std::span<const Index> kept) {
    for (std::size_t i = 0; i < kept.size(); ++i) {
      check(kept[i] >= 0 && kept[i] < size(), "TokenTable::gather", "index ", kept[i], " outside [0, ", size(), ")");
      check(i == 0 || kept[i] > kept[i - 1], "TokenTable::gather", "indices must be strictly increasing (", kept[i - (i > 0)],
            " then ", kept[i], ")");
    }
    compact(k_, kept);
    compact(v_, kept);
    compact(pos_, kept);
    for (auto& [_, c] : cols_) compact(c, kept);
  }

  /// Drops every token (columns stay registered).
  void clear() {
    k_ = Tensor<T>({0, d_});
    v_ = Tensor<T>({0, d_});
    pos_ = Tensor<std::int64_t>({0, 1});
    for (auto& [_, c] : cols_) c = Tensor<T>({0, c.cols()});
  }

  /// Bytes actually allocated by every column.
  std::size_t bytes() const {
    std::size_t b = k_.bytes() + v_.bytes() + pos_.bytes();
    for (const auto& [_, c] : cols_) b += c.bytes();
    return b;
  }

  TokenTable copy() const {
    TokenTable t;
    t.d_ = d_;
    t.k_ = k_.copy();
    t.v_ = v_.copy();
    t.pos_ = pos_.copy();
    for (const auto& [name, c] : cols_) t.cols_.emplace_back(name, c.copy());
    return t;
  }

 private:
  template <class U>
  static void compact(Tensor<U>& t, std::span<const Index> kept) {
    // kept[i] >= i, so moving rows forward in order never overwrites a row still to be read.
    for (std::size_t i = 0; i < kept.size(); ++i)
      if (kept[i] != Index(i)) std::copy_n(t.row(kept[i]), t.stride(), t.row(Index(i)));
    const Index n = Index(kept.size());
    t.resize_rows(n);
    if (t.capacity_rows() >= 2 * n) t.shrink_to(n + n / 4);
  }

  Index d_ = 0;
  Tensor<T> k_, v_;
  Tensor<std::int64_t> pos_;
  std::vector<std::pair<std::string, Tensor<T>>> cols_;
};

/// The cache of one attention layer: a token table per KV head.
template <class T>
class LayerCache {
 public:
  LayerCache() = default;
  LayerCache(Index n_kv_heads, Index head_dim) {
    for (Index h = 0; h < n_kv_heads; ++h) heads_.emplace_back(head_dim);
  }

  Index n_heads() const { return Index(heads_.size()); }
  TokenTable<T>& head(Index h) { return heads_.at(std::size_t(h)); }
  const TokenTable<T>& head(Index h) const { return heads_.at(std::size_t(h)); }
  /// Largest per-head token count.
  Index max_size() const {
    Index m = 0;
    for (const auto& h : heads_) m = std::max(m, h.size());
    return m;
  }
  /// Total tokens over heads.
  Index total_tokens() const {
    Index n = 0;
    for (const auto& h : heads_) n += h.size();
    return n;
  }

  /// Registers a column in every head; returns its id (the same in every head).
  Index add_column(const std::string& name, Index width) {
    Index id = -1;
    for (auto& h : heads_) id = h.add_column(name, width);
    return id;
  }

  /// Appends the keys/values of n new tokens, laid out [n, n_heads * head_dim] (head h in columns
  /// h*d .. h*d+d-1), to every head.
  void append(ConstView<T> k_all, ConstView<T> v_all, std::span<const std::int64_t> positions) {
    const Index d = heads_.empty() ? 0 : heads_[0].head_dim();
    check_shape(k_all, -1, n_heads() * d, "LayerCache::append", "keys");
    for (Index h = 0; h < n_heads(); ++h)
      heads_[std::size_t(h)].append(k_all.middle_cols(h * d, d), v_all.middle_cols(h * d, d), positions);
  }

  std::size_t bytes() const {
    std::size_t b = 0;
    for (const auto& h : heads_) b += h.bytes();
    return b;
  }
  LayerCache copy() const {
    LayerCache c;
    for (const auto& h : heads_) c.heads_.push_back(h.copy());
    return c;
  }
  void clear() {
    for (auto& h : heads_) h.clear();
  }

 private:
  std::vector<TokenTable<T>> heads_;
};

ENGRAM_NAMESPACE_END
