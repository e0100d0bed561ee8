// engram::mpi::Session: MPI for the length of one program run. It initialises MPI only when the
// process was started by an MPI launcher (so a plain run needs no MPI at all), hands out the world
// Communicator, and ends the run so that one failing rank never leaves the others hanging.
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <thread>

#include "engram/mpi/communicator.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace mpi {

/// Whether an MPI launcher started this process: the per-rank environment of Open MPI's mpirun
/// (OMPI_COMM_WORLD_SIZE), MPICH's and Intel MPI's Hydra (PMI_SIZE), and PMIx launchers such as
/// Slurm's srun --mpi=pmix (PMIX_RANK).
inline bool launched() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

/// MPI for one program run. Construct it first thing in main; return finish(status) from main.
///
/// Failures: a failure inside a section every rank runs together (train::all_or_none: a training
/// step, an evaluation, a checkpoint, a CMA-ES generation) throws the same Error on every rank
/// (Collective::agree), so every rank prints a clear error and reaches finish(1) at once. Any other
/// failure (one rank alone) may leave the others blocked in a collective: finish() then waits
/// `abort_after` for the other ranks, and if they do not all arrive, calls MPI_Abort, which ends
/// the whole job (the launcher kills the other ranks) instead of a hang.
class Session {
 public:
  /// Initialises MPI (MPI_THREAD_FUNNELED: OpenMP threads compute, only the main thread calls
  /// MPI) when launched() or `force`; otherwise the run is a single process and MPI is untouched.
  Session(int& argc, char**& argv, bool force = false) {
    if (!force && !launched()) return;
    int provided = 0;
    check_mpi(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    world_ = std::make_unique<Communicator>(MPI_COMM_WORLD);
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  /// Ends MPI if finish() was not called (as finish(1) while an exception unwinds, finish(0) otherwise).
  ~Session() {
    if (world_) finish(std::uncaught_exceptions() ? 1 : 0);
  }

  /// Whether MPI is in use (false for a plain single-process run).
  bool active() const { return world_ != nullptr; }
  /// The world communicator, or null for a single process.
  Communicator* world() { return world_.get(); }
  int rank() const { return world_ ? world_->rank() : 0; }
  int size() const { return world_ ? world_->size() : 1; }

  /// Ends MPI and returns `status` (the exit status of this rank). Every rank enters a
  /// non-blocking barrier; a successful rank waits for it, a failed one at most `abort_after`, then
  /// MPI_Abort(status) ends the job. The wait polls every millisecond, so a waiting rank leaves
  /// its core to the others.
  int finish(int status, std::chrono::milliseconds abort_after = std::chrono::seconds(10)) {
    if (!world_) return status;
    const int rank = world_->rank(), size = world_->size();
    world_.reset();
    MPI_Request barrier;
    MPI_Ibarrier(MPI_COMM_WORLD, &barrier);
    const auto deadline = std::chrono::steady_clock::now() + abort_after;
    for (int done = 0;;) {
      MPI_Test(&barrier, &done, MPI_STATUS_IGNORE);
      if (done) break;
      if (status != 0 && std::chrono::steady_clock::now() > deadline) {
        std::fprintf(stderr, "engram::mpi: rank %d of %d failed alone (status %d) and the other ranks did not stop within %lld ms: "
                     "ending the job with MPI_Abort\n", rank, size, status, (long long)abort_after.count());
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    MPI_Finalize();
    return status;
  }

 private:
  std::unique_ptr<Communicator> world_;
};

}  // namespace mpi
ENGRAM_NAMESPACE_END
