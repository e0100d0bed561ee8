// The KV cache as token tables: per KV head, rows of (key, value, absolute position) plus any
// per-token columns an eviction policy registers; keys and values in f32, f16 or bf16. Eviction
// reuses the freed slots (O(tokens evicted), rows end up out of position order) or compacts in
// order; either way every column of a row moves together.
#pragma once

#include <algorithm>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "engram/core/attention.hpp"
#include "engram/core/half.hpp"
#include "engram/core/ops.hpp"
#include "engram/core/tensor.hpp"
#include "engram/core/weights.hpp"

ENGRAM_NAMESPACE_BEGIN

namespace kv_detail {
// Element types a policy column may hold.
template <class U>
constexpr int column_type() {
  if constexpr (std::is_same_v<U, float>) return 1;
  else if constexpr (std::is_same_v<U, double>) return 2;
  else if constexpr (std::is_same_v<U, std::int64_t>) return 3;
  else static_assert(sizeof(U) == 0, "policy columns hold float, double or std::int64_t");
}

// Fixed-size rows of bytes, 8-byte aligned and packed back to back (no per-row padding): the
// positions and the policy columns of a token table. Grows geometrically like Tensor.
class PackedRows {
 public:
  PackedRows() = default;
  explicit PackedRows(Index row_bytes) : row_bytes_(row_bytes) {}
  PackedRows(PackedRows&&) noexcept = default;
  PackedRows& operator=(PackedRows&&) noexcept = default;

  Index rows() const { return rows_; }
  Index row_bytes() const { return row_bytes_; }
  Index capacity_rows() const { return capacity_; }
  std::size_t bytes() const { return std::size_t(capacity_ * row_bytes_); }
  std::byte* row(Index r) { return data_.get() + r * row_bytes_; }
  const std::byte* row(Index r) const { return data_.get() + r * row_bytes_; }

  /// New rows are zero.
  void resize_rows(Index n) {
    if (n > capacity_) reallocate(std::max(n, capacity_ + capacity_ / 2 + 16));
    if (n > rows_) std::memset(row(rows_), 0, std::size_t((n - rows_) * row_bytes_));
    rows_ = n;
  }
  void shrink_to(Index capacity) {
    capacity = std::max(capacity, rows_);
    if (capacity < capacity_) reallocate(capacity);
  }
  void copy_row(Index from, Index to) { std::memcpy(row(to), row(from), std::size_t(row_bytes_)); }
  PackedRows copy() const {
    PackedRows p(row_bytes_);
    p.reallocate(rows_);
    p.rows_ = rows_;
    if (rows_ > 0) std::memcpy(p.data_.get(), data_.get(), std::size_t(rows_ * row_bytes_));
    return p;
  }
  /// The same rows with a wider layout: bytes [0, row_bytes()) of each row are kept, the rest is zero.
  PackedRows widened(Index row_bytes) const {
    PackedRows p(row_bytes);
    p.resize_rows(rows_);
    for (Index r = 0; r < rows_; ++r) std::memcpy(p.row(r), row(r), std::size_t(row_bytes_));
    return p;
  }

 private:
  void reallocate(Index capacity) {
    std::unique_ptr<std::byte[], detail::AlignedDelete> fresh;
    if (capacity > 0 && row_bytes_ > 0)
      fresh.reset(static_cast<std::byte*>(::operator new(std::size_t(capacity * row_bytes_), std::align_val_t(kAlignment))));
    if (rows_ > 0 && fresh) std::memcpy(fresh.get(), data_.get(), std::size_t(std::min(rows_, capacity) * row_bytes_));
    data_ = std::move(fresh);
    capacity_ = capacity;
  }

  Index row_bytes_ = 0, rows_ = 0, capacity_ = 0;
  std::unique_ptr<std::byte[], detail::AlignedDelete> data_;
};
}  // namespace kv_detail

/// The cached tokens of one KV head. Row i of every column belongs to the same token, always:
/// append() adds to all columns, evict() and gather() move or drop whole rows. Keys and values are
/// padded rows (what the attention kernel reads); the absolute position and the policy columns of a
/// token are packed into one unpadded row (8 bytes for the position plus each column at its own
/// size), so a one-float policy column costs 4 bytes per token, not 64.
///
/// Rows are not kept in position order: evict() reuses the freed slots by moving the last rows into
/// them. Attention does not care (a query sees every cached key; a multi-token step appends its
/// tokens contiguously after every cached token, so the causal mask by row is the causal mask by
/// position), policies select by position, and NAMM, whose scorer reads tokens oldest first,
/// evicts with the order-keeping gather().
///
/// Keys and values are stored in T (format f32, the default) or, for T = float, as f16 or bf16
/// (set_format on an empty table): half the bytes, rounded to nearest even on append. keys() and
/// values() are the T rows of an f32 table; keys16()/values16() the stored bits of a 16-bit one;
/// key_rows()/value_rows() read either as T.
template <class T>
class TokenTable {
 public:
  TokenTable() = default;
  explicit TokenTable(Index head_dim) : d_(head_dim), k_({0, head_dim}), v_({0, head_dim}), rows_(kPositionBytes) {}

  Index size() const { return half() ? k16_.rows() : k_.rows(); }
  Index head_dim() const { return d_; }
  /// How keys and values are stored: f32 (in T), f16 or bf16.
  WeightFormat format() const { return format_; }
  /// Stores keys and values as `format` (f32, f16 or bf16; 16-bit needs T = float); the table must
  /// be empty. Throws Error otherwise.
  void set_format(WeightFormat format) {
    check_kv_format<T>(format, "TokenTable::set_format");
    check(size() == 0, "TokenTable::set_format", "the table holds ", size(), " tokens; set the format of an empty cache");
    format_ = format;
    if (half()) {
      k_ = Tensor<T>(), v_ = Tensor<T>();
      k16_ = Tensor<std::uint16_t>({0, d_}), v16_ = Tensor<std::uint16_t>({0, d_});
    } else {
      k_ = Tensor<T>({0, d_}), v_ = Tensor<T>({0, d_});
      k16_ = Tensor<std::uint16_t>(), v16_ = Tensor<std::uint16_t>();
    }
  }
  /// Keys and values [size, head_dim] of an f32 table (an Error for a 16-bit one: see key_rows()).
  ConstView<T> keys() const { return native(k_, "keys"); }
  ConstView<T> values() const { return native(v_, "values"); }
  View<T> keys() { return native(k_, "keys"); }
  View<T> values() { return native(v_, "values"); }
  /// The stored bits of a 16-bit table's keys and values [size, head_dim] (an Error for f32).
  ConstView<std::uint16_t> keys16() const { return stored16(k16_, "keys16"); }
  ConstView<std::uint16_t> values16() const { return stored16(v16_, "values16"); }
  /// Keys of rows [first, first + n) as T: a view of the rows of an f32 table, or the 16-bit rows
  /// widened into `scratch` (exact: every f16/bf16 value is a float).
  ConstView<T> key_rows(Index first, Index n, Tensor<T>& scratch) const { return rows_as(k_, k16_, first, n, scratch, "key_rows"); }
  ConstView<T> value_rows(Index first, Index n, Tensor<T>& scratch) const { return rows_as(v_, v16_, first, n, scratch, "value_rows"); }
  /// Every key / value as T (key_rows over the whole table).
  ConstView<T> keys_as(Tensor<T>& scratch) const { return key_rows(0, size(), scratch); }
  ConstView<T> values_as(Tensor<T>& scratch) const { return value_rows(0, size(), scratch); }
  /// Overwrites the key of row r with key[0 .. head_dim) (rounded to the storage format).
  void set_key_row(Index r, const T* key) {
    check(r >= 0 && r < size(), "TokenTable::set_key_row", "row ", r, " outside [0, ", size(), ")");
    if (half()) narrow(key, k16_.row(r));
    else std::copy_n(key, d_, k_.row(r));
  }
  std::int64_t position(Index i) const {
    ENGRAM_ASSERT(i >= 0 && i < size());
    std::int64_t p;
    std::memcpy(&p, rows_.row(i), sizeof p);
    return p;
  }
  /// Absolute positions of the rows, in row order.
  std::vector<std::int64_t> positions() const {
    std::vector<std::int64_t> p(static_cast<std::size_t>(size()));
    for (Index i = 0; i < size(); ++i) p[std::size_t(i)] = position(i);
    return p;
  }
  /// Positions as a column view [size, 1] (row stride: the packed row).
  ConstView<std::int64_t> position_column() const { return view_of<const std::int64_t>(0, 1); }
  /// Index of the row holding the largest position (the newest token), or -1 when empty.
  Index newest_row() const {
    Index best = -1;
    for (Index i = 0; i < size(); ++i)
      if (best < 0 || position(i) > position(best)) best = i;
    return best;
  }

  /// Registers a per-token column of `width` values of type U (float, double or int64; zero for
  /// tokens already cached); returns its id. Registering an existing name with the same width and
  /// type returns the existing id.
  template <class U = T>
  Index add_column(const std::string& name, Index width) {
    check(width > 0, "TokenTable::add_column", "column \"", name, "\" needs a positive width, got ", width);
    for (std::size_t i = 0; i < cols_.size(); ++i)
      if (cols_[i].name == name) {
        check(cols_[i].width == width && cols_[i].type == kv_detail::column_type<U>(), "TokenTable::add_column", "column \"",
              name, "\" exists with width ", cols_[i].width, " (type ", cols_[i].type, "), requested ", width, " (type ",
              kv_detail::column_type<U>(), ")");
        return Index(i);
      }
    const Index used = rows_.row_bytes() - padding_;
    const Index offset = (used + Index(alignof(U)) - 1) / Index(alignof(U)) * Index(alignof(U));
    const Index end = offset + width * Index(sizeof(U));
    const Index row_bytes = (end + kRowAlign - 1) / kRowAlign * kRowAlign;  // every row starts 8-byte aligned
    rows_ = rows_.widened(row_bytes);
    padding_ = row_bytes - end;
    cols_.push_back(Column{name, width, kv_detail::column_type<U>(), offset});
    return Index(cols_.size() - 1);
  }
  /// Id of a column, or -1.
  Index column_id(std::string_view name) const {
    for (std::size_t i = 0; i < cols_.size(); ++i)
      if (cols_[i].name == name) return Index(i);
    return -1;
  }
  /// Column `id` as a [size, width] view of U (its registered type; the row stride is the packed row).
  template <class U = T>
  View<U> column(Index id) {
    const Column& c = checked_column<U>(id);
    return view_of<U>(c.offset, c.width);
  }
  template <class U = T>
  ConstView<U> column(Index id) const {
    const Column& c = checked_column<U>(id);
    return view_of<const U>(c.offset, c.width);
  }
  Index n_columns() const { return Index(cols_.size()); }

  /// Appends n tokens after every cached row: keys and values [n, head_dim], absolute positions
  /// [n]. Extra columns get zeros.
  void append(ConstView<T> k, ConstView<T> v, std::span<const std::int64_t> positions) {
    const Index n = k.rows();
    check_shape(k, -1, d_, "TokenTable::append", "keys");
    check_shape(v, n, d_, "TokenTable::append", "values");
    check(Index(positions.size()) == n, "TokenTable::append", "expected ", n, " positions, got ", positions.size());
    const Index old = size();
    each_kv([&](auto& t) { t.resize_rows(old + n); });
    rows_.resize_rows(old + n);
    for (Index i = 0; i < n; ++i) {
      if (half()) {
        narrow(k.row(i), k16_.row(old + i));
        narrow(v.row(i), v16_.row(old + i));
      } else {
        std::copy_n(k.row(i), d_, k_.row(old + i));
        std::copy_n(v.row(i), d_, v_.row(old + i));
      }
      std::memcpy(rows_.row(old + i), &positions[std::size_t(i)], sizeof(std::int64_t));
    }
  }

  /// Evicts the rows `rows` (distinct, any order). With slot reuse (the default) each freed slot
  /// below the new size receives one of the last rows, every column of it at once: the work is
  /// proportional to the tokens evicted, not to the tokens behind them, and the order of the
  /// remaining rows changes. Without slot reuse it is an order-keeping compaction (gather of the
  /// rest). Throws Error for an index out of range or repeated.
  void evict(std::span<const Index> rows) {
    if (rows.empty()) return;
    std::vector<Index>& e = scratch_;
    e.assign(rows.begin(), rows.end());
    std::sort(e.begin(), e.end());
    check(e.front() >= 0 && e.back() < size(), "TokenTable::evict", "index ", e.front() < 0 ? e.front() : e.back(),
          " outside [0, ", size(), ")");
    for (std::size_t i = 1; i < e.size(); ++i) check(e[i] != e[i - 1], "TokenTable::evict", "index ", e[i], " given twice");
    const Index n = size(), m = Index(e.size()), kept = n - m;
    if (!slot_reuse_) {
      std::vector<Index> rest;
      rest.reserve(std::size_t(kept));
      for (Index i = 0, j = 0; i < n; ++i) {
        if (j < m && e[std::size_t(j)] == i) ++j;
        else rest.push_back(i);
      }
      compact_all(rest);
      return;
    }
    // Holes: the evicted rows below `kept` (a prefix of e). Movers: the surviving rows at or above
    // `kept`, as many as there are holes.
    std::size_t hole = 0, j = std::size_t(std::lower_bound(e.begin(), e.end(), kept) - e.begin());
    for (Index src = kept; src < n; ++src) {
      if (j < e.size() && e[j] == src) {
        ++j;  // evicted itself: nothing to move
        continue;
      }
      move_row(src, e[hole++]);
    }
    resize_all(kept);
  }

  /// Keeps the rows `kept` (strictly increasing indices) in order in every column (O(size) work).
  /// Throws Error for an index out of range or out of order.
  void gather(std::span<const Index> kept) {
    for (std::size_t i = 0; i < kept.size(); ++i) {
      check(kept[i] >= 0 && kept[i] < size(), "TokenTable::gather", "index ", kept[i], " outside [0, ", size(), ")");
      check(i == 0 || kept[i] > kept[i - 1], "TokenTable::gather", "indices must be strictly increasing (", kept[i - (i > 0)],
            " then ", kept[i], ")");
    }
    compact_all(kept);
  }

  /// Whether evict() reuses slots (true, the default) or compacts in order (false: the slow,
  /// obvious reference the tests compare against).
  void set_slot_reuse(bool on) { slot_reuse_ = on; }
  bool slot_reuse() const { return slot_reuse_; }

  /// Drops every token (columns stay registered).
  void clear() {
    each_kv([&](auto& t) { t = std::remove_reference_t<decltype(t)>({0, d_}); });
    rows_ = kv_detail::PackedRows(rows_.row_bytes());
  }

  /// Bytes actually allocated by every column (capacity included).
  std::size_t bytes() const { return k_.bytes() + v_.bytes() + k16_.bytes() + v16_.bytes() + rows_.bytes(); }
  /// Bytes one token occupies: its key and value rows (padded for the kernels, in the storage
  /// format) and its packed row (position and policy columns).
  std::size_t bytes_per_token() const {
    const std::size_t kv = half() ? 2 * std::size_t(k16_.stride() + v16_.stride()) : sizeof(T) * std::size_t(k_.stride() + v_.stride());
    return kv + std::size_t(rows_.row_bytes());
  }
  /// Bytes per token of the position and the policy columns alone.
  std::size_t packed_row_bytes() const { return std::size_t(rows_.row_bytes()); }

  TokenTable copy() const {
    TokenTable t;
    t.d_ = d_;
    t.k_ = k_.copy();
    t.v_ = v_.copy();
    t.k16_ = k16_.copy();
    t.v16_ = v16_.copy();
    t.format_ = format_;
    t.rows_ = rows_.copy();
    t.cols_ = cols_;
    t.padding_ = padding_;
    t.slot_reuse_ = slot_reuse_;
    return t;
  }

 private:
  static constexpr Index kPositionBytes = 8, kRowAlign = 8;
  struct Column {
    std::string name;
    Index width = 0;
    int type = 0;
    Index offset = 0;  // bytes from the start of the packed row
  };

  template <class U>
  const Column& checked_column(Index id) const {
    check(id >= 0 && id < n_columns(), "TokenTable::column", "no column with id ", id, " (", n_columns(), " registered)");
    const Column& c = cols_[std::size_t(id)];
    check(c.type == kv_detail::column_type<std::remove_const_t<U>>(), "TokenTable::column", "column \"", c.name,
          "\" holds type ", c.type, ", read as type ", kv_detail::column_type<std::remove_const_t<U>>());
    return c;
  }
  template <class U>
  MatrixView<U> view_of(Index offset, Index width) const {
    using Byte = std::conditional_t<std::is_const_v<U>, const std::byte, std::byte>;
    Byte* base = size() > 0 ? const_cast<Byte*>(rows_.row(0)) + offset : nullptr;
    const Index stride = rows_.row_bytes() / Index(sizeof(U));
    return MatrixView<U>(reinterpret_cast<U*>(base), size(), width, stride);
  }

  bool half() const { return format_ != WeightFormat::f32; }
  // f(keys), f(values) on the storage in use (Tensor<T> or Tensor<std::uint16_t>).
  template <class F>
  void each_kv(F&& f) {
    if (half()) f(k16_), f(v16_);
    else f(k_), f(v_);
  }
  View<T> native(const Tensor<T>& t, const char* what) const {
    check(!half(), "TokenTable::", what, ": this cache stores its keys and values as ", format_name(format_),
          "; read them with key_rows()/value_rows() (as T) or keys16()/values16()");
    return const_cast<Tensor<T>&>(t).view();
  }
  ConstView<std::uint16_t> stored16(const Tensor<std::uint16_t>& t, const char* what) const {
    check(half(), "TokenTable::", what, ": this cache stores its keys and values in the model's type (f32); read keys()/values()");
    return t.view();
  }
  ConstView<T> rows_as(const Tensor<T>& t, const Tensor<std::uint16_t>& t16, Index first, Index n, Tensor<T>& scratch,
                       const char* what) const {
    check(first >= 0 && n >= 0 && first + n <= size(), "TokenTable::", what, ": rows [", first, ", ", first + n, ") outside [0, ", size(), ")");
    if (!half()) return t.view().middle_rows(first, n);
    if (scratch.rows() < n || scratch.cols() != d_) scratch = Tensor<T>({n, d_});
    const View<T> out = scratch.view().middle_rows(0, n);
    if constexpr (std::is_same_v<T, float>)
      if (n > 0) widen_rows(t16.view(), format_, first, n, out.data(), out.stride());
    return out;
  }
  // One row of d_ values rounded to the 16-bit format (set_format admits it for float only).
  void narrow(const T* x, std::uint16_t* out) const {
    if constexpr (std::is_same_v<T, float>) narrow_row(x, d_, format_, out);
    else (void)x, (void)out;
  }

  void move_row(Index from, Index to) {
    each_kv([&](auto& t) { std::copy_n(t.row(from), t.stride(), t.row(to)); });
    rows_.copy_row(from, to);
  }
  // Shrinks every column to n rows; memory is returned once at least half the capacity is unused
  // (a quarter of headroom is kept, so one token in and one out per step never reallocates).
  void resize_all(Index n) {
    each_kv([&](auto& t) { t.resize_rows(n); });
    rows_.resize_rows(n);
    if ((half() ? k16_.capacity_rows() : k_.capacity_rows()) >= 2 * n) {
      each_kv([&](auto& t) { t.shrink_to(n + n / 4); });
      rows_.shrink_to(n + n / 4);
    }
  }
  void compact_all(std::span<const Index> kept) {
    // kept[i] >= i, so moving rows forward in order never overwrites a row still to be read.
    for (std::size_t i = 0; i < kept.size(); ++i)
      if (kept[i] != Index(i)) move_row(kept[i], Index(i));
    resize_all(Index(kept.size()));
  }

  Index d_ = 0;
  Tensor<T> k_, v_;                    // format f32
  Tensor<std::uint16_t> k16_, v16_;    // format f16 / bf16
  WeightFormat format_ = WeightFormat::f32;
  kv_detail::PackedRows rows_{kPositionBytes};
  std::vector<Column> cols_;
  Index padding_ = 0;  // unused bytes at the end of a packed row (alignment)
  bool slot_reuse_ = true;
  std::vector<Index> scratch_;
};

/// How a layer's keys were rotated (RoPE frequencies after scaling, and the channel pairing);
/// empty `inv_freq` for layers without RoPE. The decoder fills it so that policies can re-rotate
/// keys (StreamingLLM) or rotate query statistics (ExpectedAttention).
struct KeyRotation {
  std::vector<double> inv_freq;
  RopePairing pairing = RopePairing::rotate_half;
  bool rope() const { return !inv_freq.empty(); }
};

/// Views of every KV head's keys and values of a layer cache, as attention() reads them (in T, or
/// the stored 16-bit bits). Reusable: LayerCache::views() refills it without reallocating.
template <class T>
struct CacheViews {
  std::vector<ConstView<T>> k, v;
  std::vector<ConstView<std::uint16_t>> k16, v16;
  WeightFormat format = WeightFormat::f32;
  /// Points the input's keys and values (k/v, or k16/v16 and kv_format) at these views.
  void bind(AttentionInput<T>& in) const {
    in.kv_format = format;
    if (format == WeightFormat::f32) in.k = k, in.v = v, in.k16 = {}, in.v16 = {};
    else in.k16 = k16, in.v16 = v16, in.k = {}, in.v = {};
  }
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
  template <class U = T>
  Index add_column(const std::string& name, Index width) {
    Index id = -1;
    for (auto& h : heads_) id = h.template add_column<U>(name, width);
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

  /// Stores every head's keys and values as `format` (f32, f16 or bf16: TokenTable::set_format;
  /// the cache must be empty).
  void set_format(WeightFormat format) {
    for (auto& h : heads_) h.set_format(format);
  }
  /// How the keys and values are stored (every head the same).
  WeightFormat format() const { return heads_.empty() ? WeightFormat::f32 : heads_.front().format(); }
  /// Fills `out` with every head's keys and values (reusing its vectors).
  void views(CacheViews<T>& out) const {
    out.k.clear(), out.v.clear(), out.k16.clear(), out.v16.clear();
    out.format = format();
    for (const auto& h : heads_) {
      if (out.format == WeightFormat::f32) out.k.push_back(h.keys()), out.v.push_back(h.values());
      else out.k16.push_back(h.keys16()), out.v16.push_back(h.values16());
    }
  }

  /// Slot reuse (default) or order-keeping compaction for every head's evict().
  void set_slot_reuse(bool on) {
    for (auto& h : heads_) h.set_slot_reuse(on);
  }

  /// How the keys of this layer were rotated (empty for layers without RoPE).
  KeyRotation rotation;

  std::size_t bytes() const {
    std::size_t b = 0;
    for (const auto& h : heads_) b += h.bytes();
    return b;
  }
  LayerCache copy() const {
    LayerCache c;
    for (const auto& h : heads_) c.heads_.push_back(h.copy());
    c.rotation = rotation;
    return c;
  }
  void clear() {
    for (auto& h : heads_) h.clear();
  }

 private:
  std::vector<TokenTable<T>> heads_;
};

ENGRAM_NAMESPACE_END
