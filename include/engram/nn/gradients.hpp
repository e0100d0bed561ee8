// Gradients<T>: one gradient tensor per trained parameter, keyed by the names visit_parameters gives
// and found by the parameter tensor itself, so the optimizer, checkpoints and gradient checks walk
// one list while layers look their gradients up without building strings.
#pragma once

#include <cmath>
#include <functional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "engram/core/simd.hpp"
#include "engram/core/tensor.hpp"

ENGRAM_NAMESPACE_BEGIN

/// Which parameters a Gradients set trains: called with each parameter's name; false freezes it
/// (layers then skip computing its gradient, inputs' gradients still flow).
using ParameterFilter = std::function<bool(const std::string& name)>;

/// The gradients of a model's parameters. Built from anything with
/// `visit_parameters(f(name, Tensor<T>&))` (a Decoder, an RMT cell, a layer): one zero tensor of
/// the parameter's shape per name, in visiting order. A tensor visited under two names (a tied
/// embedding and LM head) has one gradient, under its first name, that every use accumulates into.
/// The parameters themselves are only written by an optimizer step (see train/optimizer.hpp).
template <class T>
class Gradients {
 public:
  struct Entry {
    std::string name;
    Tensor<T>* param = nullptr;  ///< the parameter (owned by the model)
    Tensor<T> grad;              ///< same shape as *param
  };

  Gradients() = default;
  template <class Model>
  explicit Gradients(Model& model, const ParameterFilter& train = {}) {
    model.visit_parameters([&](const std::string& name, Tensor<T>& p) { add(name, p, train); });
  }
  Gradients(Gradients&&) noexcept = default;
  Gradients& operator=(Gradients&&) noexcept = default;

  /// Adds parameters of another module (e.g. an RMT memory beside its backbone) under `prefix`.
  template <class Model>
  void add_module(Model& model, const std::string& prefix, const ParameterFilter& train = {}) {
    model.visit_parameters([&](const std::string& name, Tensor<T>& p) { add(prefix + name, p, train); });
  }
  /// Adds one parameter (ignored when already present or filtered out).
  void add(const std::string& name, Tensor<T>& param, const ParameterFilter& train = {}) {
    if (param.empty() || by_param_.count(&param) || (train && !train(name))) return;
    for (const Entry& e : entries_) check(e.name != name, "Gradients", "two parameters named \"", name, "\"");
    by_param_.emplace(&param, entries_.size());
    entries_.push_back({name, &param, Tensor<T>(param.shape())});
  }

  /// The gradient of `param`, or null when it is not trained (frozen or not part of this set).
  Tensor<T>* find(const Tensor<T>& param) {
    const auto it = by_param_.find(&param);
    return it == by_param_.end() ? nullptr : &entries_[it->second].grad;
  }
  /// The gradient named `name`; throws Error when there is none.
  Tensor<T>& at(const std::string& name) {
    for (Entry& e : entries_)
      if (e.name == name) return e.grad;
    fail("Gradients", "no gradient named \"", name, "\"");
  }
  const Tensor<T>& at(const std::string& name) const { return const_cast<Gradients*>(this)->at(name); }

  std::span<Entry> entries() { return entries_; }
  std::span<const Entry> entries() const { return entries_; }
  std::size_t size() const { return entries_.size(); }
  /// Number of trained scalars.
  Index numel() const {
    Index n = 0;
    for (const Entry& e : entries_) n += e.grad.numel();
    return n;
  }

  void zero() {
    for (Entry& e : entries_) e.grad.set_zero();
  }
  /// Global L2 norm over every gradient, in double.
  double norm() const {
    double s = 0;
    for (const Entry& e : entries_)
      for (Index r = 0; r < e.grad.rows(); ++r) {
        const T* g = e.grad.row(r);
        for (Index c = 0; c < e.grad.cols(); ++c) s += double(g[c]) * double(g[c]);
      }
    return std::sqrt(s);
  }
  /// Multiplies every gradient by `factor`.
  void scale(T factor) {
    for (Entry& e : entries_)
      for (Index r = 0; r < e.grad.rows(); ++r) simd::scale(factor, e.grad.row(r), e.grad.cols());
  }
  /// Adds another set built from the same model (same names, same order).
  Gradients& operator+=(const Gradients& o) {
    check(o.entries_.size() == entries_.size(), "Gradients", "adding a set of ", o.entries_.size(), " gradients to one of ",
          entries_.size());
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      check(o.entries_[i].name == entries_[i].name, "Gradients", "adding \"", o.entries_[i].name, "\" to \"", entries_[i].name, "\"");
      for (Index r = 0; r < entries_[i].grad.rows(); ++r)
        simd::add(entries_[i].grad.row(r), o.entries_[i].grad.row(r), entries_[i].grad.row(r), entries_[i].grad.cols());
    }
    return *this;
  }
  /// Name of the first gradient holding a NaN or infinity, or empty.
  std::string first_non_finite() const {
    for (const Entry& e : entries_)
      for (Index r = 0; r < e.grad.rows(); ++r)
        for (Index c = 0; c < e.grad.cols(); ++c)
          if (!std::isfinite(double(e.grad.row(r)[c]))) return e.name;
    return {};
  }

 private:
  std::vector<Entry> entries_;
  std::unordered_map<const Tensor<T>*, std::size_t> by_param_;
};

ENGRAM_NAMESPACE_END
