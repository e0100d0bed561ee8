// Cache policies by name for command lines and configuration files: the baselines of this floor,
// plus any policy the caller injects (NAMM lives in namm/, which this floor does not include).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engram/policies/expected_attention.hpp"
#include "engram/policies/h2o.hpp"
#include "engram/policies/keydiff.hpp"
#include "engram/policies/knorm.hpp"
#include "engram/policies/snapkv.hpp"
#include "engram/policies/tova.hpp"
#include "engram/policies/window.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace policies {

/// Names make_policy() knows by itself ("none" is the full cache).
inline constexpr std::string_view kPolicyNames[] = {"none", "h2o", "knorm", "streaming", "snapkv",
                                                     "tova", "recency", "expected_attention", "keydiff"};

/// A policy the factory does not know by itself, e.g. NAMM:
/// `{"namm", [&](Budget cap) { return weights.make_policy(cap); }}`.
template <class T>
struct NamedPolicy {
  std::string name;
  std::function<std::unique_ptr<CachePolicy<T>>(Budget)> make;  ///< receives the budget as given (maybe none)
};

/// The policy called `name` with `budget` (required by every baseline; `extra` policies decide for
/// themselves). Returns null for "none" (full cache). Throws Error for an unknown name or a
/// baseline without a budget.
template <class T>
std::unique_ptr<CachePolicy<T>> make_policy(std::string_view name, Budget budget, const std::vector<NamedPolicy<T>>& extra = {}) {
  if (name == "none") return nullptr;
  for (const NamedPolicy<T>& p : extra)
    if (p.name == name) return p.make(budget);
  std::string known;
  for (std::string_view n : kPolicyNames) known += (known.empty() ? "" : ", ") + std::string(n);
  for (const NamedPolicy<T>& p : extra) known += ", " + p.name;
  bool listed = false;
  for (std::string_view n : kPolicyNames) listed = listed || n == name;
  check(listed, "make_policy", "unknown policy \"", name, "\" (expected one of ", known, ")");
  check(budget.limited(), "make_policy", "policy \"", name, "\" needs a budget (tokens, e.g. 2048, or a ratio, e.g. 0.25)");
  if (name == "h2o") return std::make_unique<H2OPolicy<T>>(budget);
  if (name == "knorm") return std::make_unique<KNormPolicy<T>>(budget);
  if (name == "streaming") return std::make_unique<StreamingPolicy<T>>(budget);
  if (name == "snapkv") return std::make_unique<SnapKVPolicy<T>>(budget);
  if (name == "tova") return std::make_unique<TovaPolicy<T>>(budget);
  if (name == "recency") return std::make_unique<RecencyPolicy<T>>(budget);
  if (name == "expected_attention") return std::make_unique<ExpectedAttentionPolicy<T>>(budget);
  return std::make_unique<KeyDiffPolicy<T>>(budget);  // "keydiff", the last listed name
}

}  // namespace policies
ENGRAM_NAMESPACE_END
