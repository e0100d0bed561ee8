// engram::Error and the checks that throw it: what went wrong, where, expected versus got.
#pragma once

#include <cassert>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "engram/core/config.hpp"

namespace engram {

/// The one exception type of the library. Its message names what was wrong, where (file, tensor,
/// layer, function) and what was expected. Kept outside the arch namespace so a catch works across
/// translation units built with different instruction sets.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}
}  // namespace detail

/// Throws Error("<where>: <parts...>").
template <class... Parts>
[[noreturn]] void fail(std::string_view where, const Parts&... parts) {
  throw Error(detail::concat(where, ": ", parts...));
}

/// Throws Error when `condition` is false; the message is only formatted on failure.
template <class... Parts>
void check(bool condition, std::string_view where, const Parts&... parts) {
  if (!condition) fail(where, parts...);
}

/// Checks `got == expected` for a named quantity: "where: <what> expected <e>, got <g>".
template <class A, class B>
void check_equal(const A& got, const B& expected, std::string_view where, std::string_view what) {
  if (!(got == expected)) fail(where, what, " expected ", expected, ", got ", got);
}

}  // namespace engram

// Internal invariants: active in debug and sanitizer builds, free in release builds.
#define ENGRAM_ASSERT(cond) assert(cond)
