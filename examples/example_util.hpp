// Shared by the example programs: argument parsing, the default byte-level model, input documents.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <engram/engram.hpp>

namespace examples {

using namespace engram;

/// "--name value" and "--flag" arguments; unknown names are errors.
class Args {
 public:
  Args(int argc, char** argv, std::map<std::string, std::string> defaults, std::string usage)
      : values_(std::move(defaults)), usage_(std::move(usage)) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        std::printf("%s", usage_.c_str());
        std::exit(0);
      }
      if (a.rfind("--", 0) != 0 || !values_.count(a.substr(2))) die("unknown argument " + a);
      const std::string key = a.substr(2);
      if (values_[key] == "off" || values_[key] == "on") values_[key] = "on";  // a flag
      else if (i + 1 < argc) values_[key] = argv[++i];
      else die("missing value after " + a);
    }
  }
  const std::string& str(const std::string& k) const { return values_.at(k); }
  long integer(const std::string& k) const { return parse<long>(k, [](const std::string& s, std::size_t* n) { return std::stol(s, n); }); }
  double number(const std::string& k) const { return parse<double>(k, [](const std::string& s, std::size_t* n) { return std::stod(s, n); }); }
  bool flag(const std::string& k) const { return values_.at(k) == "on"; }
  [[noreturn]] void die(const std::string& msg) const {
    std::fprintf(stderr, "error: %s\n\n%s", msg.c_str(), usage_.c_str());
    std::exit(2);
  }

 private:
  template <class V, class F>
  V parse(const std::string& k, F f) const {
    const std::string& s = values_.at(k);
    try {
      std::size_t used = 0;
      const V v = f(s, &used);
      if (used == s.size()) return v;
    } catch (...) {
    }
    die("--" + k + " expects a number, got \"" + s + "\"");
  }
  std::map<std::string, std::string> values_;
  std::string usage_;
};

/// A byte-level Llama-style model with random weights (d 256, 4 layers, 8 heads over 2 KV heads):
/// what the examples run when no --model is given. Its vocabulary covers the tasks' byte tokenizer.
inline Decoder<float> default_model(std::uint64_t seed = 1) {
  auto c = ModelConfig::llama(tasks::ByteTokenizer::vocab_size, 256, 4, 8, 2, 768);
  c.tie_embeddings = true;
  c.max_positions = 1 << 22;
  auto m = Decoder<float>::create(c);
  init_random(m, seed);
  return m;
}

/// The model of --model DIR, or the default one.
inline Decoder<float> load_or_default(const std::string& dir) { return dir.empty() ? default_model() : hf::load_decoder<float>(dir); }

/// A bAbI-style long document (a qa1 fact hidden in background text, the question at the end) of
/// `length` byte tokens; background from `corpus_path` or Debian's fortunes.
inline tasks::Sample babi_document(Index length, std::uint64_t seed, const std::string& corpus_path = "") {
  const auto corpus = tasks::Corpus::from_path(corpus_path.empty() ? std::string(tasks::Corpus::kFortunesDir) : corpus_path);
  tasks::TaskOptions o;
  o.task = tasks::Task::fact_detection;
  o.length = length;
  return tasks::make_sample(corpus, o, seed);
}

/// Bytes of a text file as tokens.
inline std::vector<std::int32_t> file_tokens(const std::string& path) { return tasks::ByteTokenizer::encode(read_text_file(path)); }

}  // namespace examples
