// Training ARMT: backpropagation through time across segments through the associative memories
// (A_l, z_l are the carried state; gamma is detached as in the official code), the memory tokens
// and every weight. As rmt/bptt.hpp: the forward keeps only the state entering each segment and the
// backward recomputes each segment from it, last segment first; truncation by the same k2 rule.
// Included by rmt/armt.hpp (it defines ArmtWrapper::train_step).
#pragma once

#include <vector>

#include "engram/rmt/armt.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace rmt {

/// Buffers reused by every ARMT training step: the step buffers (tape, workspace, RoPE table) and the
/// associative state entering each segment (n_segments x layers x n_seqs x (d_key x d + d_key)).
template <class T>
class ArmtBuffers {
 public:
  train::StepBuffers<T> step;
  std::size_t bytes() const {
    std::size_t b = step.bytes() + logits_.bytes() + labels_.capacity() * sizeof(std::int32_t);
    for (const auto& seg : A_)
      for (const auto& t : seg) b += t.bytes();
    for (const auto& seg : z_)
      for (const auto& t : seg) b += t.bytes();
    for (const auto* v : {&gA_, &gz_, &gA_in_, &gz_in_, &work_})
      for (const auto& t : *v) b += t.bytes();
    return b;
  }

 private:
  friend class ArmtWrapper<T>;
  std::vector<std::vector<Tensor<T>>> A_, z_;  // [segment][layer]: [B d_key, d], [B, d_key] entering the segment
  std::vector<Tensor<T>> gA_, gz_;             // [layer]: gradient of the state leaving the segment being differentiated
  std::vector<Tensor<T>> gA_in_, gz_in_;       // [layer]: gradient of the state entering it
  std::vector<Tensor<T>> work_;                // per-sequence scratch of the associative kernels
  Tensor<T> logits_;
  std::vector<std::int32_t> labels_;
};

template <class T>
StepStats ArmtWrapper<T>::train_step(const TrainBatch& batch, Gradients<T>* grads, ArmtBuffers<T>& buf, T grad_scale,
                                     const BpttOptions& o) const {
  const char* where = "rmt::ArmtWrapper::train_step";
  const Decoder<T>& bb = *backbone_;
  const ModelConfig& mc = bb.config;
  const Index B = batch.n_seqs, N = batch.length, m = config_.memory_tokens, d = mc.d_model, K = config_.d_key(), dm = config_.d_mem;
  const Index L = Index(layers_.size());
  check(B >= 1 && N >= 1, where, "expected at least one sequence of at least one token, got ", B, " x ", N);
  check(Index(batch.tokens.size()) == B * N, where, "expected ", B * N, " tokens (", B, " x ", N, "), got ", batch.tokens.size());
  check(Index(batch.labels.size()) == B * N, where, "expected ", B * N, " labels, got ", batch.labels.size());
  check_tokens(batch.tokens, where);
  for (std::size_t i = 0; i < batch.labels.size(); ++i)
    check(batch.labels[i] < mc.vocab_size, where, "label ", batch.labels[i], " at row ", i, " outside the vocabulary [0, ", mc.vocab_size, ")");
  check(o.k2 == -1 || o.k2 >= 1, where, "k2 must be -1 (full BPTT) or >= 1, got ", o.k2);
  Gradients<T>* g = o.backward ? grads : nullptr;

  const std::vector<Segment> segments = split(N, config_.segment_size, Alignment::left);
  const Index S = Index(segments.size());
  StepStats stats;
  stats.segments = S;
  stats.tokens = B * N;
  buf.A_.resize(std::size_t(S + 1));
  buf.z_.resize(std::size_t(S + 1));
  for (Index k = 0; k <= S; ++k) {
    buf.A_[std::size_t(k)].resize(std::size_t(L));
    buf.z_[std::size_t(k)].resize(std::size_t(L));
    for (Index l = 0; l < L; ++l) {
      buf.A_[std::size_t(k)][std::size_t(l)].reshape_rows(B * K, d);
      buf.z_[std::size_t(k)][std::size_t(l)].reshape_rows(B, K);
    }
  }
  for (Index l = 0; l < L; ++l) buf.A_[0][std::size_t(l)].set_zero(), buf.z_[0][std::size_t(l)].set_zero();
  buf.work_.resize(8);
  auto work = [&](int i, Index r, Index c) {
    buf.work_[std::size_t(i)].reshape_rows(r, c);
    return buf.work_[std::size_t(i)].view();
  };
  using Read = typename AssociativeMemory<T>::ReadSaved;
  using Write = typename AssociativeMemory<T>::WriteSaved;
  auto read_rows = [](const Read& r, Index b, Index n) {
    return Read{r.h.middle_rows(b * n, n), r.q.middle_rows(b * n, n), r.out.middle_rows(b * n, n), r.den.middle_rows(b * n, n)};
  };
  auto write_rows = [m](const Write& w, Index b) {
    return Write{w.m.middle_rows(b * m, m),   w.k.middle_rows(b * m, m),    w.u.middle_rows(b * m, m),    w.prev.middle_rows(b * m, m),
                 w.den.middle_rows(b * m, m), w.beta.middle_rows(b * m, m), w.gamma.middle_rows(b * m, m)};
  };
  Tape<T>& tape = buf.step.tape;

  // Training forward of segment k from the state entering it; writes the state leaving it into
  // A_/z_[k + 1]. x [B n, d] holds the final hidden states on return.
  auto forward = [&](Index k, View<T> x, TrainContext<T>& ctx) {
    const Segment seg = segments[std::size_t(k)];
    const Index sk = seg.size, n = sk + m;
    for (Index b = 0; b < B; ++b) {
      bb.embed_tokens(std::span<const std::int32_t>(batch.tokens).subspan(std::size_t(b * N + seg.begin), std::size_t(sk)),
                      x.middle_rows(b * n, sk));
      copy(memory_.view(), x.middle_rows(b * n + sk, m));
    }
    if (mc.positions == PositionKind::learned)
      for (Index r = 0; r < B * n; ++r) simd::add(x.row(r), bb.position_table.row(position(r % n, sk)), x.row(r), d);
    for (Index l = 0; l < L; ++l) {
      const AssociativeMemory<T>& a = layers_[std::size_t(l)];
      const Tensor<T>& A = buf.A_[std::size_t(k)][std::size_t(l)];
      const Tensor<T>& z = buf.z_[std::size_t(k)][std::size_t(l)];
      if (k > 0) {
        const Read rs{tape.push(B * n, d), tape.push(B * n, dm), tape.push(B * n, d), tape.push(B * n, 1)};
        for (Index b = 0; b < B; ++b)
          a.read(x.middle_rows(b * n, n), A.view().middle_rows(b * K, K), z.view().middle_rows(b, 1), read_rows(rs, b, n), work(0, n, K), ctx.flops);
      }
      bb.blocks[std::size_t(l)].forward_train(x, ctx, ctx.checkpoint && ctx.checkpoint(l));
      const Write ws{tape.push(B * m, d), tape.push(B * m, dm), tape.push(B * m, d), tape.push(B * m, d),
                     tape.push(B * m, 1), tape.push(B * m, 1),  tape.push(B * m, 1)};
      Tensor<T>& A_out = buf.A_[std::size_t(k + 1)][std::size_t(l)];
      Tensor<T>& z_out = buf.z_[std::size_t(k + 1)][std::size_t(l)];
      for (Index b = 0; b < B; ++b)
        a.write(ConstView<T>(x).middle_rows(b * n + sk, m), A.view().middle_rows(b * K, K), z.view().middle_rows(b, 1),
                A_out.view().middle_rows(b * K, K), z_out.view().middle_rows(b, 1), k == 0, write_rows(ws, b), work(0, m, K), ctx.flops);
    }
    if (mc.final_norm) {
      copy<T>(x, tape.push(x.rows(), d));
      bb.final_norm.forward(x, x);
    }
  };

  std::vector<bool> ok(std::size_t(B), true), labelled(std::size_t(B), false);
  auto loss = [&](Index k, ConstView<T> x, View<T> dx) {
    return detail::content_lm_loss<T>(bb, batch, segments[std::size_t(k)], segments[std::size_t(k)].size + m, 0, x, dx, g, grad_scale, o.accuracy,
                                      buf.labels_, buf.logits_, stats, ok, labelled, buf.step.flops);
  };
  auto context = [&](Index k) {
    TrainContext<T> ctx = buf.step.context(bb, B, segments[std::size_t(k)].size + m, g);
    ctx.checkpoint = o.checkpoint;
    return ctx;
  };

  // Forward: every segment in order, keeping the state entering each one (the last one is
  // recomputed by the backward).
  std::vector<Index> marks(std::size_t(S), 0);
  for (Index k = 0; k < S; ++k) {
    if (o.backward && o.recompute && k == S - 1) break;
    const Index n = segments[std::size_t(k)].size + m;
    TrainContext<T> ctx = context(k);
    View<T> x = buf.step.hidden(B * n, d);
    marks[std::size_t(k)] = tape.mark();
    forward(k, x, ctx);
    if (!o.backward) loss(k, x, View<T>());
    if (o.backward && !o.recompute) copy<T>(x, tape.push(B * n, d));
    else tape.rewind(marks[std::size_t(k)]);
  }

  if (o.backward) {
    buf.gA_.resize(std::size_t(L)), buf.gz_.resize(std::size_t(L)), buf.gA_in_.resize(std::size_t(L)), buf.gz_in_.resize(std::size_t(L));
    for (Index l = 0; l < L; ++l) {
      buf.gA_[std::size_t(l)].reshape_rows(B * K, d), buf.gA_[std::size_t(l)].set_zero();
      buf.gz_[std::size_t(l)].reshape_rows(B, K), buf.gz_[std::size_t(l)].set_zero();
      buf.gA_in_[std::size_t(l)].reshape_rows(B * K, d), buf.gz_in_[std::size_t(l)].reshape_rows(B, K);
    }
    bool flowing = false;
    Tensor<T>* g_memory = g ? g->find(memory_) : nullptr;
    Tensor<T>* g_pos = g && mc.positions == PositionKind::learned ? g->find(bb.position_table) : nullptr;
    for (Index k = S - 1; k >= 0; --k) {
      const Segment seg = segments[std::size_t(k)];
      const Index sk = seg.size, n = sk + m;
      bool has_loss = false;
      for (Index b = 0; b < B && !has_loss; ++b)
        for (Index t = 0; t < sk && !has_loss; ++t) has_loss = batch.labels[std::size_t(b * N + seg.begin + t)] >= 0;
      if (!has_loss && !flowing) {
        if (!o.recompute) tape.rewind(marks[std::size_t(k)]);
        continue;
      }
      TrainContext<T> ctx = context(k);
      View<T> x = buf.step.hidden(B * n, d);
      if (o.recompute) forward(k, x, ctx);
      else copy<T>(tape.pop(B * n, d), x);
      View<T> dx = buf.step.grad_hidden(B * n, d);
      loss(k, x, dx);
      if (mc.final_norm) {
        Tensor<T> dy = Tensor<T>::from_view(dx);
        bb.final_norm.backward(tape.pop(B * n, d), dy.view(), dx, g);
      }
      for (Index l = L - 1; l >= 0; --l) {
        const AssociativeMemory<T>& a = layers_[std::size_t(l)];
        const Tensor<T>& A = buf.A_[std::size_t(k)][std::size_t(l)];
        const Tensor<T>& z = buf.z_[std::size_t(k)][std::size_t(l)];
        Tensor<T>& gA_in = buf.gA_in_[std::size_t(l)];
        Tensor<T>& gz_in = buf.gz_in_[std::size_t(l)];
        gA_in.set_zero(), gz_in.set_zero();
        Write ws;
        ws.gamma = tape.pop(B * m, 1), ws.beta = tape.pop(B * m, 1), ws.den = tape.pop(B * m, 1), ws.prev = tape.pop(B * m, d);
        ws.u = tape.pop(B * m, d), ws.k = tape.pop(B * m, dm), ws.m = tape.pop(B * m, d);
        for (Index b = 0; b < B; ++b)
          a.write_backward(A.view().middle_rows(b * K, K), z.view().middle_rows(b, 1), buf.gA_[std::size_t(l)].view().middle_rows(b * K, K),
                           buf.gz_[std::size_t(l)].view().middle_rows(b, 1), gA_in.view().middle_rows(b * K, K), gz_in.view().middle_rows(b, 1),
                           dx.middle_rows(b * n + sk, m), k == 0, write_rows(ws, b), g, work(0, m, K), work(1, m, K), work(2, m, dm),
                           ctx.flops);
        bb.blocks[std::size_t(l)].backward(dx, ctx, ctx.checkpoint && ctx.checkpoint(l));
        if (k > 0) {
          Read rs;
          rs.den = tape.pop(B * n, 1), rs.out = tape.pop(B * n, d), rs.q = tape.pop(B * n, dm), rs.h = tape.pop(B * n, d);
          for (Index b = 0; b < B; ++b)
            a.read_backward(dx.middle_rows(b * n, n), A.view().middle_rows(b * K, K), z.view().middle_rows(b, 1), read_rows(rs, b, n),
                            gA_in.view().middle_rows(b * K, K), gz_in.view().middle_rows(b, 1), g, work(0, n, K), work(1, n, K),
                            work(2, n, dm), ctx.flops);
        }
      }
      // dx: dL/d(input embeddings with positions).
      if (g_pos)
        for (Index r = 0; r < B * n; ++r) {
          T* row = g_pos->row(position(r % n, sk));
          simd::add(row, dx.row(r), row, d);
        }
      for (Index b = 0; b < B; ++b) {
        bb.embed.backward(std::span<const std::int32_t>(batch.tokens).subspan(std::size_t(b * N + seg.begin), std::size_t(sk)),
                          ConstView<T>(dx).middle_rows(b * n, sk), g);
        if (g_memory)
          for (Index r = 0; r < m; ++r) simd::add(g_memory->row(r), dx.row(b * n + sk + r), g_memory->row(r), d);
      }
      // The state entering segment k carries its gradient to segment k - 1 unless detached there.
      flowing = k > 0 && !memory_detached(k, o.k2, S);
      for (Index l = 0; l < L; ++l) {
        std::swap(buf.gA_[std::size_t(l)], buf.gA_in_[std::size_t(l)]);
        std::swap(buf.gz_[std::size_t(l)], buf.gz_in_[std::size_t(l)]);
        if (!flowing) buf.gA_[std::size_t(l)].set_zero(), buf.gz_[std::size_t(l)].set_zero();
      }
      check(o.recompute || tape.mark() == marks[std::size_t(k)], where, "segment ", k, "'s backward left the tape unbalanced");
    }
  }
  for (Index b = 0; b < B; ++b)
    if (labelled[std::size_t(b)]) {
      ++stats.sequences;
      if (ok[std::size_t(b)] && o.accuracy) ++stats.correct;
    }
  check(tape.empty(), where, "the backward left ", tape.mark(), " saved activations on the tape");
  tape.clear();
  return stats;
}

}  // namespace rmt
ENGRAM_NAMESPACE_END
