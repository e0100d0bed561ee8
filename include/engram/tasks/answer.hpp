// How a model states a task's answer: the bytes that follow the question (" kitchen\n"), shared
// by training (loss on these bytes) and evaluation (likelihood of each candidate).
#pragma once

#include <string>

#include "engram/tasks/babi.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tasks {

/// The answer of class `cls` as the bytes after the question: a space, the place, a newline.
inline std::string answer_bytes(int cls) {
  check(cls >= 0 && cls < int(kAnswerClasses), "tasks::answer_bytes", "answer class ", cls, " outside [0, ", kAnswerClasses, ")");
  // Appended in place: GCC 12's -Wrestrict misreads `" " + std::string(...)` once inlined.
  std::string s = " ";
  s += kPlaces[std::size_t(cls)];
  s += '\n';
  return s;
}

/// Length of the longest answer_bytes (every answer fits in this many tokens).
inline Index max_answer_bytes() {
  Index n = 0;
  for (int c = 0; c < int(kAnswerClasses); ++c) n = std::max<Index>(n, Index(answer_bytes(c).size()));
  return n;
}

}  // namespace tasks
ENGRAM_NAMESPACE_END
