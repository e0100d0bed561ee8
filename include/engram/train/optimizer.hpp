// AdamW (decoupled weight decay, bias correction) over a Gradients set, gradient clipping by global
// norm and by value, and the optimizer state's checkpoint (moments + step) in safetensors.
#pragma once

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "engram/io/safetensors.hpp"
#include "engram/nn/gradients.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace train {

/// Hyper-parameters of AdamW (defaults of the reference recipes: betas 0.9 / 0.95, ttt.md 6.2).
struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double clip_norm = 1.0;   ///< clip the global gradient norm to this (0: off)
  double clip_value = 0.0;  ///< clip every gradient entry to [-v, v] before the norm clip (0: off; the RMT BERT recipe uses 5)

  void validate() const {
    const char* where = "train::AdamWOptions";
    check(beta1 >= 0 && beta1 < 1, where, "beta1 must be in [0, 1), got ", beta1);
    check(beta2 >= 0 && beta2 < 1, where, "beta2 must be in [0, 1), got ", beta2);
    check(eps > 0 && std::isfinite(eps), where, "eps must be positive, got ", eps);
    check(weight_decay >= 0 && std::isfinite(weight_decay), where, "weight_decay must be >= 0, got ", weight_decay);
    check(clip_norm >= 0 && std::isfinite(clip_norm), where, "clip_norm must be >= 0 (0: off), got ", clip_norm);
    check(clip_value >= 0 && std::isfinite(clip_value), where, "clip_value must be >= 0 (0: off), got ", clip_value);
  }
};

/// The default weight-decay rule of the reference recipes: decay matrices, not norms, biases,
/// embeddings (word, position, type), the RMT memory or TTT's token scales.
inline bool default_decay(const std::string& name, int rank) {
  if (rank < 2) return false;
  for (const char* skip : {"norm", "embed", "position_table", "type_table", "memory", "bias", "token_idx"})
    if (name.find(skip) != std::string::npos) return false;
  return true;
}

/// What clip() did.
struct ClipStats {
  double norm = 0;      ///< global L2 norm before clipping
  bool clipped = false; ///< whether the norm clip scaled the gradients
};

/// Clips every entry to [-clip_value, clip_value] (when > 0), then scales all gradients by
/// clip_norm / (norm + 1e-6) when the global norm exceeds clip_norm (torch.nn.utils.clip_grad_norm_).
template <class T>
ClipStats clip(Gradients<T>& g, double clip_norm, double clip_value = 0.0) {
  if (clip_value > 0)
    for (auto& e : g.entries())
      for (Index r = 0; r < e.grad.rows(); ++r)
        for (Index c = 0; c < e.grad.cols(); ++c) e.grad.row(r)[c] = std::clamp(e.grad.row(r)[c], T(-clip_value), T(clip_value));
  ClipStats s;
  s.norm = g.norm();
  if (clip_norm > 0 && s.norm > clip_norm) {
    g.scale(T(clip_norm / (s.norm + 1e-6)));
    s.clipped = true;
  }
  return s;
}

/// AdamW over the parameters of a Gradients set (torch.optim.AdamW's update):
///   p <- p - lr * wd * p (decayed parameters only), m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2,
///   p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
/// The only writer of model weights during training.
template <class T>
class AdamW {
 public:
  /// `decay(name, rank)` chooses the decayed parameters (default_decay when empty).
  AdamW(Gradients<T>& grads, AdamWOptions options, std::function<bool(const std::string&, int)> decay = {})
      : grads_(&grads), options_(options) {
    options_.validate();
    if (!decay) decay = default_decay;
    for (const auto& e : grads.entries()) {
      states_.push_back({Tensor<T>(e.param->shape()), Tensor<T>(e.param->shape()), decay(e.name, e.param->rank())});
    }
  }

  const AdamWOptions& options() const { return options_; }
  /// Steps taken so far.
  Index step_count() const { return t_; }
  /// Whether the parameter at index i of the gradient set is decayed.
  bool decayed(std::size_t i) const { return states_.at(i).decay; }

  /// Clips the gradients as the options say, then applies one update with learning rate `lr`.
  /// Returns the clipping statistics (the norm before clipping).
  ClipStats step(double lr) {
    check(std::isfinite(lr) && lr >= 0, "train::AdamW", "learning rate must be finite and >= 0, got ", lr);
    const ClipStats c = clip(*grads_, options_.clip_norm, options_.clip_value);
    ++t_;
    const double bc1 = 1.0 - std::pow(options_.beta1, double(t_)), bc2 = 1.0 - std::pow(options_.beta2, double(t_));
    const T b1 = T(options_.beta1), b2 = T(options_.beta2), eps = T(options_.eps);
    const T step_size = T(lr / bc1), inv_sqrt_bc2 = T(1.0 / std::sqrt(bc2));
    auto entries = grads_->entries();
    for (std::size_t i = 0; i < entries.size(); ++i) {
      Tensor<T>& p = *entries[i].param;
      const Tensor<T>& g = entries[i].grad;
      State& s = states_[i];
      const T shrink = s.decay ? T(1.0 - lr * options_.weight_decay) : T(1);
      for (Index r = 0; r < p.rows(); ++r) {
        T* pr = p.row(r);
        const T* gr = g.row(r);
        T* mr = s.m.row(r);
        T* vr = s.v.row(r);
        for (Index c2 = 0; c2 < p.cols(); ++c2) {
          const T gv = gr[c2];
          mr[c2] = b1 * mr[c2] + (T(1) - b1) * gv;
          vr[c2] = b2 * vr[c2] + (T(1) - b2) * gv * gv;
          pr[c2] = pr[c2] * shrink - step_size * mr[c2] / (std::sqrt(vr[c2]) * inv_sqrt_bc2 + eps);
        }
      }
    }
    return c;
  }

  /// The state as safetensors: "m.<name>", "v.<name>" (F32, or F64 for double) and the step in the metadata.
  safetensors::Writer state() const {
    safetensors::Writer w;
    const auto dtype = sizeof(T) == 8 ? safetensors::DType::F64 : safetensors::DType::F32;
    auto entries = grads_->entries();
    for (std::size_t i = 0; i < entries.size(); ++i) {
      w.add("m." + entries[i].name, states_[i].m, dtype);
      w.add("v." + entries[i].name, states_[i].v, dtype);
    }
    w.set_metadata("step", std::to_string(t_));
    w.set_metadata("format", "engram-adamw-1");
    return w;
  }
  void save(const std::filesystem::path& path) const { state().write(path.string()); }

  /// Restores a state written by save(). Throws Error naming every moment that is missing, of the
  /// wrong shape or unexpected: an optimizer state must match the model it continues.
  void load(const std::filesystem::path& path) {
    const safetensors::File f = safetensors::File::open(path.string());
    std::vector<std::string> problems;
    auto entries = grads_->entries();
    std::size_t matched = 0;
    for (std::size_t i = 0; i < entries.size(); ++i)
      for (const char* kind : {"m.", "v."}) {
        const std::string name = kind + entries[i].name;
        if (!f.contains(name)) {
          problems.push_back("missing " + name);
          continue;
        }
        ++matched;
        const Shape& want = entries[i].param->shape();
        const auto& got = f.info(name).shape;
        bool same = Index(got.size()) == want.rank();
        for (int d = 0; same && d < want.rank(); ++d) same = got[std::size_t(d)] == want[d];
        if (!same) {
          problems.push_back(name + " has the wrong shape");
          continue;
        }
        Tensor<T>& dst = kind[0] == 'm' ? states_[i].m : states_[i].v;
        dst = f.template read<T>(name);
      }
    if (f.tensors().size() != matched)
      problems.push_back(std::to_string(f.tensors().size() - matched) + " moment(s) of parameters this model does not have");
    if (!problems.empty()) {
      std::string msg;
      for (const auto& p : problems) msg += "\n  " + p;
      fail(path.string(), "the optimizer state does not match the model:", msg);
    }
    const auto& meta = f.metadata();
    const auto it = meta.find("step");
    check(it != meta.end(), path.string(), "optimizer state without a \"step\" in its metadata");
    t_ = Index(std::stoll(it->second));
  }

 private:
  struct State {
    Tensor<T> m, v;
    bool decay = false;
  };
  Gradients<T>* grads_;
  AdamWOptions options_;
  std::vector<State> states_;
  Index t_ = 0;
};

}  // namespace train
ENGRAM_NAMESPACE_END
