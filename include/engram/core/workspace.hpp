// Per-thread scratch buffers that grow and are reused, so hot loops never allocate.
#pragma once

#include <memory>
#include <new>

#include "engram/core/tensor.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Returns a 64-byte aligned buffer of at least n elements owned by the calling thread. `Tag` names
/// the owner (one tag type per kernel, `Slot` per buffer inside it) so kernels never share a buffer.
/// The contents are unspecified; the pointer is valid until the same (Tag, Slot, T) is requested
/// again with a larger n on this thread.
template <class Tag, int Slot, class T>
T* thread_scratch(Index n) {
  thread_local std::unique_ptr<T[], detail::AlignedDelete> buffer;
  thread_local Index capacity = 0;
  if (n > capacity) {
    const Index grown = std::max<Index>(n, capacity + capacity / 2);
    buffer.reset(static_cast<T*>(::operator new(sizeof(T) * std::size_t(grown), std::align_val_t(kAlignment))));
    capacity = grown;
  }
  return buffer.get();
}

ENGRAM_NAMESPACE_END
