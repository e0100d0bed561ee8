// Block: a list of residual branches, each (norm, layer): x + f(norm(x)) pre-norm, norm(x + f(x)) post-norm.
#pragma once

#include <memory>
#include <vector>

#include "engram/nn/layer.hpp"
#include "engram/nn/norm.hpp"

ENGRAM_NAMESPACE_BEGIN

/// One residual branch. A Llama or GPT-2 block is [(norm, attention), (norm, mlp)]; a TTT block on
/// the Mamba backbone is [(norm, conv), (norm, ttt), (norm, mlp)].
template <class T>
struct Branch {
  Norm<T> norm;
  std::unique_ptr<SequenceLayer<T>> layer;
};

template <class T>
struct Block {
  NormPlacement placement = NormPlacement::pre;
  std::vector<Branch<T>> branches;

  /// x [T, d] is the residual stream, updated in place; states[i] belongs to branches[i].
  void forward(View<T> x, std::span<const std::unique_ptr<LayerState<T>>> states, StepContext<T>& ctx) const {
    const Index n = x.rows(), d = x.cols();
    View<T> normed = ctx.workspace->get(0, n, d);
    View<T> branch_out = ctx.workspace->get(1, n, d);
    for (std::size_t i = 0; i < branches.size(); ++i) {
      const Branch<T>& b = branches[i];
      LayerState<T>* st = states[i].get();
      if (st && st->kv_cache()) ctx.attention_layer = ctx.attention_layers_run++;
      if (placement == NormPlacement::pre) {
        b.norm.forward(x, normed);
        b.layer->forward(normed, branch_out, st, ctx);
        for (Index r = 0; r < n; ++r) simd::add(x.row(r), branch_out.row(r), x.row(r), d);
      } else {
        b.layer->forward(x, branch_out, st, ctx);
        for (Index r = 0; r < n; ++r) simd::add(x.row(r), branch_out.row(r), x.row(r), d);
        b.norm.forward(x, x);
      }
    }
  }
};

ENGRAM_NAMESPACE_END
