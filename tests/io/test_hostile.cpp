// Hostile inputs to the loaders: every config of tests/io/hostile/cases (make_hostile.py) meets the
// real fixture weights and must end in an engram::Error naming what is wrong; files that are not
// regular files (FIFO, device, directory, symlink loop) are Errors, never a hang; sizes that
// overflow or exceed the memory are Errors before anything is allocated.
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "engram/engram.hpp"
#include "engram/io/memory_budget.hpp"
#include "test_util.hpp"

using namespace engram;
namespace fs = std::filesystem;

namespace {

const fs::path kHostile = fs::path(ENGRAM_FIXTURES_DIR).parent_path() / "io" / "hostile";

struct Case {
  std::string family, file, expect;
};

std::vector<Case> read_cases() {
  std::ifstream in(kHostile / "cases.tsv");
  REQUIRE(in);
  std::vector<Case> cases;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream row(line);
    Case c;
    std::getline(row, c.family, '\t');
    std::getline(row, c.file, '\t');
    std::getline(row, c.expect);
    cases.push_back(c);
  }
  return cases;
}

// The fixture whose weights each family's hostile configs meet (as in make_hostile.py).
fs::path weights_of(const std::string& family) {
  if (family == "llama") return test::fixture("llama_tiny");
  if (family == "gpt2") return test::fixture("gpt2_tiny");
  if (family == "bert" || family == "rmt_encoder") return test::fixture("rmt/encoder");
  if (family == "ttt") return test::fixture("ttt/model_linear_T");
  if (family == "ttt_mlp") return test::fixture("ttt/model_mlp_M");
  if (family == "rmt_decoder") return test::fixture("rmt/decoder");
  FAIL("unknown family " << family);
  return {};
}

void load(const std::string& family, const fs::path& dir) {
  if (family == "llama" || family == "gpt2" || family == "bert") (void)hf::load_model<float>(dir);
  else if (family == "ttt" || family == "ttt_mlp") (void)ttt::load_decoder<float>(dir);
  else (void)rmt::load<float>(dir);
}

using test::error_of;  // the Error an input must raise (test_util.hpp)

void write_file(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
}

}  // namespace

TEST_CASE("every hostile config loads to an Error that names the problem", "[hostile]") {
  const auto cases = read_cases();
  CHECK(cases.size() > 500);
  for (const Case& c : cases) {
    INFO(c.file);
    test::TempDir dir;
    fs::copy_file(kHostile / "cases" / c.file, dir.path() / "config.json");
    fs::create_symlink(weights_of(c.family) / "model.safetensors", dir.path() / "model.safetensors");
    const std::string msg = error_of([&] { load(c.family, dir.path()); });
    INFO(msg);
    CHECK(msg.find(c.expect) != std::string::npos);
  }
}

TEST_CASE("the unmutated fixture configs load (the hostile cases fail for their mutation)", "[hostile]") {
  for (const char* family : {"llama", "gpt2", "bert", "ttt", "ttt_mlp", "rmt_decoder", "rmt_encoder"}) {
    INFO(family);
    test::TempDir dir;
    const fs::path src = weights_of(family);
    std::string cfg = read_text_file(src / "config.json");
    write_file(dir.path() / "config.json", cfg);
    fs::create_symlink(src / "model.safetensors", dir.path() / "model.safetensors");
    CHECK_NOTHROW(load(family, dir.path()));
  }
}

TEST_CASE("the model presets never divide by zero and report widths that do not divide", "[hostile][config]") {
  for (Index heads : {Index(0), Index(-1), Index(3)}) {
    INFO(heads);
    CHECK_THROWS_AS(ModelConfig::llama(32, 32, 1, heads, heads > 0 ? heads : 1, 64).validate(), Error);
    CHECK_THROWS_AS(ModelConfig::gpt2(32, 32, 1, heads, 64).validate(), Error);
    CHECK_THROWS_AS(ModelConfig::bert(32, 32, 1, heads, 64, 64).validate(), Error);
    CHECK_THROWS_AS(Decoder<float>::create(ModelConfig::gpt2(32, 32, 1, heads, 64)), Error);
  }
  auto c = ModelConfig::gpt2(32, 32, 1, 4, 64);
  c.head_dim = 4;  // 4 heads of 4 != 32: the fused GPT-2 projection would overrun
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("d_model = n_heads * head_dim"));
  auto l = ModelConfig::llama(32, 32, 1, 4, 2, 64);
  l.rope_scaling = {RopeScaling::Kind::ntk, 2.0, -1.0};  // alpha < 0: NaN frequencies before the fix
  CHECK_THROWS_WITH(l.validate(), Catch::Contains("alpha"));
  l.rope_scaling = {RopeScaling::Kind::ntk, 0.5, 3.0};  // alpha * factor - (alpha - 1) = -0.5
  CHECK_THROWS_AS(l.validate(), Error);
  l.rope_scaling = {RopeScaling::Kind::llama3, 8.0, 1.0, 4.0, 1.0, 8192.0};  // high < low
  CHECK_THROWS_WITH(l.validate(), Catch::Contains("high_freq_factor"));
  l.rope_scaling = {};
  l.rope_theta = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(l.validate(), Catch::Contains("rope_theta"));
  l.rope_theta = 10000;
  l.norm_eps = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(l.validate(), Catch::Contains("norm_eps"));
  l.norm_eps = 1e-5;
  l.vocab_size = Index(1) << 40;  // ids are int32
  CHECK_THROWS_WITH(l.validate(), Catch::Contains("vocab_size"));
  l.vocab_size = 32;
  CHECK_NOTHROW(l.validate());
}

TEST_CASE("ttt and rmt configs are bounded from the API too", "[hostile][config]") {
  auto t = ttt::Config::transformer(ttt::Kind::linear, 32, 4);
  t.inner_eps = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(t.validate(), Error);
  t.inner_eps = 1e-6;
  t.mini_batch = Index(1) << 40;
  CHECK_THROWS_WITH(t.validate(), Catch::Contains("mini_batch_size"));
  const auto backbone = ModelConfig::llama(32, 32, 1, 4, 2, 64);
  CHECK_THROWS_WITH(rmt::Config::decoder(Index(1) << 40, 16).validate(backbone), Catch::Contains("memory_tokens"));
  CHECK_THROWS_WITH(rmt::Config::decoder(4, Index(1) << 40).validate(backbone), Catch::Contains("segment_size"));
  CHECK_NOTHROW(rmt::Config::decoder(4, 16).validate(backbone));
}

TEST_CASE("tensor sizes that overflow are Errors, not tensors without storage", "[hostile][tensor]") {
  const Index big = std::numeric_limits<Index>::max();
  CHECK_THROWS_AS(Shape({Index(1) << 62, 4}), Error);          // the element count overflows
  CHECK_THROWS_AS(Shape({Index(1) << 32, Index(1) << 32}), Error);
  CHECK_THROWS_AS(Tensor<float>({Index(1) << 61, 1}), Error);  // rows * padded stride overflows
  CHECK_THROWS_AS(Tensor<float>({big}), Error);                // the padded row overflows
  CHECK_THROWS_AS(Tensor<double>({Index(1) << 58, 2}), Error); // bytes overflow
#if !defined(__SANITIZE_ADDRESS__)
  // 64 TiB: the allocator refuses, Tensor reports it. (AddressSanitizer aborts on such a request by
  // design, before operator new can throw, so this one check runs in the other suites.)
  const std::string oom = error_of([] { Tensor<float>({Index(1) << 40, 16}); });
  CHECK(oom.find("cannot allocate") != std::string::npos);
#endif
  Tensor<float> t({2, 3});
  CHECK_THROWS_AS(t.resize_rows(Index(1) << 60), Error);
  CHECK(t.rows() == 2);  // unchanged after the failed growth
  const std::int64_t dims[] = {std::int64_t(1) << 40, std::int64_t(1) << 40};
  CHECK_THROWS_AS(Shape::from_range(std::begin(dims), std::end(dims)), Error);
}

TEST_CASE("the size budget refuses a model larger than the memory before allocating it", "[hostile][budget]") {
  const Checkpoint ck = Checkpoint::open(test::fixture("llama_tiny"));
  const auto cfg = hf::config_from_json(read_json_file(test::fixture("llama_tiny/config.json")));
  const io::ModelSize size = hf::model_size<float>(cfg);
  CHECK(size.weight_elements > 0);
  CHECK(size.weight_elements <= ck.total_elements());
  CHECK_NOTHROW(io::check_model_size(size, &ck, "llama_tiny"));
  CHECK_THROWS_WITH(io::check_model_size(size, &ck, "llama_tiny", /*available=*/1024), Catch::Contains("memory is available"));
  io::ModelSize huge = size;
  huge.weight_elements = 2 * ck.total_elements() + io::kCheckpointSlack + 1;
  CHECK_THROWS_WITH(io::check_model_size(huge, &ck, "llama_tiny"), Catch::Contains("does not match the checkpoint"));
  CHECK(io::available_memory() > 0);  // Linux: /proc/meminfo
}

TEST_CASE("only regular files are opened: FIFOs, devices, directories and symlink loops are Errors", "[hostile][files]") {
  test::TempDir dir;
  const fs::path fifo = dir.path() / "fifo.safetensors";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const fs::path loop_a = dir.path() / "loop_a", loop_b = dir.path() / "loop_b";
  fs::create_symlink(loop_b, loop_a);
  fs::create_symlink(loop_a, loop_b);
  const fs::path subdir = dir.path() / "subdir.safetensors";
  fs::create_directory(subdir);

  // Direct reads: each would block (FIFO), read forever (/dev/zero) or throw filesystem_error.
  for (const fs::path& p : {fifo, fs::path("/dev/zero"), fs::path("/dev/null"), subdir, loop_a, dir.path() / "missing"}) {
    INFO(p);
    CHECK(error_of([&] { (void)safetensors::File::open(p.string()); }).find(p.string()) != std::string::npos);
    CHECK(error_of([&] { (void)read_text_file(p); }).find(p.string()) != std::string::npos);
    CHECK(error_of([&] { (void)Checkpoint::open(p); }).find(p.string()) != std::string::npos);
    CHECK(error_of([&] { (void)namm::load_namm<float>(p.string()); }).find(p.string()) != std::string::npos);
  }
  CHECK(error_of([&] { (void)read_text_file(loop_a); }).find("symbolic links") != std::string::npos);

  // Inside a model directory: model.safetensors, a shard, or config.json that is not a regular file.
  const fs::path llama = test::fixture("llama_tiny");
  auto model_dir = [&](const std::string& name, const std::function<void(const fs::path&)>& setup) {
    const fs::path d = dir.path() / name;
    fs::create_directory(d);
    setup(d);
    return d;
  };
  const std::vector<std::pair<std::string, fs::path>> dirs = {
      {"weights FIFO", model_dir("w_fifo", [&](const fs::path& d) {
         fs::copy_file(llama / "config.json", d / "config.json");
         REQUIRE(::mkfifo((d / "model.safetensors").c_str(), 0600) == 0);
       })},
      {"weights loop", model_dir("w_loop", [&](const fs::path& d) {
         fs::copy_file(llama / "config.json", d / "config.json");
         fs::create_symlink(d / "model.safetensors", d / "model.safetensors");
       })},
      {"weights device", model_dir("w_dev", [&](const fs::path& d) {
         fs::copy_file(llama / "config.json", d / "config.json");
         fs::create_symlink("/dev/zero", d / "model.safetensors");
       })},
      {"weights directory", model_dir("w_dir", [&](const fs::path& d) {
         fs::copy_file(llama / "config.json", d / "config.json");
         fs::create_directory(d / "model.safetensors");
       })},
      {"config FIFO", model_dir("c_fifo", [&](const fs::path& d) {
         REQUIRE(::mkfifo((d / "config.json").c_str(), 0600) == 0);
         fs::create_symlink(llama / "model.safetensors", d / "model.safetensors");
       })},
      {"config loop", model_dir("c_loop", [&](const fs::path& d) { fs::create_symlink(d / "config.json", d / "config.json"); })},
      {"index loop", model_dir("i_loop", [&](const fs::path& d) {
         fs::copy_file(llama / "config.json", d / "config.json");
         fs::create_symlink(d / "model.safetensors.index.json", d / "model.safetensors.index.json");
       })},
      {"shard FIFO", model_dir("s_fifo", [&](const fs::path& d) {
         const fs::path v = test::fixture("llama_tiny_variant");
         fs::copy_file(v / "config.json", d / "config.json");
         fs::copy_file(v / "model.safetensors.index.json", d / "model.safetensors.index.json");
         fs::create_symlink(v / "model-00001-of-00002.safetensors", d / "model-00001-of-00002.safetensors");
         REQUIRE(::mkfifo((d / "model-00002-of-00002.safetensors").c_str(), 0600) == 0);
       })},
  };
  for (const auto& [what, d] : dirs) {
    INFO(what);
    const std::string msg = error_of([&] { (void)hf::load_model<float>(d); });
    INFO(msg);
    CHECK(msg.find(d.string()) != std::string::npos);
  }
  // Writing never opens a FIFO either (it would block until a reader came).
  safetensors::Writer w;
  w.add("x", Tensor<float>({2}));
  CHECK_THROWS_AS(w.write(fifo.string()), Error);
}
