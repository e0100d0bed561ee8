// libFuzzer target: any bytes given to the safetensors reader either parse (and every readable
// tensor converts) or raise engram::Error; nothing else (no crash, no out-of-bounds read under ASan).
// Build with clang: cmake -DENGRAM_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ ..., then run
// ./tests/fuzz/fuzz_safetensors -max_total_time=60 tests/fuzz/corpus
#include <cstddef>
#include <cstdint>

#include "engram/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace engram;
  try {
    const auto file = safetensors::File::from_bytes(std::span<const unsigned char>(data, size));
    for (const auto& t : file.tensors()) {
      if (t.shape.size() > 4) continue;
      try {
        (void)file.read<float>(t.name);
      } catch (const Error&) {  // integer dtypes are not floats: an Error, as documented
      }
    }
  } catch (const Error&) {
  }
  return 0;
}
