// bAbI-style facts and questions: qa1 single supporting fact ("Mary went to the kitchen." /
// "Where is Mary?") and qa4 two-argument relations ("The hallway is east of the bathroom." /
// "What is the bathroom east of?"); every answer is one of 6 places (rmt.md 4.1).
#pragma once

#include <array>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "engram/tasks/rng.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace tasks {

/// The vocabulary of the scaling report's generated qa1 facts.
inline constexpr std::array<std::string_view, 4> kNames = {"Mary", "John", "Daniel", "Sandra"};
inline constexpr std::array<std::string_view, 5> kVerbs = {"moved", "went", "went back", "journeyed", "travelled"};
/// The answer classes of all three tasks, in class-id order.
inline constexpr std::array<std::string_view, 6> kPlaces = {"bathroom", "hallway", "garden", "office", "bedroom", "kitchen"};
/// qa4 relations; kDirections[i ^ 1] is the opposite of kDirections[i].
inline constexpr std::array<std::string_view, 4> kDirections = {"north", "south", "east", "west"};
inline constexpr Index kAnswerClasses = Index(kPlaces.size());

/// The qa4 question forms a reasoning sample may ask: both (bAbI's mix, 50/50), only the direct
/// form, or only the inverse one (which needs the relation reversed).
enum class Questions { both, direct, inverse };

inline std::string_view name(Questions q) {
  switch (q) {
    case Questions::both: return "both";
    case Questions::direct: return "direct";
    case Questions::inverse: return "inverse";
  }
  return "?";
}

/// Facts (in text order), the question, and the answer as a class id into kPlaces.
struct QA {
  std::vector<std::string> facts;
  std::string question;
  int answer = 0;
  std::string_view answer_text() const { return kPlaces[std::size_t(answer)]; }
};

namespace detail {
inline std::string concat_text(std::initializer_list<std::string_view> parts) {
  std::string s;
  for (std::string_view p : parts) s += p;
  return s;
}
}  // namespace detail

/// qa1: "{name} {verb} to the {place}." / "Where is {name}?" -> place.
inline QA qa1_fact(Rng& rng) {
  const std::string_view who = kNames[std::size_t(rng.index(Index(kNames.size())))];
  const std::string_view verb = kVerbs[std::size_t(rng.index(Index(kVerbs.size())))];
  const Index place = rng.index(kAnswerClasses);
  return {{detail::concat_text({who, " ", verb, " to the ", kPlaces[std::size_t(place)], "."})},
          detail::concat_text({"Where is ", who, "?"}), int(place)};
}

/// qa4: two facts "The {P_i} is {R_i} of the {C}." (three distinct places, R_1 != R_2) in random
/// order, and a question about one of them, either direct ("What is {R_i} of the {C}?") or inverse
/// ("What is the {C} {opposite R_i} of?", which needs the relation reversed); the answer is P_i.
/// `forms` restricts the question to one form; the draws are the same for every `forms`, so a
/// seed gives the same facts and answer whichever form is asked.
inline QA qa4_facts(Rng& rng, Questions forms = Questions::both) {
  Index place[3];
  place[0] = rng.index(kAnswerClasses);  // the centre C
  do place[1] = rng.index(kAnswerClasses);
  while (place[1] == place[0]);
  do place[2] = rng.index(kAnswerClasses);
  while (place[2] == place[0] || place[2] == place[1]);
  Index dir[2];
  dir[0] = rng.index(Index(kDirections.size()));
  do dir[1] = rng.index(Index(kDirections.size()));
  while (dir[1] == dir[0]);
  const std::string_view centre = kPlaces[std::size_t(place[0])];
  QA qa;
  for (int i = 0; i < 2; ++i)
    qa.facts.push_back(
        detail::concat_text({"The ", kPlaces[std::size_t(place[1 + i])], " is ", kDirections[std::size_t(dir[i])], " of the ", centre, "."}));
  if (rng.coin()) std::swap(qa.facts[0], qa.facts[1]);
  const int asked = rng.coin() ? 1 : 0;  // which relation (in drawing order) the question is about
  const bool direct = rng.coin();
  if (forms == Questions::direct || (forms == Questions::both && direct))
    qa.question = detail::concat_text({"What is ", kDirections[std::size_t(dir[asked])], " of the ", centre, "?"});
  else
    qa.question = detail::concat_text({"What is the ", centre, " ", kDirections[std::size_t(dir[asked] ^ 1)], " of?"});
  qa.answer = int(place[1 + asked]);
  return qa;
}

}  // namespace tasks
ENGRAM_NAMESPACE_END
