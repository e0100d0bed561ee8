// Helper of the RMT converter's test (tests/rmt/test_convert_rmt.py): loads a checkpoint directory
// with rmt::load, runs it on the token ids given and prints, as one JSON object, what the test
// compares with its PyTorch reference: the configuration, the shape of every parameter, the
// initial memory, the outputs (decoder: content logits [N, V]; encoder: class logits [1, labels])
// and the final memory. A load or run Error goes to stderr with exit status 1.
//   rmt_probe DIR [token ids...]
#include <cstdio>
#include <string>
#include <vector>

#include "engram/rmt/loader.hpp"

namespace {
using namespace engram;

void print_values(ConstView<float> x) {
  std::printf("[");
  for (Index r = 0; r < x.rows(); ++r) {
    std::printf("%s[", r ? "," : "");
    for (Index c = 0; c < x.cols(); ++c) std::printf("%s%.9g", c ? "," : "", double(x(r, c)));
    std::printf("]");
  }
  std::printf("]");
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: rmt_probe DIR [token ids...]\n");
    return 2;
  }
  try {
    auto model = rmt::load<float>(std::string(argv[1]));
    std::vector<std::int32_t> tokens;
    for (int i = 2; i < argc; ++i) tokens.push_back(std::int32_t(std::stol(argv[i])));
    const rmt::Config& c = model.cell().config();
    std::printf("{\"layout\":\"%s\",\"num_mem_tokens\":%td,\"segment_size\":%td,\"vocab_size\":%td,\"d_model\":%td,\"n_layers\":%td,",
                std::string(rmt::name(c.layout)).c_str(), c.memory_tokens, c.segment_size, model.cell().backbone().config.vocab_size,
                model.cell().backbone().config.d_model, model.cell().backbone().config.n_layers);
    std::printf("\"parameters\":{");
    bool first = true;
    model.visit_parameters([&](const std::string& name, Tensor<float>& t) {
      std::printf("%s\"%s\":[", first ? "" : ",", name.c_str());
      for (Index d = 0; d < t.rank(); ++d) std::printf("%s%td", d ? "," : "", t.shape()[std::size_t(d)]);
      std::printf("]");
      first = false;
    });
    std::printf("},\"initial_memory\":");
    print_values(model.cell().initial_memory().view());
    if (!tokens.empty()) {
      const auto r = model.run(tokens, {.all_logits = true});
      std::printf(",\"outputs\":");
      print_values(c.layout == rmt::Layout::decoder ? r.logits.view() : r.readout.view());
      std::printf(",\"final_memory\":");
      print_values(r.final_memory.view());
    }
    std::printf("}\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rmt_probe: %s\n", e.what());
    return 1;
  }
}
