// JSON reader: valid documents, escapes, numbers, and every malformed input as an Error.
#include "engram/io/json.hpp"
#include "test_util.hpp"

using namespace engram;

TEST_CASE("json parses objects and arrays and numbers and strings and literals", "[json]") {
  const auto v = json::parse(R"( {"a": [1, -2, 3.5, 1e3, 0], "b": {"c": null, "d": true, "e": false},
                                 "s": "x\"y\\z\n\u00e9\ud83d\ude00", "big": 9007199254740993} )");
  REQUIRE(v.is_object());
  const auto& a = v.at("a").as_array();
  REQUIRE(a.size() == 5);
  CHECK(a[0].as_integer() == 1);
  CHECK(a[1].as_integer() == -2);
  CHECK_FALSE(a[2].is_integer());
  CHECK(a[2].as_number() == 3.5);
  CHECK(a[3].as_number() == 1000.0);
  CHECK_FALSE(a[3].is_integer());
  CHECK(v.at("b").at("c").is_null());
  CHECK(v.at("b").at("d").as_bool());
  CHECK(v.at("s").as_string() == "x\"y\\z\n\xc3\xa9\xf0\x9f\x98\x80");
  CHECK(v.at("big").as_integer() == 9007199254740993LL);  // exact beyond double precision
  CHECK(v.find("missing") == nullptr);
  CHECK_THROWS_AS(v.at("missing"), Error);
  CHECK_THROWS_AS(v.at("a").as_string(), Error);
}

TEST_CASE("json round-trips through dump", "[json]") {
  const std::string text = R"({"k":[1,2.5,"s",null,true,{"x":-7}],"e":"\n\t\u0001"})";
  const auto v = json::parse(text);
  CHECK(json::dump(v) == text);
  CHECK(json::dump(json::parse(json::dump(v))) == text);
}

TEST_CASE("json rejects malformed input with a byte offset", "[json][errors]") {
  const char* bad[] = {"", "{", "[1,", "{\"a\":}", "{\"a\" 1}", "[1 2]", "nul", "01", "1.", "-", "1e", "\"abc",
                       "\"\\x\"", "\"\\u12\"", "\"\\ud800\"", "\"\\udc00\"", "{\"a\":1,\"a\":2}", "[1] x", "{1:2}",
                       "\"a\tb\"", "1e999", "{\"a\":1,}", "[,]"};
  for (const char* b : bad) {
    INFO(b);
    CHECK_THROWS_AS(json::parse(b), Error);
  }
  try {
    json::parse("[1, 2, x]", "test.json");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("test.json: invalid JSON at byte 7") != std::string::npos);
  }
}

TEST_CASE("json limits nesting instead of exhausting the stack", "[json][errors]") {
  std::string deep(100000, '[');
  CHECK_THROWS_AS(json::parse(deep), Error);
  std::string ok(100, '[');
  ok += std::string(100, ']');
  CHECK_NOTHROW(json::parse(ok));
}
