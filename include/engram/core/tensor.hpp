// Tensor<T>: owning, 64-byte aligned, row-major storage with padded rows; MatrixView: the
// non-owning 2-D view (rows, cols, row stride) that every kernel takes.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <new>
#include <ostream>
#include <type_traits>

#include <sys/mman.h>

#include "engram/core/config.hpp"
#include "engram/core/error.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Bytes every tensor row starts on: one AVX-512 register, one cache line.
inline constexpr Index kAlignment = 64;

/// Elements per padded row unit: 16 floats, 8 doubles.
template <class T>
inline constexpr Index kPadElems = kAlignment / Index(sizeof(T)) > 0 ? kAlignment / Index(sizeof(T)) : 1;

/// Row length rounded up to the padding unit.
template <class T>
constexpr Index padded_cols(Index cols) {
  return (cols + kPadElems<T> - 1) / kPadElems<T> * kPadElems<T>;
}

namespace detail {
struct UncheckedView {};
}  // namespace detail

/// A non-owning view of a row-major matrix: `rows` rows of `cols` elements, row r starting at
/// data + r * stride. T may be const. Construction validates the layout and throws Error.
template <class T>
class MatrixView {
 public:
  using value_type = std::remove_const_t<T>;

  MatrixView() = default;

  /// Wraps external memory. Throws Error for negative sizes, a stride shorter than a row, a null
  /// pointer with non-empty shape, or a pointer that is not aligned for T.
  MatrixView(T* data, Index rows, Index cols, Index stride) : data_(data), rows_(rows), cols_(cols), stride_(stride) {
    check(rows >= 0 && cols >= 0, "MatrixView", "negative shape [", rows, ", ", cols, "]");
    check(stride >= cols, "MatrixView", "row stride ", stride, " is shorter than a row of ", cols, " elements");
    check(data != nullptr || rows * cols == 0, "MatrixView", "null data for a [", rows, ", ", cols, "] view");
    check(reinterpret_cast<std::uintptr_t>(data) % alignof(value_type) == 0, "MatrixView",
          "data pointer is misaligned: expected a multiple of ", alignof(value_type), " bytes");
  }
  MatrixView(T* data, Index rows, Index cols) : MatrixView(data, rows, cols, cols) {}

  // A mutable view converts to a const one.
  operator MatrixView<const value_type>() const {
    return MatrixView<const value_type>(data_, rows_, cols_, stride_, detail::UncheckedView{});
  }

  T* data() const { return data_; }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  Index stride() const { return stride_; }
  bool empty() const { return rows_ == 0 || cols_ == 0; }

  T* row(Index r) const {
    ENGRAM_ASSERT(r >= 0 && r < rows_);
    return data_ + r * stride_;
  }
  T& operator()(Index r, Index c) const {
    ENGRAM_ASSERT(r >= 0 && r < rows_ && c >= 0 && c < cols_);
    return data_[r * stride_ + c];
  }

  /// Sub-matrix [r0, r0+nr) x [c0, c0+nc); bounds are checked.
  MatrixView block(Index r0, Index nr, Index c0, Index nc) const {
    check(r0 >= 0 && nr >= 0 && r0 + nr <= rows_ && c0 >= 0 && nc >= 0 && c0 + nc <= cols_, "MatrixView::block",
          "block [", r0, "+", nr, ", ", c0, "+", nc, "] outside a [", rows_, ", ", cols_, "] view");
    return MatrixView(data_ + r0 * stride_ + c0, nr, nc, stride_, detail::UncheckedView{});
  }
  MatrixView middle_rows(Index r0, Index nr) const { return block(r0, nr, 0, cols_); }
  MatrixView middle_cols(Index c0, Index nc) const { return block(0, rows_, c0, nc); }

  /// True when rows start 64-byte aligned and the stride is a whole number of padding units, so a
  /// kernel may read full SIMD registers up to padded_cols(cols) in every row.
  bool is_padded() const {
    return reinterpret_cast<std::uintptr_t>(data_) % kAlignment == 0 && stride_ % kPadElems<value_type> == 0 &&
           stride_ >= padded_cols<value_type>(cols_);
  }

 private:
  template <class U>
  friend class MatrixView;
  MatrixView(T* data, Index rows, Index cols, Index stride, detail::UncheckedView) : data_(data), rows_(rows), cols_(cols), stride_(stride) {}

  T* data_ = nullptr;
  Index rows_ = 0, cols_ = 0, stride_ = 0;
};

template <class T>
using View = MatrixView<T>;
template <class T>
using ConstView = MatrixView<const T>;

/// Shape of a tensor of rank 0 to 4 (rank 0 is a scalar with one element).
class Shape {
 public:
  static constexpr int kMaxRank = 4;
  Shape() = default;
  Shape(std::initializer_list<Index> dims) {
    check(dims.size() <= kMaxRank, "Shape", "rank ", dims.size(), " exceeds the maximum of ", kMaxRank);
    for (Index d : dims) {
      check(d >= 0, "Shape", "negative dimension ", d);
      dims_[rank_++] = d;
    }
    check_count();
  }
  template <class It>
  static Shape from_range(It first, It last) {
    Shape s;
    for (; first != last; ++first) {
      check(s.rank_ < kMaxRank, "Shape", "rank exceeds the maximum of ", kMaxRank);
      check(Index(*first) >= 0, "Shape", "negative dimension ", Index(*first));
      s.dims_[s.rank_++] = Index(*first);
    }
    s.check_count();
    return s;
  }
  int rank() const { return rank_; }
  Index operator[](int i) const {
    ENGRAM_ASSERT(i >= 0 && i < rank_);
    return dims_[i];
  }
  /// Last dimension (1 for a scalar).
  Index cols() const { return rank_ == 0 ? 1 : dims_[rank_ - 1]; }
  /// Product of all but the last dimension (1 for rank 0 and 1).
  Index rows() const {
    Index r = 1;
    for (int i = 0; i + 1 < rank_; ++i) r *= dims_[i];
    return r;
  }
  Index numel() const { return rows() * cols(); }
  bool operator==(const Shape& o) const {
    return rank_ == o.rank_ && std::equal(dims_.begin(), dims_.begin() + rank_, o.dims_.begin());
  }
  friend std::ostream& operator<<(std::ostream& out, const Shape& s) {
    out << '[';
    for (int i = 0; i < s.rank_; ++i) out << (i ? ", " : "") << s.dims_[i];
    return out << ']';
  }

 private:
  // The element count must be representable, so rows() and numel() never overflow (a shape from a
  // hostile file or config is an Error here, not a tensor without storage).
  void check_count() const {
    Index n = 1;
    for (int i = 0; i < rank_; ++i)
      if (__builtin_mul_overflow(n, dims_[i], &n)) fail("Shape", "the element count of ", *this, " overflows a 64-bit index");
  }

  std::array<Index, kMaxRank> dims_{};
  int rank_ = 0;
};

namespace detail {
struct AlignedDelete {
  void operator()(void* p) const { ::operator delete(p, std::align_val_t(kAlignment)); }
};
/// A Tensor's storage: from operator new (mapped == 0) or an anonymous mapping of `mapped` bytes.
struct StorageDelete {
  std::size_t mapped = 0;
  void operator()(void* p) const {
    if (mapped) ::munmap(p, mapped);
    else ::operator delete(p, std::align_val_t(kAlignment));
  }
};
}  // namespace detail

/// Owning tensor: row-major, 64-byte aligned, the last dimension padded to kPadElems<T> elements
/// (padding is zero-initialised; kernels may overwrite it, readers must ignore it). Move-only:
/// deep copies are explicit through copy().
template <class T>
class Tensor {
  static_assert(std::is_trivially_copyable_v<T>, "Tensor holds trivially copyable scalars");

 public:
  using value_type = T;

  /// An empty tensor (shape [0]) with no storage.
  Tensor() = default;
  /// Zero-filled tensor of the given shape.
  explicit Tensor(const Shape& shape) { allocate(shape); }
  /// A zero tensor whose memory, from 1 MiB up, is an anonymous mapping: the kernel's zero pages
  /// back it until it is written, so one that is replaced before use never becomes resident (a
  /// model's weights built before a loader keeps the checkpoint's rows in place instead).
  static Tensor lazily_zeroed(const Shape& shape) {
    Tensor t;
    t.allocate(shape, true);
    return t;
  }
  Tensor(std::initializer_list<Index> dims) : Tensor(Shape(dims)) {}

  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  /// Deep copy.
  Tensor copy() const {
    Tensor out;
    out.shape_ = shape_;
    out.stride_ = stride_;
    out.capacity_rows_ = shape_.rows();
    out.data_ = allocate_storage(out.capacity_rows_, stride_);
    if (numel() > 0) std::memcpy(out.data_.get(), data_.get(), sizeof(T) * std::size_t(shape_.rows() * stride_));
    return out;
  }

  /// Tensor with the contents of a view (padding added).
  static Tensor from_view(ConstView<T> v) {
    Tensor out({v.rows(), v.cols()});
    for (Index r = 0; r < v.rows(); ++r) std::copy_n(v.row(r), v.cols(), out.row(r));
    return out;
  }

  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  Index dim(int i) const { return shape_[i]; }
  Index rows() const { return shape_.rows(); }
  Index cols() const { return shape_.cols(); }
  Index stride() const { return stride_; }
  Index numel() const { return shape_.numel(); }
  bool empty() const { return numel() == 0; }
  /// Bytes of storage actually held (capacity, padding included).
  std::size_t bytes() const { return sizeof(T) * std::size_t(capacity_rows_ * stride_); }

  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  T* row(Index r) {
    ENGRAM_ASSERT(r >= 0 && r < rows());
    return data_.get() + r * stride_;
  }
  const T* row(Index r) const {
    ENGRAM_ASSERT(r >= 0 && r < rows());
    return data_.get() + r * stride_;
  }

  /// All leading dimensions flattened into rows: [prod(dims[0..r-2]), dims[r-1]].
  View<T> view() { return View<T>(data_.get(), rows(), cols(), stride_); }
  ConstView<T> view() const { return ConstView<T>(data_.get(), rows(), cols(), stride_); }
  operator View<T>() { return view(); }
  operator ConstView<T>() const { return view(); }

  /// For rank >= 3: the matrix of the last two dimensions at flat leading index i, e.g. head h
  /// of a [H, T, d] tensor.
  View<T> mat(Index i) {
    const Index offset = mat_offset(i);  // validates the rank before dim(rank() - 2) is read
    return View<T>(data_.get() + offset, dim(rank() - 2), cols(), stride_);
  }
  ConstView<T> mat(Index i) const {
    const Index offset = mat_offset(i);
    return ConstView<T>(data_.get() + offset, dim(rank() - 2), cols(), stride_);
  }

  /// Element of a rank-1/2 tensor (checked in debug builds).
  T& operator()(Index r, Index c) { return row(r)[c]; }
  const T& operator()(Index r, Index c) const { return row(r)[c]; }
  T& operator[](Index i) {
    ENGRAM_ASSERT(rank() <= 1 && i >= 0 && i < numel());
    return data_.get()[i];
  }
  const T& operator[](Index i) const {
    ENGRAM_ASSERT(rank() <= 1 && i >= 0 && i < numel());
    return data_.get()[i];
  }

  void fill(T value) {
    for (Index r = 0; r < rows(); ++r) std::fill_n(row(r), cols(), value);
  }
  void set_zero() {
    if (data_) std::memset(static_cast<void*>(data_.get()), 0, sizeof(T) * std::size_t(capacity_rows_ * stride_));
  }

  /// Changes the number of leading rows of a rank-2 tensor, keeping existing rows. Grows the
  /// allocation geometrically (amortised O(1) appends); new rows are zero.
  void resize_rows(Index new_rows) {
    check(rank() == 2, "Tensor::resize_rows", "needs a rank-2 tensor, got rank ", rank());
    check(new_rows >= 0, "Tensor::resize_rows", "negative row count ", new_rows);
    if (new_rows > capacity_rows_) reserve_rows(std::max(new_rows, capacity_rows_ + capacity_rows_ / 2 + 16));
    if (new_rows > rows() && data_)
      std::memset(static_cast<void*>(row_ptr(rows())), 0, sizeof(T) * std::size_t((new_rows - rows()) * stride_));
    shape_ = Shape{new_rows, cols()};
  }
  /// Makes this a [rows, cols] tensor for reuse as scratch: keeps the allocation when the width
  /// matches (growing it geometrically when needed), reallocates otherwise. Contents unspecified.
  void reshape_rows(Index rows, Index cols) {
    if (rank() != 2 || this->cols() != cols) *this = Tensor({rows, cols});
    else resize_rows(rows);
  }
  /// Ensures room for `n` rows without reallocating (rank 2).
  void reserve_rows(Index n) {
    if (n <= capacity_rows_) return;
    reallocate(n);
  }
  /// Releases capacity beyond the current rows (physically returns memory).
  void shrink_to_fit() { shrink_to(rows()); }
  /// Reallocates to `capacity_rows` (at least rows()) when that is smaller than the current capacity.
  void shrink_to(Index capacity_rows) {
    capacity_rows = std::max(capacity_rows, rows());
    if (capacity_rows < capacity_rows_) reallocate(capacity_rows);
  }
  Index capacity_rows() const { return capacity_rows_; }

 private:
  Index mat_offset(Index i) const {
    check(rank() >= 3, "Tensor::mat", "needs rank >= 3, got shape ", shape_);
    const Index inner_rows = shape_[rank() - 2];
    const Index outer = inner_rows == 0 ? 0 : rows() / inner_rows;
    check(i >= 0 && i < outer, "Tensor::mat", "index ", i, " out of range for shape ", shape_);
    return i * inner_rows * stride_;
  }
  T* row_ptr(Index r) { return data_.get() + r * stride_; }

  // Zeroed storage for `rows` rows of `stride` elements. A byte count that overflows, or that the
  // allocator refuses, is an Error naming the size (never a tensor without storage, nor bad_alloc).
  // Storage for rows x stride elements, zero-filled; `lazy`: large sizes from an anonymous mapping
  // (zero pages until written) instead of being written with zeros.
  static std::unique_ptr<T[], detail::StorageDelete> allocate_storage(Index rows, Index stride, bool lazy = false) {
    Index n = 0;
    std::size_t bytes = 0;
    if (__builtin_mul_overflow(rows, stride, &n) || __builtin_mul_overflow(std::size_t(std::max<Index>(n, 0)), sizeof(T), &bytes) ||
        bytes > std::size_t(std::numeric_limits<Index>::max()))
      fail("Tensor", "storage for ", rows, " rows of ", stride, " elements of ", sizeof(T), " bytes overflows");
    if (n <= 0) return nullptr;
    constexpr std::size_t kLazyBytes = 1 << 20;  // below a MiB the mapping's page rounding and system call cost more than zeroing
#if defined(__SANITIZE_ADDRESS__)
    lazy = false;  // AddressSanitizer guards heap blocks, not mappings: keep its checks on every tensor
#endif
    if (lazy && bytes >= kLazyBytes) {
      void* m = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) fail("Tensor", "cannot map ", bytes, " bytes (", rows, " rows of ", stride, " elements): out of memory");
      return std::unique_ptr<T[], detail::StorageDelete>(static_cast<T*>(m), detail::StorageDelete{bytes});  // page-aligned
    }
    void* p = nullptr;
    try {
      p = ::operator new(bytes, std::align_val_t(kAlignment));
    } catch (const std::bad_alloc&) {
      fail("Tensor", "cannot allocate ", bytes, " bytes (", rows, " rows of ", stride, " elements): out of memory");
    }
    std::memset(p, 0, bytes);
    return std::unique_ptr<T[], detail::StorageDelete>(static_cast<T*>(p));
  }
  static Index checked_stride(Index cols) {
    check(cols <= std::numeric_limits<Index>::max() - kPadElems<T>, "Tensor", "a row of ", cols, " elements overflows");
    return padded_cols<T>(cols);
  }
  void allocate(const Shape& shape, bool lazy = false) {
    auto storage = allocate_storage(shape.rows(), checked_stride(shape.cols()), lazy);
    shape_ = shape;
    stride_ = padded_cols<T>(shape.cols());
    capacity_rows_ = shape.rows();
    data_ = std::move(storage);
  }
  void reallocate(Index capacity_rows) {
    auto fresh = allocate_storage(capacity_rows, stride_);
    const Index keep = std::min(rows(), capacity_rows);
    if (keep > 0) std::memcpy(static_cast<void*>(fresh.get()), data_.get(), sizeof(T) * std::size_t(keep * stride_));
    data_ = std::move(fresh);
    capacity_rows_ = capacity_rows;
  }

  Shape shape_{0};
  Index stride_ = 0;
  Index capacity_rows_ = 0;
  std::unique_ptr<T[], detail::StorageDelete> data_;
};

/// Throws unless `v` is [rows, cols] (a negative expected value matches anything).
template <class T>
void check_shape(const MatrixView<T>& v, Index rows, Index cols, std::string_view where, std::string_view what) {
  if ((rows >= 0 && v.rows() != rows) || (cols >= 0 && v.cols() != cols))
    fail(where, what, " expected shape [", rows < 0 ? std::string("*") : std::to_string(rows), ", ",
         cols < 0 ? std::string("*") : std::to_string(cols), "], got [", v.rows(), ", ", v.cols(), "]");
}

/// Copies `src` into `dst` (same shape).
template <class T>
void copy(ConstView<T> src, View<T> dst) {
  check(src.rows() == dst.rows() && src.cols() == dst.cols(), "copy", "shape mismatch: source [", src.rows(), ", ",
        src.cols(), "] vs destination [", dst.rows(), ", ", dst.cols(), "]");
  for (Index r = 0; r < src.rows(); ++r) std::copy_n(src.row(r), src.cols(), dst.row(r));
}

ENGRAM_NAMESPACE_END
