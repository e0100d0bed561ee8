// Consumer check of the mpi component: an installed engram::mpi compiles, links MPI, and under
// mpirun sums a gradient set over the ranks and evaluates work across them.
#include <cstdio>

#include <engram/mpi/mpi.hpp>
#include <engram/nn/init.hpp>
#include <engram/train/data_parallel.hpp>

int main(int argc, char** argv) {
  using namespace engram;
  mpi::Session session(argc, argv, /*force=*/true);
  mpi::Communicator& world = *session.world();
  bool ok = true;
  try {
    Decoder<float> m = Decoder<float>::create(ModelConfig::llama(32, 16, 1, 2, 2, 24));
    Gradients<float> g(m);
    for (auto& e : g.entries()) e.grad.fill(1.0f);
    train::GradientReducer<float>(100).sum(g, world);  // every value becomes the number of ranks
    for (auto& e : g.entries()) ok = ok && e.grad(0, 0) == float(world.size());
    const auto v = train::evaluate_across_ranks(&world, 5, 1, [&](Index i, double* out) { out[0] = double(i * 10); });
    for (Index i = 0; i < 5; ++i) ok = ok && v[std::size_t(i)] == double(i * 10);
  } catch (const Error& e) {
    std::fprintf(stderr, "consumer_mpi: %s\n", e.what());
    ok = false;
  }
  if (world.rank() == 0) std::printf("engram mpi consumer on %d ranks: %s\n", world.size(), ok ? "ok" : "FAILED");
  return session.finish(ok ? 0 : 1);
}
