// safetensors: round trips in every float dtype, exact half/bfloat16 conversion, and hostile files
// (each must be an Error, never a crash or an out-of-bounds read: the ASan suite runs these).
#include <cstring>
#include <random>

#include "engram/io/safetensors.hpp"
#include "test_util.hpp"

using namespace engram;
using namespace engram::safetensors;

namespace {
std::vector<unsigned char> with_header(const std::string& header, std::size_t data_bytes, std::uint64_t claimed = 0) {
  std::vector<unsigned char> out(8 + header.size() + data_bytes, 0);
  const std::uint64_t n = claimed ? claimed : header.size();
  for (int i = 0; i < 8; ++i) out[std::size_t(i)] = static_cast<unsigned char>(n >> (8 * i));
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}
void expect_error(const std::vector<unsigned char>& bytes, const std::string& fragment) {
  try {
    (void)File::from_bytes(bytes, "hostile.safetensors");
    FAIL("no error for " << fragment);
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(fragment) != std::string::npos);
  }
}
}  // namespace

TEST_CASE("safetensors round trip in F32 F16 BF16 F64 and I64", "[safetensors]") {
  auto a = test::random_tensor<float>({3, 5}, 1);
  Tensor<std::int64_t> ids({4});
  for (Index i = 0; i < 4; ++i) ids[i] = (i - 2) * 1000000007LL;
  Writer w;
  w.add("a32", a, DType::F32);
  w.add("a16", a, DType::F16);
  w.add("abf", a, DType::BF16);
  w.add("a64", a, DType::F64);
  w.add("ids", ids, DType::I64);
  w.add("scalar", Tensor<float>(Shape{}), DType::F32, {});
  w.set_metadata("format", "pt");
  const auto bytes = w.bytes();
  const File f = File::from_bytes(bytes);
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.info("a16").dtype == DType::F16);
  CHECK(f.info("a32").shape == std::vector<std::int64_t>{3, 5});
  const auto r32 = f.read<float>("a32"), r16 = f.read<float>("a16"), rbf = f.read<float>("abf");
  const auto r64 = f.read<double>("a64");
  for (Index r = 0; r < 3; ++r)
    for (Index c = 0; c < 5; ++c) {
      CHECK(r32(r, c) == a(r, c));
      CHECK(r64(r, c) == double(a(r, c)));
      CHECK(r16(r, c) == Approx(a(r, c)).epsilon(1e-3).margin(1e-4));
      CHECK(rbf(r, c) == Approx(a(r, c)).epsilon(8e-3).margin(1e-3));
    }
  const auto rid = f.read<std::int64_t>("ids");
  for (Index i = 0; i < 4; ++i) CHECK(rid[i] == ids[i]);
  CHECK(f.read<float>("scalar").numel() == 1);
  CHECK_THROWS_AS(f.read<float>("ids"), Error);        // integers are not floats
  CHECK_THROWS_AS(f.read<float>("nope"), Error);
  // Header padded to 8 bytes, so the buffer is aligned.
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  CHECK(n % 8 == 0);
}

TEST_CASE("half and bfloat16 conversions are exact where representable and round to nearest even", "[safetensors]") {
  CHECK(half_to_float(0x3C00) == 1.0f);
  CHECK(half_to_float(0xC000) == -2.0f);
  CHECK(half_to_float(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(half_to_float(0x03FF) == std::ldexp(1023.0f, -24));
  CHECK(std::isinf(half_to_float(0x7C00)));
  CHECK(std::isnan(half_to_float(0x7E00)));
  CHECK(half_to_float(0x7BFF) == 65504.0f);
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const float f = half_to_float(std::uint16_t(h));
    if (std::isnan(f)) continue;
    REQUIRE(float_to_half(f) == std::uint16_t(h));  // every half survives a round trip
  }
  CHECK(float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);  // tie rounds to even
  CHECK(float_to_half(1e6f) == 0x7C00);
  CHECK(bf16_to_float(0x3F80) == 1.0f);
  CHECK(float_to_bf16(1.0f + std::ldexp(1.0f, -8)) == 0x3F80);   // tie to even
  CHECK(float_to_bf16(1.0f + std::ldexp(3.0f, -8)) == 0x3F82);
  CHECK(std::isnan(bf16_to_float(float_to_bf16(NAN))));
}

TEST_CASE("hostile safetensors files are rejected with a reason", "[safetensors][errors]") {
  expect_error({1, 2, 3}, "shorter than the 8-byte");
  expect_error(with_header("{}", 0, 1000), "past the end");
  expect_error(with_header("{}", 0, 200'000'000), "exceeds");
  expect_error(with_header("[]      ", 0), "does not start with '{'");
  expect_error(with_header("{\"a\":1} ", 0), "expected an object");
  expect_error(with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8), "invalid JSON");
  expect_error(with_header(R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})", 4), "unknown dtype");
  expect_error(with_header(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), "non-negative");
  expect_error(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4), "need 8");
  expect_error(with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4), "before it begins");
  expect_error(with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})", 6), "overlap");
  expect_error(with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "hole");
  expect_error(with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 12), "trailing");
  expect_error(with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 2), "past the");
  expect_error(with_header(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8), "overflows");
  expect_error(with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4), "data_offsets");
  expect_error(with_header(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4), "dtype");
  expect_error(with_header(R"({"__metadata__":{"k":1}})", 0), "not a string");
  expect_error(with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4), "duplicate");
  // Rank above what a Tensor holds: the file is valid, reading that tensor is an Error.
  const auto deep = with_header(R"({"a":{"dtype":"F32","shape":[1,1,1,1,1],"data_offsets":[0,4]}})", 4);
  const File f = File::from_bytes(deep);
  CHECK_THROWS_AS(f.read<float>("a"), Error);
  // An empty tensor is legal.
  CHECK_NOTHROW(File::from_bytes(with_header(R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}})", 0)));
}

TEST_CASE("mutated and truncated files never crash the reader", "[safetensors][errors][fuzz]") {
  Writer w;
  w.add("x", test::random_tensor<float>({4, 3}, 2), DType::BF16);
  w.add("y", test::random_tensor<float>({2}, 3), DType::F32);
  w.set_metadata("m", "v");
  const auto good = w.bytes();
  std::mt19937 rng(7);
  int parsed = 0, rejected = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    auto bytes = good;
    if (trial % 3 == 0) {
      bytes.resize(rng() % (bytes.size() + 1));
    } else {
      const int flips = 1 + int(rng() % 4);
      for (int i = 0; i < flips; ++i) bytes[rng() % bytes.size()] = static_cast<unsigned char>(rng());
    }
    try {
      const File f = File::from_bytes(bytes);
      for (const auto& t : f.tensors())
        if (t.shape.size() <= 4 && (t.dtype == DType::F32 || t.dtype == DType::BF16)) (void)f.read<float>(t.name);
      ++parsed;
    } catch (const Error&) {
      ++rejected;
    }
  }
  CHECK(rejected > 0);
  CHECK(parsed + rejected == 3000);
}

TEST_CASE("safetensors files on disk are memory-mapped", "[safetensors]") {
  test::TempDir dir;
  Writer w;
  w.add("t", test::random_tensor<float>({2, 2}, 4));
  w.write((dir.path() / "a.safetensors").string());
  const File f = File::open((dir.path() / "a.safetensors").string());
  CHECK(f.read<float>("t").numel() == 4);
  CHECK_THROWS_AS(File::open((dir.path() / "missing.safetensors").string()), Error);
  // An empty file is an Error, not a crash.
  { std::ofstream(dir.path() / "empty.safetensors"); }
  CHECK_THROWS_AS(File::open((dir.path() / "empty.safetensors").string()), Error);
}
