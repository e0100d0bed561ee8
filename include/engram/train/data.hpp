// Training data: text corpora with a held-out split by file offset, and batch sources that are
// deterministic functions of (seed, step, micro-batch), so a resumed run draws exactly the batches
// an uninterrupted one would: random byte windows of a corpus, and freshly generated memory-task
// samples with the loss on the answer.
#pragma once

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "engram/tasks/answer.hpp"
#include "engram/tasks/bindings.hpp"
#include "engram/tasks/memory_tasks.hpp"
#include "engram/tasks/rng.hpp"
#include "engram/tasks/tokenizer.hpp"
#include "engram/train/step.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace train {

/// The bytes of a text, split by offset: training text [0, split), held-out text [split, size).
class TextCorpus {
 public:
  /// `held_out` is the fraction of the text (at its end) kept for evaluation.
  static TextCorpus from_text(std::string text, std::string source, double held_out = 0.02) {
    check(held_out >= 0 && held_out < 1, "train::TextCorpus", "held-out fraction must be in [0, 1), got ", held_out);
    check(!text.empty(), source, "empty corpus");
    TextCorpus c;
    c.text_ = std::move(text);
    c.source_ = std::move(source);
    c.split_ = Index(double(c.text_.size()) * (1.0 - held_out));
    return c;
  }
  /// A text file (read whole; any bytes).
  static TextCorpus from_file(const std::filesystem::path& path, double held_out = 0.02) {
    std::error_code ec;
    check(std::filesystem::is_regular_file(path, ec), path.string(), "is not a regular file (a text corpus is read whole)");
    std::FILE* f = std::fopen(path.c_str(), "rb");
    check(f != nullptr, path.string(), "cannot open the corpus");
    std::string text;
    char buf[1 << 16];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
    std::fclose(f);
    return from_text(std::move(text), path.string(), held_out);
  }
  /// The King James Bible of Debian's bible-kjv package (`bible -f gen1:1-rev22:21`), one verse a
  /// line with the verse references ("Ge1:1 ") removed: 4.3 MB of English.
  static TextCorpus kjv(double held_out = 0.02) {
    std::FILE* p = ::popen("bible -f gen1:1-rev22:21 2>/dev/null", "r");
    check(p != nullptr, "train::TextCorpus::kjv", "cannot run `bible` (install Debian's bible-kjv package)");
    std::string text, line;
    char buf[1 << 16];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) line.append(buf, n);
    const int status = ::pclose(p);
    check(status == 0 && line.size() > 1'000'000, "train::TextCorpus::kjv",
          "`bible -f gen1:1-rev22:21` failed or printed too little (install Debian's bible-kjv package)");
    text.reserve(line.size());
    for (std::size_t i = 0; i < line.size();) {
      std::size_t end = line.find('\n', i);
      if (end == std::string::npos) end = line.size();
      std::string_view verse(line.data() + i, end - i);
      const std::size_t space = verse.find(' ');
      if (space != std::string_view::npos) verse.remove_prefix(space + 1);  // "Ge1:1 In the beginning" -> "In the beginning"
      if (!verse.empty()) text.append(verse).push_back('\n');
      i = end + 1;
    }
    return from_text(std::move(text), "King James Bible (bible-kjv)", held_out);
  }

  std::string_view text() const { return text_; }
  std::string_view train() const { return std::string_view(text_).substr(0, std::size_t(split_)); }
  std::string_view held_out() const { return std::string_view(text_).substr(std::size_t(split_)); }
  const std::string& source() const { return source_; }

 private:
  std::string text_, source_;
  Index split_ = 0;
};

/// Where training batches come from. Both functions are deterministic: train_batch(step, micro)
/// depends only on the source's seed and its arguments, held_out_batch(i) only on i.
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual Batch train_batch(Index step, Index micro, Index n_seqs) const = 0;
  virtual Batch held_out_batch(Index i, Index n_seqs) const = 0;
  virtual Index seq_len() const = 0;
  virtual std::string describe() const = 0;
};

/// Random windows of seq_len + 1 bytes (byte tokenizer): tokens = bytes [0, L), labels = bytes
/// [1, L]. Training windows start anywhere in the training text; held-out windows in the held-out text.
class WindowSource final : public BatchSource {
 public:
  /// `corpus` must outlive the source. Throws Error when a part is shorter than a window.
  WindowSource(const TextCorpus& corpus, Index seq_len, std::uint64_t seed) : corpus_(&corpus), seq_len_(seq_len), seed_(seed) {
    check(seq_len > 0, "train::WindowSource", "context must be positive, got ", seq_len);
    check(Index(corpus.train().size()) > seq_len + 1, corpus.source(), "training text of ", corpus.train().size(),
          " bytes is shorter than one window of ", seq_len + 1, " bytes (the context + 1)");
    check(corpus.held_out().empty() || Index(corpus.held_out().size()) > seq_len + 1, corpus.source(), "held-out text of ",
          corpus.held_out().size(), " bytes is shorter than one window of ", seq_len + 1, " bytes: use a larger held-out fraction or a shorter context");
  }
  Batch train_batch(Index step, Index micro, Index n_seqs) const override {
    return windows(corpus_->train(), tasks::mix_seed(seed_ ^ tasks::mix_seed(std::uint64_t(step) * 1'000'003u + std::uint64_t(micro))), n_seqs);
  }
  Batch held_out_batch(Index i, Index n_seqs) const override {
    check(!corpus_->held_out().empty(), corpus_->source(), "no held-out text (held-out fraction 0)");
    return windows(corpus_->held_out(), tasks::mix_seed(kHeldOutStream + std::uint64_t(i)), n_seqs);
  }
  Index seq_len() const override { return seq_len_; }
  std::string describe() const override { return "windows of " + std::to_string(seq_len_) + " bytes of " + corpus_->source(); }

 private:
  static constexpr std::uint64_t kHeldOutStream = 0x5EED'4E1D'0000'0001ull;  // held-out windows never depend on the training seed
  Batch windows(std::string_view text, std::uint64_t seed, Index n_seqs) const {
    tasks::Rng rng(seed);
    Batch b;
    b.n_seqs = n_seqs;
    b.seq_len = seq_len_;
    b.tokens.resize(std::size_t(b.rows()));
    b.labels.resize(std::size_t(b.rows()));
    for (Index s = 0; s < n_seqs; ++s) {
      const Index start = rng.index(Index(text.size()) - seq_len_);
      for (Index t = 0; t < seq_len_; ++t) {
        b.tokens[std::size_t(s * seq_len_ + t)] = static_cast<unsigned char>(text[std::size_t(start + t)]);
        b.labels[std::size_t(s * seq_len_ + t)] = static_cast<unsigned char>(text[std::size_t(start + t + 1)]);
      }
    }
    return b;
  }
  const TextCorpus* corpus_;
  Index seq_len_;
  std::uint64_t seed_;
};

/// Freshly generated memory-task samples (tasks/memory_tasks.hpp): the sample's tokens, then its
/// answer bytes (tasks/answer.hpp), padded to length + max_answer_bytes(); the loss is on the
/// answer bytes only (`answer_only`, default) or on every next byte. `bindings` (reasoning, answer
/// only) labels the facts' and the question's directions as well (tasks/bindings.hpp).
class TaskSource final : public BatchSource {
 public:
  TaskSource(const tasks::Corpus& background, tasks::TaskOptions options, std::uint64_t seed, bool answer_only = true,
             bool bindings = false)
      : background_(&background), options_(options), seed_(seed), answer_only_(answer_only), bindings_(bindings) {
    check(options.length > 0, "train::TaskSource", "task length must be positive, got ", options.length);
    check(!bindings || (answer_only && options.task == tasks::Task::reasoning), "train::TaskSource",
          "binding labels need the reasoning task with the answer-only loss, got ", tasks::name(options.task),
          answer_only ? " (answer only)" : " (every byte)");
    (void)tasks::make_sample(background, options, 0);  // fails early when the task does not fit
  }
  Batch train_batch(Index step, Index micro, Index n_seqs) const override {
    return samples(tasks::mix_seed(seed_ ^ tasks::mix_seed(std::uint64_t(step) * 1'000'003u + std::uint64_t(micro))), n_seqs);
  }
  Batch held_out_batch(Index i, Index n_seqs) const override { return samples(tasks::mix_seed(kHeldOutStream + std::uint64_t(i)), n_seqs); }
  Index seq_len() const override { return options_.length + tasks::max_answer_bytes(); }
  std::string describe() const override {
    return std::string(tasks::name(options_.task)) + " samples of " + std::to_string(options_.length) + " bytes";
  }

  /// Sample seeds of held-out batch i are drawn from a stream disjoint from every training seed.
  static constexpr std::uint64_t kHeldOutStream = 0x5EED'7A5C'0000'0001ull;

 private:
  Batch samples(std::uint64_t seed, Index n_seqs) const {
    tasks::Rng rng(seed);
    Batch b;
    b.n_seqs = n_seqs;
    b.seq_len = seq_len();
    b.tokens.assign(std::size_t(b.rows()), tasks::ByteTokenizer::pad);
    b.labels.assign(std::size_t(b.rows()), kIgnore);
    for (Index s = 0; s < n_seqs; ++s) {
      const tasks::Sample sample = tasks::make_sample(*background_, options_, rng.next());
      std::vector<std::int32_t> seq = sample.tokens;
      for (char c : tasks::answer_bytes(sample.info.answer)) seq.push_back(static_cast<unsigned char>(c));
      const Index answer_begin = Index(sample.tokens.size());
      std::int32_t* tok = b.tokens.data() + s * b.seq_len;
      std::int32_t* lab = b.labels.data() + s * b.seq_len;
      std::copy(seq.begin(), seq.end(), tok);
      for (Index t = 0; t + 1 < Index(seq.size()); ++t)
        if (!answer_only_ || t + 1 >= answer_begin) lab[t] = seq[std::size_t(t + 1)];
      if (bindings_)
        for (const tasks::BindingLabel& l : tasks::binding_labels(sample.info)) lab[l.position] = l.token;
    }
    return b;
  }
  const tasks::Corpus* background_;
  tasks::TaskOptions options_;
  std::uint64_t seed_;
  bool answer_only_;
  bool bindings_;
};

}  // namespace train
ENGRAM_NAMESPACE_END
