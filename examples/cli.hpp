// The one command-line layer of every engram program: CLI11 parsing with the common options, and a
// main wrapper that turns every failure into a message and an exit status, never a signal.
#pragma once

/// @file
/// Every program under examples/ is written as
///
/// @code
/// #include "cli.hpp"
/// int main(int argc, char** argv) {
///   std::string model;
///   engram::Index n = 16;
///   return engram::cli::run(argc, argv, "engram-foo: what the program does, in one sentence.",
///       [&](CLI::App& app) {                       // declare options (CLI11)
///         app.add_option("--model", model, "Hugging Face model directory")->check(CLI::ExistingDirectory);
///         app.add_option("-n", n, "tokens to generate")->check(CLI::Range(engram::Index(1), engram::Index(1) << 20));
///       },
///       [&] {                                      // the program, run after a successful parse
///         engram::Sampler s({.seed = engram::cli::seed()});
///         ...
///         return 0;
///       });
/// }
/// @endcode
///
/// What `run` guarantees, so every program behaves the same:
/// - Common options, defined before `define` runs: `-t,--threads N` (1..4096; default: all cores, i.e.
///   what OpenMP would use; applied with engram::set_num_threads before `body`) and `--seed S`
///   (unsigned 64-bit, default 1). Read them in `body` with threads() and seed().
/// - `-h,--help` prints every option with its meaning and its default (every option captures its
///   default: do not call capture_default_str yourself), then exits 0.
/// - Misuse exits with status 2 and one line `<program>: error: <message>` on stderr, then a hint to
///   run --help: an unknown flag (named), a missing value, a non-numeric or out-of-range value (CLI11's
///   message names the option), a failed validator, a missing required option, or a UsageError thrown
///   by `body` (see usage_error(), for combinations the parser cannot check, e.g. a token id above the
///   model's vocabulary).
/// - Failure exits with status 1 and `<program>: error: <message>`: engram::Error, std::bad_alloc
///   (reported as out of memory), any other std::exception, or anything else thrown.
///
/// Validators: use CLI11's for integers and names (CLI::Range, CLI::PositiveNumber, CLI::IsMember,
/// CLI::ExistingDirectory) and the four here: range (floating point in [lo, hi], NaN refused, which
/// CLI::Range lets through), regular_file (an existing regular file, or directory when allowed;
/// never a FIFO or a device that would block the program), output_file (absent or a regular file)
/// and checked_by (any function that throws engram::Error on a bad value, e.g. parse_budget).
///
/// The API (run, threads, seed, usage_error, UsageError, range, regular_file, output_file, checked_by,
/// exit statuses) is
/// stable: programs are written against it in parallel.

#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>

#include <CLI/CLI.hpp>

#include <engram/core/error.hpp>
#include <engram/core/parallel.hpp>

namespace engram::cli {

/// Exit statuses of every program.
inline constexpr int kExitOk = 0;       ///< success (and --help)
inline constexpr int kExitFailure = 1;  ///< the program ran and failed (bad file, bad model, out of memory, ...)
inline constexpr int kExitUsage = 2;    ///< misuse of the command line

/// Misuse the parser cannot see; thrown by `body` through usage_error(), exits with status 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Throws UsageError("<option>: <message>"), e.g. usage_error("--tokens", "token id 70000 is outside the vocabulary [0, 32000)").
[[noreturn]] inline void usage_error(const std::string& option, const std::string& message) {
  throw UsageError(option + ": " + message);
}

/// A duration for progress lines: "42s", "3m07s", "2h05m" ("?" when unknown).
inline std::string duration(double s) {
  char b[32];
  if (!(s >= 0) || s > 1e12) return "?";
  if (s < 60) std::snprintf(b, sizeof b, "%.0fs", s);
  else if (s < 3600) std::snprintf(b, sizeof b, "%dm%02ds", int(s) / 60, int(s) % 60);
  else std::snprintf(b, sizeof b, "%dh%02dm", int(s) / 3600, int(s) % 3600 / 60);
  return b;
}

namespace detail {
struct Common {
  int threads = 1;
  std::uint64_t seed = 1;
};
inline Common& common() {
  static Common c;
  return c;
}
}  // namespace detail

/// --threads as given (or its default, all cores); valid inside `body`.
inline int threads() { return detail::common().threads; }
/// --seed as given (default 1); valid inside `body`.
inline std::uint64_t seed() { return detail::common().seed; }

/// Validator: the path names an existing regular file (after following symlinks), or with
/// `allow_directory` a directory. A FIFO, a socket or a device is refused, so a program never
/// blocks opening it.
inline CLI::Validator regular_file(bool allow_directory = false) {
  return CLI::Validator(
      [allow_directory](std::string& path) -> std::string {
        std::error_code ec;
        const auto st = std::filesystem::status(path, ec);
        if (ec) return "cannot use " + path + ": " + ec.message();
        if (std::filesystem::is_regular_file(st) || (allow_directory && std::filesystem::is_directory(st))) return {};
        return path + (allow_directory ? " is not a regular file or a directory" : " is not a regular file");
      },
      allow_directory ? "PATH" : "FILE");
}

/// Validator of a file the program writes: absent (its directory must exist) or a regular file.
/// A FIFO or a device is refused, since opening one for writing can block.
inline CLI::Validator output_file() {
  return CLI::Validator(
      [](std::string& path) -> std::string {
        std::error_code ec;
        const auto st = std::filesystem::status(path, ec);
        if (st.type() == std::filesystem::file_type::not_found) {
          const auto dir = std::filesystem::path(path).parent_path();
          if (!dir.empty() && !std::filesystem::is_directory(dir, ec)) return "directory " + dir.string() + " does not exist";
          return {};
        }
        if (ec) return "cannot use " + path + ": " + ec.message();
        if (!std::filesystem::is_regular_file(st)) return path + " exists and is not a regular file";
        return {};
      },
      "FILE");
}

/// Validator: a number in [lo, hi] and not NaN (CLI::Range lets NaN through, since every comparison
/// with NaN is false). Use it for floating-point options; CLI::Range is fine for integers.
inline CLI::Validator range(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(text, v)) return "value " + text + " is not a number";
        if (!(v >= lo && v <= hi)) return "value " + text + " not in range [" + CLI::detail::to_string(lo) + " - " + CLI::detail::to_string(hi) + "]";
        return {};
      },
      "FLOAT in [" + CLI::detail::to_string(lo) + " - " + CLI::detail::to_string(hi) + "]");
}

/// Validator from a function that throws engram::Error (or any std::exception) when the text is unacceptable (its message
/// becomes the validation message); `name` is the value's description in --help (e.g. "BUDGET").
inline CLI::Validator checked_by(std::string name, std::function<void(const std::string&)> f) {
  return CLI::Validator(
      [f = std::move(f)](std::string& text) -> std::string {
        try {
          f(text);
        } catch (const std::exception& e) {
          return e.what();
        }
        return {};
      },
      std::move(name));
}

/// Parses the command line (common options, then `define`'s), runs `body` and returns the exit
/// status to return from main. Catches every exception: see the file comment for the statuses.
inline int run(int argc, char** argv, std::string description, const std::function<void(CLI::App&)>& define,
               const std::function<int()>& body) {
  const std::string program = argc > 0 && argv[0] ? std::filesystem::path(argv[0]).filename().string() : "engram";
  auto report = [&](const char* what, const std::string& message, int status) {
    std::fprintf(stderr, "%s: %s: %s\n", program.c_str(), what, message.c_str());
    if (status == kExitUsage) std::fprintf(stderr, "Run with --help for every option.\n");
    return status;
  };
  try {
    CLI::App app(std::move(description), program);
    app.option_defaults()->always_capture_default();
    detail::Common& c = detail::common();
    c = detail::Common{};
    c.threads = num_threads();
    app.add_option("-t,--threads", c.threads, "threads (default: all cores)")->check(CLI::Range(1, 4096));
    app.add_option("--seed", c.seed, "seed of everything random in the program")->check(CLI::NonNegativeNumber);
    if (define) define(app);
    try {
      app.parse(argc, argv);
    } catch (const CLI::Success& e) {  // --help
      return app.exit(e);
    } catch (const CLI::ParseError& e) {
      return report("error", e.what(), kExitUsage);
    }
    set_num_threads(c.threads);
    return body ? body() : kExitOk;
  } catch (const UsageError& e) {
    return report("error", e.what(), kExitUsage);
  } catch (const CLI::Error& e) {  // a mistake in `define` (duplicate option name, ...) or a parse error raised by body
    return report("error", e.what(), e.get_exit_code() == int(CLI::ExitCodes::Success) ? kExitOk : kExitUsage);
  } catch (const Error& e) {
    return report("error", e.what(), kExitFailure);
  } catch (const std::bad_alloc&) {
    return report("error", "out of memory", kExitFailure);
  } catch (const std::exception& e) {
    return report("error", e.what(), kExitFailure);
  } catch (...) {
    return report("error", "unknown exception", kExitFailure);
  }
}

}  // namespace engram::cli
