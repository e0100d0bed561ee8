// Umbrella of the optional tokenizers component (links PCRE2, ICU and SentencePiece):
// find_package(engram COMPONENTS tokenizers), target engram::tokenizers.
#pragma once

#include "engram/tokenizers/load.hpp"
#include "engram/tokenizers/tokenizer.hpp"
