// Shared by the mpi tests: MPI for the whole test program, a directory every rank sees, and the
// relative difference of two curves.
#pragma once

#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engram/mpi/mpi.hpp"
#include "test_util.hpp"

namespace engram::test {

// MPI for the whole test program (constructed by the first test that needs it, ended at exit).
inline engram::mpi::Communicator& world() {
  struct World {
    int argc = 0;
    char** argv = nullptr;
    engram::mpi::Session session{argc, argv, /*force=*/true};
  };
  static World w;
  return *w.session.world();
}

// A directory every rank sees: rank 0's temporary directory, its path broadcast.
class SharedDir {
 public:
  SharedDir() {
    std::string path;
    if (world().rank() == 0) owned_ = std::make_unique<TempDir>(), path = owned_->path().string();
    std::uint64_t n = path.size();
    world().broadcast(std::as_writable_bytes(std::span(&n, 1)), 0);
    path.resize(std::size_t(n));
    world().broadcast(std::as_writable_bytes(std::span(path.data(), path.size())), 0);
    path_ = path;
  }
  ~SharedDir() { world().barrier(); }  // nobody still reads it when rank 0 removes it
  const std::filesystem::path& path() const { return path_; }

 private:
  std::unique_ptr<TempDir> owned_;
  std::filesystem::path path_;
};

inline double max_relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return INFINITY;
  double d = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]) / std::abs(b[i]));
  return d;
}

}  // namespace engram::test
