// Background text for the memory tasks: a corpus of English passages read from Debian's fortunes
// files (strfile format: entries separated by lines holding a single '%') or from any text file,
// and a seeded stream of its bytes of any length.
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "engram/tasks/rng.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tasks {

/// Passages of English text, whitespace-normalised (runs of blanks and newlines are one space).
class Corpus {
 public:
  /// Where Debian's fortunes-min installs its files (cmake/bootstrap.sh installs the package).
  static constexpr std::string_view kFortunesDir = "/usr/share/games/fortunes";

  /// Passages of a text: strfile entries when some line is a lone '%', else blank-line-separated
  /// paragraphs. Throws Error when it holds no text.
  static Corpus from_text(std::string_view text, std::string source = "text") {
    Corpus c;
    c.source_ = std::move(source);
    c.add_text(text);
    c.require_text();
    return c;
  }

  /// A text file, or every file of a directory (sorted by name; strfile indexes "*.dat" and
  /// symbolic links such as fortunes' "*.u8" aliases are skipped). Throws Error naming the path
  /// when it is missing or holds no text.
  static Corpus from_path(const std::filesystem::path& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    check(fs::exists(path, ec), path.string(), "no such file or directory (for the default corpus install Debian's fortunes-min, ",
          "or give a text file)");
    Corpus c;
    c.source_ = path.string();
    std::vector<fs::path> files;
    if (fs::is_directory(path, ec)) {
      for (const auto& e : fs::directory_iterator(path, ec))
        if (!e.is_symlink() && e.is_regular_file() && e.path().extension() != ".dat") files.push_back(e.path());
      std::sort(files.begin(), files.end());
    } else {
      files.push_back(path);
    }
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      check(bool(in), f.string(), "cannot open file");
      std::ostringstream s;
      s << in.rdbuf();
      c.add_text(s.str());
    }
    c.require_text();
    return c;
  }

  /// The fortunes of Debian's fortunes-min package.
  static Corpus fortunes() { return from_path(std::filesystem::path(kFortunesDir)); }

  const std::vector<std::string>& passages() const { return passages_; }
  const std::string& source() const { return source_; }
  /// Bytes of text over all passages.
  std::size_t bytes() const {
    std::size_t n = 0;
    for (const auto& p : passages_) n += p.size();
    return n;
  }

 private:
  static bool blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

  void add_text(std::string_view text) {
    // strfile separators are lines holding only '%'; without any, paragraphs are the passages.
    bool strfile = false;
    std::vector<std::string_view> lines;
    for (std::size_t start = 0; start <= text.size();) {
      std::size_t end = text.find('\n', start);
      if (end == std::string_view::npos) end = text.size();
      std::string_view line = text.substr(start, end - start);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      strfile = strfile || line == "%";
      lines.push_back(line);
      start = end + 1;
    }
    std::string passage;
    for (std::string_view line : lines) {
      const bool separator = strfile ? line == "%" : std::all_of(line.begin(), line.end(), blank);
      if (separator) {
        flush(passage);
        continue;
      }
      passage += line;
      passage += ' ';
    }
    flush(passage);
  }
  void flush(std::string& raw) {
    std::string p;
    for (char c : raw) {
      if (blank(c)) {
        if (!p.empty() && p.back() != ' ') p.push_back(' ');
      } else {
        p.push_back(c);
      }
    }
    while (!p.empty() && p.back() == ' ') p.pop_back();
    if (!p.empty()) passages_.push_back(std::move(p));
    raw.clear();
  }
  void require_text() const { check(!passages_.empty(), source_, "the corpus holds no text"); }

  std::string source_;
  std::vector<std::string> passages_;
};

/// An endless seeded stream of corpus bytes: uniformly drawn passages, each followed by a space.
class BackgroundStream {
 public:
  /// `corpus` must outlive the stream.
  BackgroundStream(const Corpus& corpus, std::uint64_t seed) : corpus_(&corpus), rng_(seed) { pick(); }

  unsigned char next() {
    const std::string& p = corpus_->passages()[passage_];
    if (offset_ == p.size()) {  // the space between passages
      pick();
      return ' ';
    }
    return static_cast<unsigned char>(p[offset_++]);
  }

 private:
  void pick() {
    passage_ = std::size_t(rng_.index(Index(corpus_->passages().size())));
    offset_ = 0;
  }
  const Corpus* corpus_;
  Rng rng_;
  std::size_t passage_ = 0, offset_ = 0;
};

}  // namespace tasks
ENGRAM_NAMESPACE_END
