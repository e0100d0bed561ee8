// CMA-ES across the ranks of a train::Collective (engram::mpi::Communicator under mpirun): every
// rank holds the same optimiser (same seed, same tells), each generation's candidates are evaluated
// across the ranks and their fitness gathered exactly, so ask and tell give the same state on every
// rank and the run is the single-process run, candidate for candidate.
#pragma once

#include <functional>
#include <vector>

#include "engram/namm/cmaes.hpp"
#include "engram/train/collective.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace namm {

/// Fingerprint of the state that evolves every generation (mean, step size, evolution paths,
/// generation): two replicas that agree on it drew and told the same populations. C is left out
/// (n^2 values); a difference in it shows in the next generation's mean.
inline std::uint64_t fingerprint(const Cmaes& es) {
  std::uint64_t h = train::fingerprint(es.mean().data(), sizeof(double) * std::size_t(es.mean().size()));
  h = train::fingerprint(es.p_sigma().data(), sizeof(double) * std::size_t(es.p_sigma().size()), h);
  h = train::fingerprint(es.p_c().data(), sizeof(double) * std::size_t(es.p_c().size()), h);
  const double sigma = es.sigma();
  const Index generation = es.generation();
  h = train::fingerprint(&sigma, sizeof sigma, h);
  return train::fingerprint(&generation, sizeof generation, h);
}

/// What one generation drew and measured.
struct Generation {
  Eigen::MatrixXd x;           ///< the candidates, one per column [dim, lambda]
  std::vector<double> values;  ///< `width` values per candidate (candidate-major); values[i * width] is its fitness
  Index width = 1;
  double fitness(Index i) const { return values[std::size_t(i * width)]; }
  double value(Index i, Index k) const { return values[std::size_t(i * width + k)]; }
};

/// One generation: ask on every rank, candidate i evaluated by rank i % size on that rank's threads
/// (`evaluate(x_i, out)` writes its fitness to out[0] and `width - 1` more values of the caller's,
/// e.g. the cache kept, to out[1..]; it must be thread-safe), the values gathered on every rank,
/// tell on every rank. Collective when `c` is not null (a failure anywhere throws everywhere);
/// with a null `c`, a single-process generation. Then checks that every rank holds the same state.
inline Generation generation(Cmaes& es, train::Collective* c, Index width,
                             const std::function<void(const Eigen::VectorXd& x, double* out)>& evaluate) {
  Generation g;
  g.width = width;
  g.x = es.ask();
  g.values = train::evaluate_across_ranks(c, g.x.cols(), width, [&](Index i, double* out) { evaluate(g.x.col(i), out); });
  std::vector<double> fitness(std::size_t(g.x.cols()));
  for (Index i = 0; i < g.x.cols(); ++i) fitness[std::size_t(i)] = g.fitness(i);
  train::all_or_none(c, [&] { es.tell(fitness); });
  if (c) train::check_same(*c, fingerprint(es), "the CMA-ES state after generation " + std::to_string(es.generation()));
  return g;
}

}  // namespace namm
ENGRAM_NAMESPACE_END
