// The main demo: full attention, NAMM, TTT and RMT read the same long document side by side, with
// measured time, analytic FLOPs and the memory each keeps, as the document grows.
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engram/eval/rmt_reader.hpp"
#include "engram/rmt/armt_io.hpp"
#include "engram/rmt/loader.hpp"
#include "example_util.hpp"

using namespace engram;

namespace {

struct Measurement {
  double read_s = 0, gflop = 0, state_mib = 0, decode_ms = -1;
  std::string note;
};

// One row of the table: a way of reading a sequence.
struct Contender {
  std::string name;
  std::function<Measurement(std::span<const std::int32_t>)> read;
};

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Reads the document through a decoder (optionally with a cache policy), then decodes 16 tokens.
Measurement read_with_decoder(const Decoder<float>& model, const CachePolicy<float>* policy, std::span<const std::int32_t> doc) {
  Measurement m;
  auto s = model.make_state(policy);
  const auto t0 = Clock::now();
  model.prefill(doc, s, {.chunk = 512});
  m.read_s = since(t0);
  m.gflop = s.flops.total() * 1e-9;
  m.state_mib = double(s.bytes()) / (1 << 20);
  const auto t1 = Clock::now();
  constexpr int kDecode = 16;
  for (int i = 0; i < kDecode; ++i) model.decode(std::int32_t('a' + i), s);
  m.decode_ms = 1e3 * since(t1) / kDecode;
  Index cached = 0;
  for (auto* c : s.caches()) cached = std::max(cached, c->max_size());
  if (!s.caches().empty()) m.note = std::to_string(cached) + " cached tokens/head";
  return m;
}

// A trained RMT (or ARMT) reads a long document of its memory task and answers the question by
// greedy generation; `samples` documents of `length` tokens (held-out seeds), each printed with the
// most likely of the six places as well (the choice the accuracy tables score: a byte-level model
// can know the place and still misspell it, e.g. a doubled letter, when it generates).
template <class W>
void trained_rmt_answers(const W& model, tasks::Task task, Index length, int samples) {
  const tasks::Corpus corpus = tasks::Corpus::fortunes();
  int correct = 0, choices = 0;
  for (int i = 0; i < samples; ++i) {
    tasks::TaskOptions t{task, length, model.segment_size()};
    tasks::SampleStream stream(corpus, t, tasks::mix_seed(0xDE30'0000ull + std::uint64_t(i)));
    auto s = model.make_state();
    std::vector<std::int32_t> chunk(std::size_t(std::min<Index>(length, 1 << 16)));
    const auto t0 = Clock::now();
    while (stream.remaining() > 0) {
      const Index n = stream.read(chunk);
      model.push(std::span<const std::int32_t>(chunk).first(std::size_t(n)), s);
    }
    const double read_s = since(t0);
    const int choice = eval::most_likely_answer(model, s);
    choices += choice == stream.info().answer;
    const auto answer = model.generate(s, 12, '\n', rmt::answer_continuation(model.backbone().config));
    std::string text = tasks::ByteTokenizer::decode(answer, true);
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    while (!text.empty() && text.front() == ' ') text.erase(0, 1);
    const bool ok = text == stream.info().answer_text();
    correct += ok;
    std::string facts;
    // Where each fact lies: at the start (memorization) or anywhere in the document (detection, reasoning).
    for (std::size_t f = 0; f < stream.info().facts.size(); ++f)
      facts += (facts.empty() ? "\"" : " ... \"") + stream.info().facts[f] + "\" (token " +
               std::to_string(stream.info().fact_spans[f].begin) + ")";
    std::printf("  %s ... %td tokens in all, fortunes around ... \"%s\" -> \"%s\" %s; most likely place: %s %s (read in %.1f s, %.0f tokens/s, state %.1f KiB)\n",
                facts.c_str(), length, stream.info().question.c_str(), text.c_str(), ok ? "correct" : "WRONG",
                std::string(tasks::kPlaces[std::size_t(choice)]).c_str(), choice == stream.info().answer ? "correct" : "WRONG", read_s,
                double(length) / read_s, double(s.peak_bytes()) / 1024.0);
  }
  std::printf("  %d of %d generated exactly, %d of %d places chosen right (chance: 1 in 6)\n", correct, samples, choices, samples);
}

}  // namespace

int main(int argc, char** argv) {
  Index max_length = 8192;
  std::string namm_weights, namm_budget;
#ifdef ENGRAM_RMT_TRAINED_DIR
  std::string rmt_model_dir = std::string(ENGRAM_RMT_TRAINED_DIR) + "/fact_memorization";
  std::string rmt_detection_dir = std::string(ENGRAM_RMT_TRAINED_DIR) + "/fact_detection";
  std::string rmt_reasoning_dir = std::string(ENGRAM_RMT_TRAINED_DIR) + "/reasoning";
#else
  std::string rmt_model_dir, rmt_detection_dir, rmt_reasoning_dir;
#endif
  bool long_run = false;
  return cli::run(
      argc, argv,
      "engram-demo: reads a generated bAbI-style document (a fact hidden in background text, the question at the end) with "
      "four models of the same width (d = 256, 4 layers, random weights): full attention, NAMM, TTT-Linear and RMT; prints, "
      "per length: time to read it, analytic FLOPs, the memory its state keeps, and decode time per token.",
      [&](CLI::App& app) {
        app.add_option("--max-length", max_length, "longest document (lengths double from 1024)")
            ->check(CLI::Range(Index(1024), Index(1) << 24));
        app.add_option("--namm-weights", namm_weights, "NAMM weights (default: random weights)")->check(cli::regular_file());
        app.add_option("--namm-budget", namm_budget,
                       "NAMM hard cap: tokens or a ratio of the tokens seen (default: 0.25 with random weights, which on their "
                       "own evict little; none with --namm-weights)")
            ->check(examples::budget_validator());
        app.add_option("--rmt-model", rmt_model_dir, "trained fact-memorization RMT/ARMT checkpoint for the answering part (engram-rmt-train's OUT/best)");
        app.add_option("--rmt-detection-model", rmt_detection_dir, "trained fact-detection RMT/ARMT checkpoint for the answering part (\"\": none)");
        app.add_option("--rmt-reasoning-model", rmt_reasoning_dir, "trained reasoning RMT/ARMT checkpoint for the answering part (\"\": none)");
        app.add_flag("--long", long_run, "the trained RMT reads 1,048,576-token documents (default 65,536)");
      },
      [&] {
        // The same width everywhere: d = 256, 4 layers, SwiGLU 768, byte vocabulary, random weights.
        const auto attention_model = std::make_shared<const Decoder<float>>(examples::default_model(1));
        ttt::ModelSpec spec;
        spec.layer = ttt::Config::transformer(ttt::Kind::linear, 256, 4);
        spec.vocab_size = tasks::ByteTokenizer::vocab_size;
        spec.n_layers = 4;
        spec.d_ff = 768;
        auto ttt_model = ttt::make_decoder<float>(spec);
        init_random(ttt_model, 2);

        namm::NammWeights<float> weights;
        if (!namm_weights.empty()) {
          weights = namm::load_namm<float>(namm_weights);
        } else {
          weights.theta = Tensor<float>({namm::BamScorer<float>::kParams});
          std::mt19937_64 rng(5);
          std::normal_distribution<float> normal(0.f, 0.05f);
          for (Index i = 0; i < weights.theta.numel(); ++i) weights.theta[i] = normal(rng);
          weights.stats.var.fill(1.0);
          weights.config.cap = Budget::of_ratio(0.25);
        }
        if (!namm_budget.empty()) weights.config.cap = parse_budget(namm_budget);
        const auto namm_policy = weights.policy();
        const std::string namm_name = weights.config.cap.limited() ? "NAMM (capped)" : "NAMM";

        constexpr Index kSegment = 512, kMemory = 16;
        const rmt::RecurrentWrapper<float> rmt_model(
            rmt::MemoryCell<float>(attention_model, rmt::Config::decoder(kMemory, kSegment), rmt::hf_initial_memory(*attention_model, kMemory, 3)));

        const std::vector<Contender> contenders = {
            {"full attention", [&](auto doc) { return read_with_decoder(*attention_model, nullptr, doc); }},
            {namm_name, [&](auto doc) { return read_with_decoder(*attention_model, &namm_policy, doc); }},
            {"TTT-Linear", [&](auto doc) { return read_with_decoder(ttt_model, nullptr, doc); }},
            {"RMT", [&](auto doc) {
               Measurement m;
               auto s = rmt_model.make_state();
               const auto t0 = Clock::now();
               rmt_model.push(doc, s);
               rmt_model.finish(s);
               m.read_s = since(t0);
               m.gflop = s.flops.total() * 1e-9;
               m.state_mib = double(s.peak_bytes()) / (1 << 20);
               m.note = std::to_string((doc.size() + kSegment - 1) / kSegment) + " segments of " + std::to_string(kSegment) + " + " +
                        std::to_string(kMemory) + " memory";
               return m;
             }}};

        const auto doc = examples::babi_document(max_length, 11);
        std::printf("document: %td byte tokens; fact \"%s\" at token %td; question \"%s\" (answer: %s)\n", max_length,
                    doc.info.facts[0].c_str(), doc.info.fact_spans[0].begin, doc.info.question.c_str(),
                    std::string(doc.info.answer_text()).c_str());
        std::printf("models: d = 256, 4 layers, random weights; one state per sequence; %d threads\n\n", num_threads());
        std::printf("%-15s %8s %10s %10s %10s %11s %11s  %s\n", "method", "tokens", "read (s)", "tokens/s", "GFLOP", "state MiB",
                    "decode ms", "");
        std::vector<std::vector<Measurement>> results(contenders.size());
        for (Index length = 1024; length <= max_length; length *= 2) {
          const auto prefix = std::span(doc.tokens).subspan(0, std::size_t(length));
          for (std::size_t c = 0; c < contenders.size(); ++c) {
            const Measurement m = contenders[c].read(prefix);
            results[c].push_back(m);
            char decode[32] = "      n/a";
            if (m.decode_ms >= 0) std::snprintf(decode, sizeof decode, "%11.3f", m.decode_ms);
            std::printf("%-15s %8td %10.3f %10.0f %10.2f %11.2f %11s  %s\n", contenders[c].name.c_str(), length, m.read_s,
                        double(length) / m.read_s, m.gflop, m.state_mib, decode, m.note.c_str());
          }
          std::printf("\n");
        }
        const Measurement& full = results[0].back();
        std::printf("at %td tokens, relative to full attention:\n", Index(doc.tokens.size()));
        for (std::size_t c = 1; c < contenders.size(); ++c) {
          const Measurement& m = results[c].back();
          std::printf("  %-14s %5.2fx faster to read, %5.2fx fewer FLOPs, %6.1fx less state memory\n", contenders[c].name.c_str(),
                      full.read_s / m.read_s, full.gflop / m.gflop, full.state_mib / m.state_mib);
        }
        std::printf("\nState memory is what the method keeps per sequence: KV caches (with NAMM's feature columns), TTT's\n"
                    "inner weights, or RMT's memory plus one segment's working set. NAMM pays for its scorer (quadratic\n"
                    "in the cache size, every 512 tokens) and for streaming attention probabilities (one more Q.K^T).\n"
                    "Weights are random: this table is about cost; accuracy needs trained weights (engram-namm-evolve,\n"
                    "a converted evo-memory checkpoint, or the RMT tasks).\n");

        // Trained weights: RMTs that remember (tests/fixtures/rmt_trained, README for the commands).
        const Index length = long_run ? Index(1) << 20 : Index(1) << 16;
        const std::pair<tasks::Task, std::string> trained[] = {{tasks::Task::fact_memorization, rmt_model_dir},
                                                               {tasks::Task::fact_detection, rmt_detection_dir},
                                                               {tasks::Task::reasoning, rmt_reasoning_dir}};
        for (const auto& [task, dir] : trained) {
          if (dir.empty() || !std::filesystem::exists(std::filesystem::path(dir) / "config.json")) {
            if (task == tasks::Task::fact_memorization) std::printf("\n(no trained RMT checkpoint at \"%s\": --rmt-model DIR)\n", dir.c_str());
            continue;
          }
          const json::Value cfg = read_json_file(std::filesystem::path(dir) / "config.json");
          const auto run = [&](const auto& model) {
            std::printf("\ntrained %s, %s: reads documents of %td tokens, then answers by greedy generation:\n", model.describe().c_str(),
                        std::string(tasks::name(task)).c_str(), length);
            trained_rmt_answers(model, task, length, long_run ? 3 : 5);
          };
          if (cfg.find("armt")) run(rmt::load_armt<float>(dir));
          else run(rmt::load<float>(dir));
        }
        return 0;
      });
}
