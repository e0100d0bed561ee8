// engram::mpi::Communicator: train::Collective over an MPI communicator (sums with
// MPI_Allreduce, broadcast with MPI_Bcast, failure agreement with one MPI_Allreduce of the lowest
// failing rank), the one place data-parallel training and distributed CMA-ES talk MPI.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <span>
#include <string>

#include "engram/core/error.hpp"
#include "engram/train/collective.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace mpi {

/// Throws Error naming the MPI call when `code` is not MPI_SUCCESS (with MPI_ERRORS_RETURN set on
/// the communicator; under MPI's default handler an error has already ended the job).
inline void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(code, text, &n);
  fail("mpi", call, " failed: ", std::string(text, std::size_t(std::max(n, 0))));
}

/// The ranks of an MPI communicator (MPI_COMM_WORLD by default) as a train::Collective. MPI must be
/// initialised (mpi::Session) and outlive the Communicator. Every sum reaches every rank with the
/// same bits (MPI_Allreduce: Open MPI's and MPICH's algorithms reduce each element in one place or
/// symmetrically; the trainer checks the weights' fingerprint at every checkpoint regardless).
class Communicator final : public train::Collective {
 public:
  explicit Communicator(MPI_Comm comm = MPI_COMM_WORLD) : comm_(comm) {
    check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MPI_Comm comm() const { return comm_; }

  void sum(std::span<float> values) override { allreduce_sum(values.data(), values.size(), MPI_FLOAT); }
  void sum(std::span<double> values) override { allreduce_sum(values.data(), values.size(), MPI_DOUBLE); }

  void broadcast(std::span<std::byte> bytes, int root) override {
    check(root >= 0 && root < size_, "mpi::Communicator::broadcast", "root ", root, " outside [0, ", size_, ")");
    for (std::size_t done = 0; done < bytes.size();) {  // MPI counts are int: chunks of at most INT_MAX
      const int n = int(std::min<std::size_t>(bytes.size() - done, INT_MAX));
      check_mpi(MPI_Bcast(bytes.data() + done, n, MPI_BYTE, root, comm_), "MPI_Bcast");
      done += std::size_t(n);
    }
  }

  /// One MPI_Allreduce (MIN) of the lowest failing rank; when there is one, its message is broadcast
  /// and every rank throws Error("rank R of N failed: <message>").
  void agree(const std::string& error) override {
    const int mine = error.empty() ? size_ : rank_;
    int first = size_;
    check_mpi(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm_), "MPI_Allreduce");
    if (first == size_) return;
    std::uint64_t length = first == rank_ ? error.size() : 0;
    broadcast(std::as_writable_bytes(std::span(&length, 1)), first);
    std::string message = first == rank_ ? error : std::string(std::size_t(length), '\0');
    broadcast(std::as_writable_bytes(std::span(message.data(), message.size())), first);
    throw Error("rank " + std::to_string(first) + " of " + std::to_string(size_) + " failed: " + message);
  }

  /// Blocks until every rank has called it.
  void barrier() { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }

 private:
  void allreduce_sum(void* data, std::size_t n, MPI_Datatype type) {
    int width = 0;
    MPI_Type_size(type, &width);
    auto* p = static_cast<char*>(data);
    for (std::size_t done = 0; done < n;) {
      const int k = int(std::min<std::size_t>(n - done, INT_MAX));
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, p + done * std::size_t(width), k, type, MPI_SUM, comm_), "MPI_Allreduce");
      done += std::size_t(k);
    }
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

}  // namespace mpi
ENGRAM_NAMESPACE_END
