// Cache policies by name, NAMM included, for command lines and evaluation harnesses: this floor is
// the first that sees both namm/ and policies/ (which never include each other).
#pragma once

#include <memory>
#include <string_view>

#include "engram/namm/checkpoint.hpp"
#include "engram/policies/factory.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace eval {

/// Names make_policy() accepts: the baselines of policies/ and "namm".
inline constexpr std::string_view kPolicyNames[] = {"none", "namm", "h2o", "knorm", "streaming", "snapkv",
                                                     "tova", "recency", "expected_attention", "keydiff"};

/// The policy called `name` with `budget` (required by the baselines; for NAMM an optional hard
/// cap). NAMM needs its weights. Returns null for "none" (full cache). Throws Error for an unknown
/// name, a baseline without a budget, or NAMM without weights.
template <class T>
std::unique_ptr<CachePolicy<T>> make_policy(std::string_view name, Budget budget, const namm::NammWeights<T>* weights = nullptr) {
  const std::vector<policies::NamedPolicy<T>> namm = {{"namm", [weights](Budget cap) {
                                                         check(weights != nullptr, "make_policy",
                                                               "the NAMM policy needs weights (a file written by convert_namm_checkpoint.py or "
                                                               "engram-namm-evolve)");
                                                         return weights->make_policy(cap);
                                                       }}};
  return policies::make_policy<T>(name, budget, namm);
}

}  // namespace eval
ENGRAM_NAMESPACE_END
