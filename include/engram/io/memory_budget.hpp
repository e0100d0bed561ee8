// The size budget of a model about to be built from a config file: its weights and one token of KV
// cache, checked against the checkpoint's real tensors and against the memory available, before
// anything is allocated (so a config cannot ask for terabytes, nor end in bad_alloc or the OOM killer).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include "engram/io/checkpoint.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace io {

/// Bytes of memory this process can still use: MemAvailable of /proc/meminfo, else free physical
/// pages (sysconf); 0 when neither is known (the memory check is then skipped).
inline std::uint64_t available_memory() {
  std::ifstream meminfo("/proc/meminfo");  // a kernel file: always regular, never blocks
  for (std::string key; meminfo >> key;) {
    std::uint64_t kib = 0;
    if (key == "MemAvailable:" && meminfo >> kib) return kib * 1024;
    meminfo.ignore(1 << 10, '\n');
  }
  const long pages = ::sysconf(_SC_AVPHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? std::uint64_t(pages) * std::uint64_t(page) : 0;
}

/// a * b, or an Error from `where` when it overflows 64 bits (element counts from a config).
inline std::uint64_t checked_mul(std::uint64_t a, std::uint64_t b, std::string_view where) {
  std::uint64_t r = 0;
  check(!__builtin_mul_overflow(a, b, &r), where, "the weight count overflows (", a, " x ", b, ")");
  return r;
}
/// a + b, or an Error from `where` when it overflows 64 bits.
inline std::uint64_t checked_add(std::uint64_t a, std::uint64_t b, std::string_view where) {
  std::uint64_t r = 0;
  check(!__builtin_add_overflow(a, b, &r), where, "the weight count overflows (", a, " + ", b, ")");
  return r;
}

/// What building a model would allocate.
struct ModelSize {
  std::uint64_t weight_elements = 0;    ///< a lower bound of the tensors a matching checkpoint holds
  std::size_t scalar_bytes = 4;         ///< sizeof(T) of the model being built
  std::uint64_t kv_bytes_per_token = 0; ///< one cached token of a full KV cache (0: no KV cache)
};

namespace detail {
inline std::string human_bytes(long double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (b >= 1024 && u < 6) b /= 1024, ++u;
  std::ostringstream out;
  out.precision(3);
  out << b << ' ' << units[u];
  return out.str();
}
}  // namespace detail

/// Elements a config may describe beyond twice its checkpoint's before the load is refused
/// unallocated (16 Mi elements, 64 MiB as float): below that, the model is built and the weight
/// binder names every mis-shaped tensor, which says more than a count.
inline constexpr std::uint64_t kCheckpointSlack = std::uint64_t(1) << 24;

/// Throws Error naming `source` when the config asks for grossly more weights than the checkpoint
/// holds (more than 2 x its elements + kCheckpointSlack; `checkpoint` may be null when there is
/// none), or when the weights plus one token of KV cache exceed `available` bytes (0: unknown, not
/// checked). Called before anything is allocated.
inline void check_model_size(const ModelSize& size, const Checkpoint* checkpoint, const std::string& source,
                             std::uint64_t available = available_memory()) {
  if (checkpoint) {
    const std::uint64_t held = checkpoint->total_elements();
    check(size.weight_elements <= 2 * held + kCheckpointSlack, source, "the config describes a model of at least ",
          size.weight_elements, " weight elements, but the checkpoint's tensors hold only ", held,
          ": the config does not match the checkpoint (check vocab_size, the widths and the layer count)");
  }
  const long double bytes = (long double)size.weight_elements * (long double)size.scalar_bytes + (long double)size.kv_bytes_per_token;
  check(available == 0 || bytes <= (long double)available, source, "the model needs ", detail::human_bytes(bytes), " (",
        size.weight_elements, " weights of ", size.scalar_bytes, " bytes, plus ", size.kv_bytes_per_token,
        " bytes per cached token), but only ", detail::human_bytes((long double)available), " of memory is available");
}

}  // namespace io
ENGRAM_NAMESPACE_END
