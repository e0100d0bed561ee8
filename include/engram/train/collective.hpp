// The other processes of a data-parallel run as training code sees them: rank, size, sums,
// broadcast and failure agreement behind an interface that engram::mpi::Communicator implements
// over MPI (engram/mpi/communicator.hpp). train/ never includes MPI; a single process passes a null
// Collective* and every helper here then runs locally.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "engram/core/error.hpp"
#include "engram/core/parallel.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace train {

/// The ranks of a data-parallel job. Every member except rank() and size() is collective: every
/// rank calls it, in the same order, with arguments of the same size.
class Collective {
 public:
  virtual ~Collective() = default;
  /// This process's rank, in [0, size()).
  virtual int rank() const = 0;
  /// Number of ranks.
  virtual int size() const = 0;
  /// Replaces each element by its sum over the ranks. Every rank receives the same bits.
  virtual void sum(std::span<float> values) = 0;
  virtual void sum(std::span<double> values) = 0;
  /// Replaces `bytes` by rank `root`'s.
  virtual void broadcast(std::span<std::byte> bytes, int root) = 0;
  /// Failure agreement: each rank passes the error it caught since the last agreement ("" when
  /// none). Returns when no rank failed; otherwise throws, on every rank, an Error naming the lowest
  /// failing rank and its message, so one rank's exception ends the job everywhere instead of
  /// leaving the others blocked in the next collective.
  virtual void agree(const std::string& error) = 0;
};

/// True without a collective (a single process) and on rank 0: the rank that writes files and prints.
inline bool is_root(const Collective* c) { return !c || c->rank() == 0; }
/// Number of ranks (1 without a collective).
inline int ranks(const Collective* c) { return c ? c->size() : 1; }
/// Whether this rank owns work item `i` of a round-robin split (every item without a collective).
inline bool owns(const Collective* c, Index i) { return !c || i % c->size() == c->rank(); }

/// Runs `f` on this rank, then agrees with the others (Collective::agree): either every rank
/// returns or every rank throws the same Error. Without a collective, just runs `f`.
template <class F>
void all_or_none(Collective* c, F&& f) {
  if (!c) {
    f();
    return;
  }
  std::string error;
  try {
    f();
  } catch (const std::exception& e) {
    error = *e.what() ? e.what() : "an exception without a message";
  } catch (...) {
    error = "an exception that is not a std::exception";
  }
  c->agree(error);
}

/// 64-bit FNV-1a over 8-byte words (then the tail bytes): a fingerprint of replicated state, cheap
/// enough for every checkpoint (a few ms for 10 MB). Chain calls through `h`.
inline std::uint64_t fingerprint(const void* data, std::size_t bytes, std::uint64_t h = 0xcbf29ce484222325ull) {
  constexpr std::uint64_t prime = 0x100000001b3ull;
  const auto* p = static_cast<const unsigned char*>(data);
  std::size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * prime;
  }
  for (; i < bytes; ++i) h = (h ^ p[i]) * prime;
  return h;
}

/// Collective: throws on every rank unless `value` (a fingerprint of state every rank must hold
/// identically) equals rank 0's. `what` names the state in the message.
inline void check_same(Collective& c, std::uint64_t value, const std::string& what) {
  std::uint64_t root = value;
  c.broadcast(std::as_writable_bytes(std::span(&root, 1)), 0);
  c.agree(root == value ? std::string() : what + " differs from rank 0's: the replicas have diverged");
}

/// Evaluates work items [0, n) across the ranks: rank r computes every item i with i % size == r
/// on its own threads (parallel_for_dynamic), `f(i, out)` writing item i's `width` values to out.
/// Returns all n * width values (item-major) on every rank. They are gathered by a sum in which each
/// value has one contributor and zeros elsewhere, so every value arrives exactly as computed (a
/// negative zero arrives as +0). A failure on any rank throws on every rank (all_or_none).
inline std::vector<double> evaluate_across_ranks(Collective* c, Index n, Index width, const std::function<void(Index, double*)>& f) {
  check(n >= 0 && width >= 1, "train::evaluate_across_ranks", "expected n >= 0 items of width >= 1, got ", n, " x ", width);
  std::vector<double> values(std::size_t(n * width), 0.0);
  const int size = ranks(c), rank = c ? c->rank() : 0;
  const Index mine = n > rank ? (n - rank + size - 1) / size : 0;  // items rank, rank + size, ...
  all_or_none(c, [&] { parallel_for_dynamic(0, mine, [&](Index k) { const Index i = rank + k * size; f(i, values.data() + i * width); }); });
  if (c) c->sum(values);
  return values;
}

}  // namespace train
ENGRAM_NAMESPACE_END
