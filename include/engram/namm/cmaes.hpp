// CMA-ES ((mu/mu_w, lambda) with active negative weights and cumulative step-size adaptation,
// Hansen 2016 defaults), maximising a fitness evaluated on parallel threads; checkpoint/resume.
#pragma once

#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engram/core/parallel.hpp"
#include "engram/io/safetensors.hpp"

ENGRAM_NAMESPACE_BEGIN

struct CmaesOptions {
  Index dim = 0;
  Index lambda = 32;       ///< population (official NAMM: 32)
  double sigma0 = 0.065;   ///< initial step size (official NAMM: 0.065)
  std::vector<double> mean0;  ///< initial mean (default zeros)
  std::uint64_t seed = 0;
  /// Generations between eigendecompositions of C; 0 = Hansen's rule (about lambda / (10 n (c1 + cmu))).
  Index eigen_interval = 0;
};

/// Strategy parameters derived from (n, lambda) as in Hansen's tutorial (arXiv:1604.00772), with the
/// c_mu of the official evo-memory optimiser: 2 (mu_eff - 2 + 1/mu_eff) / ((n + 2)^2 + mu_eff).
struct CmaesConstants {
  Index n = 0, lambda = 0, mu = 0;
  std::vector<double> weights;  ///< lambda weights: positive sum to 1, negative scaled (active CMA)
  double mu_eff = 0, c_sigma = 0, d_sigma = 0, c_c = 0, c_1 = 0, c_mu = 0, chi_n = 0;

  CmaesConstants(Index dim, Index lam) : n(dim), lambda(lam), mu(lam / 2) {
    check(dim > 0, "CmaesConstants", "dimension must be positive, got ", dim);
    check(lam >= 2, "CmaesConstants", "population must be at least 2, got ", lam);
    const double nd = double(n);
    std::vector<double> raw(static_cast<std::size_t>(lambda));
    for (Index i = 0; i < lambda; ++i) raw[std::size_t(i)] = std::log((double(lambda) + 1) / 2) - std::log(double(i + 1));
    double pos = 0, pos2 = 0, neg = 0, neg2 = 0;
    for (Index i = 0; i < lambda; ++i) {
      const double w = raw[std::size_t(i)];
      if (i < mu) pos += w, pos2 += w * w;
      else neg += w, neg2 += w * w;
    }
    mu_eff = pos * pos / pos2;
    const double mu_eff_neg = neg2 > 0 ? neg * neg / neg2 : 0;
    c_c = (4 + mu_eff / nd) / (nd + 4 + 2 * mu_eff / nd);
    c_sigma = (mu_eff + 2) / (nd + mu_eff + 5);
    c_1 = 2 / ((nd + 1.3) * (nd + 1.3) + mu_eff);
    c_mu = std::min(1 - c_1, 2 * (mu_eff - 2 + 1 / mu_eff) / ((nd + 2) * (nd + 2) + mu_eff));
    d_sigma = 1 + 2 * std::max(0.0, std::sqrt((mu_eff - 1) / (nd + 1)) - 1) + c_sigma;
    chi_n = std::sqrt(nd) * (1 - 1 / (4 * nd) + 1 / (21 * nd * nd));
    const double alpha_neg =
        std::min({1 + c_1 / c_mu, 1 + 2 * mu_eff_neg / (mu_eff + 2), (1 - c_1 - c_mu) / (nd * c_mu)});
    double neg_abs = 0;
    for (Index i = mu; i < lambda; ++i) neg_abs += std::abs(raw[std::size_t(i)]);
    weights.resize(std::size_t(lambda));
    for (Index i = 0; i < lambda; ++i)
      weights[std::size_t(i)] = i < mu ? raw[std::size_t(i)] / pos : alpha_neg * raw[std::size_t(i)] / neg_abs;
  }
};

/// CMA-ES that maximises. Usage: loop { auto xs = ask(); fitness...; tell(f); } or run().
class Cmaes {
 public:
  using Vec = Eigen::VectorXd;
  using Mat = Eigen::MatrixXd;

  explicit Cmaes(const CmaesOptions& o) : options_(o), k_(o.dim, o.lambda), rng_(o.seed) {
    check(o.sigma0 > 0 && std::isfinite(o.sigma0), "Cmaes", "sigma0 must be positive, got ", o.sigma0);
    check(o.mean0.empty() || Index(o.mean0.size()) == o.dim, "Cmaes", "mean0 has ", o.mean0.size(), " entries, expected ", o.dim);
    const Index n = o.dim;
    mean_ = Vec::Zero(n);
    if (!o.mean0.empty()) mean_ = Eigen::Map<const Vec>(o.mean0.data(), n);
    sigma_ = o.sigma0;
    p_sigma_ = Vec::Zero(n);
    p_c_ = Vec::Zero(n);
    C_ = Mat::Identity(n, n);
    B_ = Mat::Identity(n, n);
    D_ = Vec::Ones(n);
  }

  const CmaesConstants& constants() const { return k_; }
  const Vec& mean() const { return mean_; }
  double sigma() const { return sigma_; }
  const Vec& p_sigma() const { return p_sigma_; }
  const Vec& p_c() const { return p_c_; }
  const Mat& covariance() const { return C_; }
  Index generation() const { return generation_; }
  double best_fitness() const { return best_fitness_; }
  const Vec& best() const { return best_; }

  /// Samples the population x_k = m + sigma B D z_k with z_k ~ N(0, I) (columns of the result).
  Mat ask() {
    Mat z(options_.dim, options_.lambda);
    for (Index j = 0; j < z.cols(); ++j)
      for (Index i = 0; i < z.rows(); ++i) z(i, j) = normal();
    return ask_with(z);
  }
  /// Same with given standard-normal samples z [n, lambda] (reproducible tests).
  Mat ask_with(const Mat& z) {
    check(z.rows() == options_.dim && z.cols() == options_.lambda, "Cmaes::ask_with", "z must be [", options_.dim, ", ",
          options_.lambda, "]");
    y_ = B_ * D_.asDiagonal() * z;
    Mat x = (sigma_ * y_).colwise() + mean_;
    asked_ = true;
    return x;
  }

  /// Updates the distribution from the fitness of the last asked population (higher is better).
  void tell(const std::vector<double>& fitness) {
    check(asked_, "Cmaes::tell", "call ask() first");
    check(Index(fitness.size()) == options_.lambda, "Cmaes::tell", "expected ", options_.lambda, " fitness values, got ", fitness.size());
    for (double f : fitness) check(std::isfinite(f), "Cmaes::tell", "fitness values must be finite");
    const Index n = options_.dim, lambda = options_.lambda;
    std::vector<Index> order(static_cast<std::size_t>(lambda));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return fitness[std::size_t(a)] > fitness[std::size_t(b)]; });
    if (fitness[std::size_t(order[0])] > best_fitness_ || generation_ == 0) {
      best_fitness_ = fitness[std::size_t(order[0])];
      best_ = mean_ + sigma_ * y_.col(order[0]);
    }
    Vec y_w = Vec::Zero(n);
    for (Index i = 0; i < k_.mu; ++i) y_w += k_.weights[std::size_t(i)] * y_.col(order[std::size_t(i)]);
    mean_ += sigma_ * y_w;  // c_m = 1

    // C^-1/2 v = B D^-1 B^T v on vectors, O(n^2) each: forming the n x n matrix costs O(n^3), 150 GFLOP
    // per generation at NAMM's n = 4172, which every rank of a distributed run would repeat.
    auto c_inv_sqrt = [&](const auto& v) -> Vec { return B_ * (D_.cwiseInverse().asDiagonal() * (B_.transpose() * v)); };
    p_sigma_ = (1 - k_.c_sigma) * p_sigma_ + std::sqrt(k_.c_sigma * (2 - k_.c_sigma) * k_.mu_eff) * c_inv_sqrt(y_w);
    const double ps_norm = p_sigma_.norm();
    sigma_ *= std::exp((k_.c_sigma / k_.d_sigma) * (ps_norm / k_.chi_n - 1));
    const double h_sigma =
        ps_norm / std::sqrt(1 - std::pow(1 - k_.c_sigma, 2.0 * double(generation_ + 1))) < (1.4 + 2.0 / double(n + 1)) * k_.chi_n ? 1.0 : 0.0;
    p_c_ = (1 - k_.c_c) * p_c_ + h_sigma * std::sqrt(k_.c_c * (2 - k_.c_c) * k_.mu_eff) * y_w;

    const double delta = (1 - h_sigma) * k_.c_c * (2 - k_.c_c);
    double w_sum = 0;
    for (double w : k_.weights) w_sum += w;
    // rank_mu = sum_i w_i y_i y_i^T as one GEMM (Y W) Y^T: lambda rank-one updates would each
    // stream the n x n matrix through memory.
    Mat y_sorted(n, lambda), y_weighted(n, lambda);
    for (Index i = 0; i < lambda; ++i) {
      y_sorted.col(i) = y_.col(order[std::size_t(i)]);
      double w = k_.weights[std::size_t(i)];
      if (w < 0) w *= double(n) / c_inv_sqrt(y_sorted.col(i)).squaredNorm();
      y_weighted.col(i) = w * y_sorted.col(i);
    }
    Mat rank_mu(n, n);
    rank_mu.noalias() = y_weighted * y_sorted.transpose();
    C_ = (1 + k_.c_1 * delta - k_.c_1 - k_.c_mu * w_sum) * C_ + k_.c_1 * p_c_ * p_c_.transpose() + k_.c_mu * rank_mu;
    ++generation_;
    asked_ = false;
    if (generation_ - eigen_generation_ >= eigen_interval()) decompose();
  }

  /// Progress of one generation.
  struct Progress {
    Index generation;
    double best, mean, sigma;
  };
  /// Runs `generations` generations; fitness(x) is called for the whole population on parallel
  /// threads (it must be thread-safe); progress(...) after each generation.
  void run(Index generations, const std::function<double(const Vec&)>& fitness,
           const std::function<void(const Progress&)>& progress = {}) {
    for (Index g = 0; g < generations; ++g) {
      const Mat x = ask();
      std::vector<double> f(static_cast<std::size_t>(options_.lambda));
      parallel_for_dynamic(0, options_.lambda, [&](Index i) { f[std::size_t(i)] = fitness(x.col(i)); });
      tell(f);
      if (progress) {
        const double mean = std::accumulate(f.begin(), f.end(), 0.0) / double(f.size());
        progress({generation_, *std::max_element(f.begin(), f.end()), mean, sigma_});
      }
    }
  }

  /// Writes the whole optimiser state (distribution, paths, eigensystem, generation, RNG) as safetensors.
  void save(const std::string& path) const {
    safetensors::Writer w;
    const Index n = options_.dim;
    auto vec = [&](const std::string& name, const Vec& v) {
      Tensor<double> t({v.size()});
      for (Index i = 0; i < v.size(); ++i) t[i] = v(i);
      w.add(name, t, safetensors::DType::F64);
    };
    auto mat = [&](const std::string& name, const Mat& m) {
      Tensor<double> t({m.rows(), m.cols()});
      for (Index i = 0; i < m.rows(); ++i)
        for (Index j = 0; j < m.cols(); ++j) t(i, j) = m(i, j);
      w.add(name, t, safetensors::DType::F64);
    };
    vec("mean", mean_);
    vec("p_sigma", p_sigma_);
    vec("p_c", p_c_);
    vec("D", D_);
    vec("best", best_.size() ? best_ : Vec::Zero(n));
    mat("C", C_);
    mat("B", B_);
    std::ostringstream rng;
    rng << rng_;
    w.set_metadata("format", "engram-cmaes-1");
    w.set_metadata("dim", std::to_string(n));
    w.set_metadata("lambda", std::to_string(options_.lambda));
    w.set_metadata("sigma", to_string_exact(sigma_));
    w.set_metadata("sigma0", to_string_exact(options_.sigma0));
    w.set_metadata("generation", std::to_string(generation_));
    w.set_metadata("eigen_generation", std::to_string(eigen_generation_));
    w.set_metadata("eigen_interval", std::to_string(options_.eigen_interval));
    w.set_metadata("best_fitness", to_string_exact(best_fitness_));
    w.set_metadata("rng", rng.str());
    w.set_metadata("normal_spare", has_spare_ ? to_string_exact(spare_) : "");
    w.write(path);
  }

  /// Restores a state written by save(); the run continues exactly where it stopped.
  static Cmaes load(const std::string& path) {
    const auto f = safetensors::File::open(path);
    const auto& meta = f.metadata();
    auto get = [&](const char* key) -> const std::string& {
      auto it = meta.find(key);
      check(it != meta.end(), path, "CMA-ES checkpoint lacks metadata \"", key, "\"");
      return it->second;
    };
    check(get("format") == "engram-cmaes-1", path, "not an engram CMA-ES checkpoint (format ", get("format"), ")");
    CmaesOptions o;
    o.dim = std::stol(get("dim"));
    o.lambda = std::stol(get("lambda"));
    o.sigma0 = std::stod(get("sigma0"));
    o.eigen_interval = std::stol(get("eigen_interval"));
    Cmaes c(o);
    auto vec = [&](const char* name, Vec& v) {
      const auto t = f.read<double>(name);
      check(t.numel() == o.dim, path, "tensor ", name, " has ", t.numel(), " entries, expected ", o.dim);
      v = Eigen::Map<const Vec>(t.data(), o.dim);
    };
    auto mat = [&](const char* name, Mat& m) {
      const auto t = f.read<double>(name);
      check(t.rows() == o.dim && t.cols() == o.dim, path, "tensor ", name, " is not [", o.dim, ", ", o.dim, "]");
      m.resize(o.dim, o.dim);
      for (Index i = 0; i < o.dim; ++i)
        for (Index j = 0; j < o.dim; ++j) m(i, j) = t(i, j);
    };
    vec("mean", c.mean_);
    vec("p_sigma", c.p_sigma_);
    vec("p_c", c.p_c_);
    vec("D", c.D_);
    vec("best", c.best_);
    mat("C", c.C_);
    mat("B", c.B_);
    c.sigma_ = std::stod(get("sigma"));
    c.generation_ = std::stol(get("generation"));
    c.eigen_generation_ = std::stol(get("eigen_generation"));
    c.best_fitness_ = std::stod(get("best_fitness"));
    std::istringstream rng(get("rng"));
    rng >> c.rng_;
    check(!rng.fail(), path, "corrupt RNG state");
    c.has_spare_ = !get("normal_spare").empty();
    if (c.has_spare_) c.spare_ = std::stod(get("normal_spare"));
    return c;
  }

 private:
  static std::string to_string_exact(double x) {
    std::ostringstream s;
    s.precision(17);
    s << x;
    return s.str();
  }
  Index eigen_interval() const {
    if (options_.eigen_interval > 0) return options_.eigen_interval;
    // Hansen's lazy update: C changes by about (c1 + cmu) per generation, so decomposing more often
    // than every lambda / (10 n (c1 + cmu)) generations buys nothing.
    return std::max<Index>(1, Index(double(options_.lambda) / (10.0 * double(options_.dim) * (k_.c_1 + k_.c_mu))));
  }
  // Eigen-decomposes C = B diag(D^2) B^T: eigenvalues ascending, each eigenvector signed so that its
  // largest-magnitude entry is positive (a fixed convention makes runs reproducible).
  void decompose() {
    const Mat sym = (C_ + C_.transpose()) / 2;
    Eigen::SelfAdjointEigenSolver<Mat> eig(sym);
    check(eig.info() == Eigen::Success, "Cmaes", "eigendecomposition of the covariance failed");
    B_ = eig.eigenvectors();
    for (Index j = 0; j < B_.cols(); ++j) {
      Index arg = 0;
      for (Index i = 1; i < B_.rows(); ++i)
        if (std::abs(B_(i, j)) > std::abs(B_(arg, j))) arg = i;
      if (B_(arg, j) < 0) B_.col(j) *= -1;
    }
    D_ = eig.eigenvalues().cwiseMax(1e-20).cwiseSqrt();
    eigen_generation_ = generation_;
  }
  // Standard normal by Box-Muller on the 64-bit Mersenne twister: identical on every platform
  // (std::normal_distribution is implementation-defined).
  double normal() {
    if (has_spare_) return has_spare_ = false, spare_;
    double u1;
    do u1 = double(rng_() >> 11) * 0x1.0p-53;
    while (u1 <= 0.0);
    const double u2 = double(rng_() >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * M_PI * u2);
    has_spare_ = true;
    return r * std::cos(2.0 * M_PI * u2);
  }

  CmaesOptions options_;
  CmaesConstants k_;
  std::mt19937_64 rng_;
  Vec mean_, p_sigma_, p_c_, D_, best_;
  Mat C_, B_, y_;
  double sigma_ = 0;
  Index generation_ = 0, eigen_generation_ = 0;
  double best_fitness_ = -std::numeric_limits<double>::infinity();
  bool asked_ = false;
  bool has_spare_ = false;
  double spare_ = 0;
};

ENGRAM_NAMESPACE_END
