// Block: a list of residual branches, each (norm, layer): x + f(norm(x)) pre-norm, norm(x + f(x)) post-norm;
// its training forward (optionally checkpointed: recomputed during backward) and backward.
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
      residual(b, x, normed, branch_out, [&](ConstView<T> in, View<T> out) { b.layer->forward(in, out, st, ctx); });
    }
  }

  /// One decode step of several sequences: row b of x [B, d] is sequence b's token, updated in
  /// place as forward() would with its own states (states[b][i] belongs to branches[i]) and context;
  /// each branch runs its forward_batch (shared products, per-sequence state).
  void forward_batch(View<T> x, std::span<const std::span<const std::unique_ptr<LayerState<T>>>> states,
                     std::span<StepContext<T>* const> ctxs) const {
    const Index n = x.rows(), d = x.cols();
    Workspace<T>& ws = *ctxs.front()->workspace;
    View<T> normed = ws.get(0, n, d);
    View<T> branch_out = ws.get(1, n, d);
    thread_local std::vector<LayerState<T>*> st;  // reused: a warm batched step allocates nothing here
    st.assign(static_cast<std::size_t>(n), nullptr);
    for (std::size_t i = 0; i < branches.size(); ++i) {
      const Branch<T>& br = branches[i];
      for (Index b = 0; b < n; ++b) {
        st[std::size_t(b)] = states[std::size_t(b)][i].get();
        StepContext<T>& c = *ctxs[std::size_t(b)];
        if (st[std::size_t(b)] && st[std::size_t(b)]->kv_cache()) c.attention_layer = c.attention_layers_run++;
      }
      residual(br, x, normed, branch_out, [&](ConstView<T> in, View<T> out) { br.layer->forward_batch(in, out, st, ctxs); });
    }
  }

  // One residual branch around `layer(in, out)`: x += layer(norm(x)) (pre-norm) or x = norm(x +
  // layer(x)) (post-norm); normed and out are [rows, d] scratch.
  template <class F>
  void residual(const Branch<T>& b, View<T> x, View<T> normed, View<T> out, F&& layer) const {
    const Index n = x.rows(), d = x.cols();
    if (placement == NormPlacement::pre) {
      b.norm.forward(x, normed);
      layer(normed, out);
      for (Index r = 0; r < n; ++r) simd::add(x.row(r), out.row(r), x.row(r), d);
    } else {
      layer(x, out);
      for (Index r = 0; r < n; ++r) simd::add(x.row(r), out.row(r), x.row(r), d);
      b.norm.forward(x, x);
    }
  }

  /// Training forward: x [n_seqs * seq_len, d] is updated in place as forward() would on each
  /// sequence from a fresh state. With `checkpoint`, only the block's input is kept on the tape and
  /// backward() recomputes the rest (memory of one block instead of all of them).
  void forward_train(View<T> x, TrainContext<T>& ctx, bool checkpoint = false) const {
    if (checkpoint) {
      copy<T>(x, ctx.tape->push(x.rows(), x.cols()));
      const Index mark = ctx.tape->mark();
      forward_train_branches(x, ctx);
      ctx.tape->rewind(mark);
    } else {
      forward_train_branches(x, ctx);
    }
  }

  /// Backward of forward_train: dx holds dL/d(block output) on entry and dL/d(block input) on exit.
  void backward(View<T> dx, TrainContext<T>& ctx, bool checkpoint = false) const {
    const Index n = dx.rows(), d = dx.cols();
    if (checkpoint) {
      // Recompute the block from its saved input (copied out first: the recomputation pushes over it).
      View<T> x = ctx.workspace->get(2, n, d);
      copy<T>(ctx.tape->pop(n, d), x);
      forward_train_branches(x, ctx);
    }
    View<T> d_in = ctx.workspace->get(0, n, d);
    View<T> d_branch = ctx.workspace->get(1, n, d);
    for (std::size_t i = branches.size(); i-- > 0;) {
      const Branch<T>& b = branches[i];
      if (placement == NormPlacement::pre) {
        // x_out = x_in + f(norm(x_in)): dx_in = dx_out + norm'(f'(dx_out)).
        b.layer->backward(dx, d_in, ctx);
        b.norm.backward(ctx.tape->pop(n, d), d_in, dx, ctx.grads, /*accumulate=*/true);
      } else {
        // x_out = norm(s), s = x_in + f(x_in): ds = norm'(dx_out), dx_in = ds + f'(ds).
        b.norm.backward(ctx.tape->pop(n, d), dx, d_in, ctx.grads);
        b.layer->backward(d_in, d_branch, ctx);
        for (Index r = 0; r < n; ++r) simd::add(d_in.row(r), d_branch.row(r), dx.row(r), d);
      }
    }
  }

 private:
  // Saved per branch: pre-norm the branch input x_in (for the norm's backward), post-norm the sum
  // s = x_in + f(x_in) the norm reads; the layer saves its own.
  void forward_train_branches(View<T> x, TrainContext<T>& ctx) const {
    const Index n = x.rows(), d = x.cols();
    View<T> normed = ctx.workspace->get(0, n, d);
    View<T> branch_out = ctx.workspace->get(1, n, d);
    for (const Branch<T>& b : branches) {
      if (placement == NormPlacement::pre) {
        copy<T>(x, ctx.tape->push(n, d));
        b.norm.forward(x, normed);
        b.layer->forward_train(normed, branch_out, ctx);
        for (Index r = 0; r < n; ++r) simd::add(x.row(r), branch_out.row(r), x.row(r), d);
      } else {
        b.layer->forward_train(x, branch_out, ctx);
        for (Index r = 0; r < n; ++r) simd::add(x.row(r), branch_out.row(r), x.row(r), d);
        copy<T>(x, ctx.tape->push(n, d));
        b.norm.forward(x, x);
      }
    }
  }
};

ENGRAM_NAMESPACE_END
