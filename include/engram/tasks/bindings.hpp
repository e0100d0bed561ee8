// Binding labels of a reasoning sample: intermediate supervision that names, at each qa4 fact's
// direction, the place the fact binds to it, and at the question's direction the answer.
//
// Why: a reasoning answer is the place of the fact whose direction matches the question's, so no
// single token (nor any pair) predicts which of the two places it is; the answer depends on three
// tokens at once and an answer-only loss gives gradient descent nothing to start from. Every
// model we trained that way, engram's and an independent PyTorch one, byte- or word-level, stalled
// at 0.5 ("one of the two places"; bench/results/rmt_reasoning/). These labels make the two steps
// separately learnable: "a direction names its fact's place" (one token back to another), then
// "the question's direction names the place of the matching direction" (one attention match).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "engram/tasks/memory_tasks.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tasks {

/// One extra label: the output at token `position` should predict `token`.
struct BindingLabel {
  Index position = 0;
  std::int32_t token = 0;
  bool operator==(const BindingLabel&) const = default;
};

namespace detail {
// Offset of the first direction word in `text` at or after `from`; Error if there is none.
inline Index direction_offset(std::string_view text, Index from) {
  std::size_t best = std::string_view::npos;
  for (std::string_view d : kDirections) best = std::min(best, text.find(d, std::size_t(from)));
  check(best != std::string_view::npos, "tasks::binding_labels", "no direction in \"", text, "\"");
  return Index(best);
}
// The first two bytes of `place` as labels at `position` and `position + 1` (two bytes tell the six
// places apart: bathroom and bedroom differ in the second).
inline void label_place(std::vector<BindingLabel>& out, Index position, std::string_view place) {
  for (Index i = 0; i < 2; ++i) out.push_back({position + i, static_cast<unsigned char>(place[std::size_t(i)])});
}
}  // namespace detail

/// The binding labels of a reasoning sample, in position order of the facts then the question: at
/// the first two bytes of each fact's direction ("The P is R of the C."), the first two bytes of P;
/// at the first two bytes of the question's direction (either form), the first two bytes of the
/// answer. Error for other tasks.
inline std::vector<BindingLabel> binding_labels(const SampleInfo& info) {
  check(info.options.task == Task::reasoning, "tasks::binding_labels", "binding labels exist for the reasoning task only, got ",
        name(info.options.task));
  std::vector<BindingLabel> out;
  constexpr std::string_view kThe = "The ", kIs = " is ";
  for (std::size_t f = 0; f < info.facts.size(); ++f) {
    const std::string_view fact = info.facts[f];
    const std::size_t is = fact.find(kIs);
    check(fact.starts_with(kThe) && is != std::string_view::npos, "tasks::binding_labels", "fact \"", fact,
          "\" is not of the form \"The P is R of the C.\"");
    const Index at = detail::direction_offset(fact, Index(is + kIs.size()));
    detail::label_place(out, info.fact_spans[f].begin + at, fact.substr(kThe.size(), is - kThe.size()));
  }
  const Index q = detail::direction_offset(info.question, Index(std::string_view("What is ").size()));
  detail::label_place(out, info.question_span.begin + q, info.answer_text());
  return out;
}

}  // namespace tasks
ENGRAM_NAMESPACE_END
