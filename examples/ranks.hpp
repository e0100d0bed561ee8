// The ranks a program runs on: the MPI ranks when the program was built with the mpi component
// (ENGRAM_WITH_MPI, set by examples/CMakeLists.txt) and started by mpirun, otherwise one process
// without any MPI. Programs use the same calls either way.
#pragma once

#include <string>

#include "engram/train/collective.hpp"
#if ENGRAM_WITH_MPI
#include "engram/mpi/session.hpp"
#endif

namespace examples {

/// Construct first thing in main; `return ranks.finish(cli::run(...));`.
class Ranks {
 public:
#if ENGRAM_WITH_MPI
  Ranks(int& argc, char**& argv) : session_(argc, argv) {}
  /// The Collective to train or evolve with (null for a single process).
  engram::train::Collective* collective() { return session_.world(); }
  int rank() const { return session_.rank(); }
  int size() const { return session_.size(); }
  /// The exit status to return from main (see mpi::Session::finish: never a hang on failure).
  int finish(int status) { return session_.finish(status); }
#else
  Ranks(int&, char**&) {}
  engram::train::Collective* collective() { return nullptr; }
  int rank() const { return 0; }
  int size() const { return 1; }
  int finish(int status) { return status; }
#endif
  /// The rank that prints progress and writes files.
  bool root() const { return rank() == 0; }
  /// "1 process" or "N MPI ranks".
  std::string describe() const { return size() == 1 && !mpi() ? "1 process" : std::to_string(size()) + " MPI rank" + (size() == 1 ? "" : "s"); }

 private:
#if ENGRAM_WITH_MPI
  bool mpi() const { return session_.active(); }
  engram::mpi::Session session_;
#else
  bool mpi() const { return false; }
#endif
};

}  // namespace examples
