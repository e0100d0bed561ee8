// Cache policies by name (none, namm, h2o, knorm, streaming, snapkv, tova, recency) for command
// lines and configuration files.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "engram/namm/baselines.hpp"
#include "engram/namm/checkpoint.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace namm {

/// Names make_policy() accepts.
inline constexpr std::string_view kPolicyNames[] = {"none", "namm", "h2o", "knorm", "streaming", "snapkv", "tova", "recency"};

/// Parses a budget: an integer is a token count ("2048"), a number in (0, 1] a ratio ("0.25"),
/// empty or "none" no budget.
inline Budget parse_budget(std::string_view text) {
  if (text.empty() || text == "none") return Budget::none();
  const std::string s(text);
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(s, &used);
  } catch (...) {
    fail("budget", "expected a token count or a ratio in (0, 1], got \"", text, "\"");
  }
  check(used == s.size(), "budget", "expected a token count or a ratio in (0, 1], got \"", text, "\"");
  if (s.find('.') == std::string::npos && s.find('e') == std::string::npos) return Budget::of_tokens(Index(value));
  return Budget::of_ratio(value);
}

/// The policy called `name` with `budget` (required by the baselines; for NAMM an optional hard
/// cap). NAMM needs its weights. Returns null for "none" (full cache).
template <class T>
std::unique_ptr<CachePolicy<T>> make_policy(std::string_view name, Budget budget, const NammWeights<T>* namm = nullptr) {
  if (name == "none") return nullptr;
  if (name == "namm") {
    check(namm != nullptr, "make_policy", "the NAMM policy needs weights (a file written by convert_namm_checkpoint.py or engram-namm-evolve)");
    NammWeights<T> w{namm->theta.copy(), namm->stats, namm->config};
    w.config.cap = budget;
    return std::make_unique<NammPolicy<T>>(w.policy());
  }
  check(budget.limited(), "make_policy", "policy \"", name, "\" needs a budget (tokens, e.g. 2048, or a ratio, e.g. 0.25)");
  if (name == "h2o") return std::make_unique<H2OPolicy<T>>(budget);
  if (name == "knorm") return std::make_unique<KNormPolicy<T>>(budget);
  if (name == "streaming") return std::make_unique<StreamingPolicy<T>>(budget);
  if (name == "snapkv") return std::make_unique<SnapKVPolicy<T>>(budget);
  if (name == "tova") return std::make_unique<TovaPolicy<T>>(budget);
  if (name == "recency") return std::make_unique<RecencyPolicy<T>>(budget);
  fail("make_policy", "unknown policy \"", name, "\" (expected none, namm, h2o, knorm, streaming, snapkv, tova or recency)");
}

}  // namespace namm
ENGRAM_NAMESPACE_END
