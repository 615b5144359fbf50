// ipc/protocol: the decoding limits, MapView's typed getters, envelopes and JSON.
#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "ipc/protocol.hpp"

using namespace loraflip;
using ipc::Encoder;
using ipc::MapView;

namespace {

std::string sample_args() {
  Encoder e;
  e.map(7)
      .key("name").str("alpha")
      .key("count").u64(7)
      .key("delta").i64(-3)
      .key("ratio").f64(0.5)
      .key("flag").boolean(true)
      .key("shape").array(2).i64(16).i64(4096)
      .key("lora").map(1).key("rank").u64(16);
  return e.take();
}

int decode_code(const std::string &bytes) {
  auto r = ipc::decode(bytes.data(), bytes.size());
  return r.ok() ? LF_OK : r.error().code;
}

// `depth` containers nested inside each other, alternating arrays and maps.
std::string nested(size_t depth) {
  Encoder e;
  for (size_t i = 0; i < depth; ++i) {
    if (i % 2 == 0) e.array(1);
    else e.map(1).key("k");
  }
  e.u64(1);
  return e.take();
}

}  // namespace

TEST_CASE("a request survives encode_request and decode unchanged") {
  const std::string bytes = ipc::encode_request("create_adapter", 42, sample_args());
  auto oh = ipc::decode(bytes.data(), bytes.size());
  REQUIRE(oh.ok());
  auto env = MapView::of(oh->get(), "request");
  REQUIRE(env.ok());
  CHECK(env->str("op").value() == "create_adapter");
  CHECK(env->uint("id").value() == 42);
  auto args = env->map("args");
  REQUIRE(args.ok());
  CHECK(args->str("name").value() == "alpha");
  CHECK(args->uint("count").value() == 7);
  CHECK(args->integer("count").value() == 7);
  CHECK(args->integer("delta").value() == -3);
  CHECK(args->number("ratio").value() == 0.5);
  CHECK(args->number("count").value() == 7.0);
  CHECK(args->number("delta").value() == -3.0);
  CHECK(args->boolean("flag").value() == true);
  auto shape = args->array("shape");
  REQUIRE(shape.ok());
  REQUIRE(shape->size() == 2);
  CHECK(ipc::as_int(*shape.value()[1], "shape[]").value() == 4096);
  CHECK(args->map("lora").value().uint("rank").value() == 16);
}

TEST_CASE("decode refuses empty input, every truncation, and trailing bytes") {
  CHECK(decode_code("") == LF_E_PROTOCOL);
  CHECK(ipc::decode(nullptr, 0).error().code == LF_E_PROTOCOL);
  const std::string bytes = ipc::encode_request("info", 1, sample_args());
  for (size_t n = 1; n < bytes.size(); ++n)
    REQUIRE_MESSAGE(decode_code(bytes.substr(0, n)) == LF_E_PROTOCOL, "prefix of " << n);
  CHECK(decode_code(bytes) == LF_OK);
  auto trailing = ipc::decode((bytes + '\0').data(), bytes.size() + 1);
  REQUIRE_FALSE(trailing.ok());
  CHECK(trailing.error().code == LF_E_PROTOCOL);
  CHECK(trailing.error().message.find("trailing") != std::string::npos);
  CHECK(decode_code(bytes + bytes) == LF_E_PROTOCOL);
}

TEST_CASE("decode refuses strings, binaries, arrays and maps over their limits") {
  {
    Encoder ok, big;
    ok.str(std::string(ipc::kMaxString, 's'));
    big.str(std::string(ipc::kMaxString + 1, 's'));
    CHECK(decode_code(ok.take()) == LF_OK);
    CHECK(decode_code(big.take()) == LF_E_TOO_LARGE);
  }
  {
    Encoder ok, big;
    std::string blob(ipc::kMaxBinary + 1, 'b');
    ok.pk().pack_bin(static_cast<uint32_t>(ipc::kMaxBinary));
    ok.pk().pack_bin_body(blob.data(), static_cast<uint32_t>(ipc::kMaxBinary));
    big.pk().pack_bin(static_cast<uint32_t>(blob.size()));
    big.pk().pack_bin_body(blob.data(), static_cast<uint32_t>(blob.size()));
    CHECK(decode_code(ok.take()) == LF_OK);
    CHECK(decode_code(big.take()) == LF_E_TOO_LARGE);
  }
  {
    Encoder ok, big;
    ok.array(static_cast<uint32_t>(ipc::kMaxArray));
    for (size_t i = 0; i < ipc::kMaxArray; ++i) ok.nil();
    big.array(static_cast<uint32_t>(ipc::kMaxArray + 1));
    for (size_t i = 0; i < ipc::kMaxArray + 1; ++i) big.nil();
    CHECK(decode_code(ok.take()) == LF_OK);
    CHECK(decode_code(big.take()) == LF_E_TOO_LARGE);
  }
  {
    Encoder ok, big;
    ok.map(static_cast<uint32_t>(ipc::kMaxMap));
    for (size_t i = 0; i < ipc::kMaxMap; ++i) ok.u64(i).nil();
    big.map(static_cast<uint32_t>(ipc::kMaxMap + 1));
    for (size_t i = 0; i < ipc::kMaxMap + 1; ++i) big.u64(i).nil();
    CHECK(decode_code(ok.take()) == LF_OK);
    CHECK(decode_code(big.take()) == LF_E_TOO_LARGE);
  }
  // A header that claims 2^32 - 1 elements with nothing behind it: refused before allocating.
  CHECK(decode_code(std::string("\xdd\xff\xff\xff\xff", 5)) == LF_E_TOO_LARGE);
  CHECK(decode_code(std::string("\xdf\xff\xff\xff\xff", 5)) == LF_E_TOO_LARGE);
  // A string is read whole before it is checked: its missing bytes are the first problem.
  CHECK(decode_code(std::string("\xdb\xff\xff\xff\xff", 5)) == LF_E_PROTOCOL);
}

TEST_CASE("decode accepts kMaxDepth nested containers and refuses one more") {
  CHECK(decode_code(nested(ipc::kMaxDepth)) == LF_OK);
  CHECK(decode_code(nested(ipc::kMaxDepth + 1)) == LF_E_TOO_LARGE);
  CHECK(decode_code(nested(1000)) == LF_E_TOO_LARGE);
  // 100k one-byte "array of 1" headers: deep recursion must not reach the stack's end.
  CHECK(decode_code(std::string(100000, '\x91') + '\x01') == LF_E_TOO_LARGE);
}

TEST_CASE("decode refuses a message over kMaxMessageBytes with LF_E_TOO_LARGE before parsing") {
  std::string big(ipc::kMaxMessageBytes + 1, '\xc0');  // nils: would be trailing bytes otherwise
  auto r = ipc::decode(big.data(), big.size());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == LF_E_TOO_LARGE);
  CHECK(r.error().message.find(std::to_string(ipc::kMaxMessageBytes)) != std::string::npos);
  // Exactly at the limit, the size alone is no reason to refuse.
  Encoder e;
  e.pk().pack_bin(static_cast<uint32_t>(ipc::kMaxMessageBytes - 5));
  std::string at_limit = e.take() + std::string(ipc::kMaxMessageBytes - 5, 'x');
  REQUIRE(at_limit.size() == ipc::kMaxMessageBytes);
  CHECK(decode_code(at_limit) == LF_E_TOO_LARGE);  // but its binary is over kMaxBinary
}

TEST_CASE("decode reports malformed bytes as protocol errors") {
  CHECK(decode_code(std::string("\xc1", 1)) == LF_E_PROTOCOL);  // the never-used byte
  CHECK(decode_code(std::string("\x82\xa1k", 3)) == LF_E_PROTOCOL);
}

TEST_CASE("MapView getters name the field that is missing or has the wrong type") {
  Encoder e;
  e.map(6)
      .key("s").str("text")
      .key("u").u64(5)
      .key("neg").i64(-5)
      .key("huge").u64(UINT64_MAX)
      .key("b").boolean(false)
      .key("n").nil();
  const std::string bytes = e.take();
  auto oh = ipc::decode(bytes.data(), bytes.size());
  REQUIRE(oh.ok());
  const MapView m = MapView::of(oh->get(), "args").value();

  auto expect_error = [](const auto &r, const std::string &field) {
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == LF_E_PROTOCOL);
    CHECK_MESSAGE(r.error().message.find("'" + field + "'") != std::string::npos,
                  r.error().message);
  };
  expect_error(m.str("missing"), "missing");
  expect_error(m.uint("missing"), "missing");
  expect_error(m.integer("missing"), "missing");
  expect_error(m.number("missing"), "missing");
  expect_error(m.boolean("missing"), "missing");
  expect_error(m.map("missing"), "missing");
  expect_error(m.array("missing"), "missing");

  expect_error(m.str("u"), "u");
  expect_error(m.uint("s"), "s");
  expect_error(m.uint("neg"), "neg");
  expect_error(m.integer("huge"), "huge");  // above INT64_MAX
  expect_error(m.integer("b"), "b");
  expect_error(m.number("s"), "s");
  expect_error(m.boolean("u"), "u");
  expect_error(m.map("s"), "s");
  expect_error(m.array("u"), "u");
  expect_error(m.str("n"), "n");  // required fields may not be nil

  CHECK(m.uint("huge").value() == UINT64_MAX);
  CHECK(m.integer("neg").value() == -5);
  CHECK(m.boolean("b").value() == false);

  // Optional getters: absent or nil give the fallback; a wrong type is still an error.
  CHECK(m.str_or("missing", "dflt").value() == "dflt");
  CHECK(m.str_or("n", "dflt").value() == "dflt");
  CHECK(m.str_or("s", "dflt").value() == "text");
  CHECK(m.uint_or("missing", 9).value() == 9);
  CHECK(m.integer_or("n", -1).value() == -1);
  CHECK(m.number_or("missing", 2.5).value() == 2.5);
  CHECK(m.boolean_or("missing", true).value() == true);
  expect_error(m.str_or("u", "x"), "u");
  expect_error(m.uint_or("s", 0), "s");
  expect_error(m.integer_or("s", 0), "s");
  expect_error(m.number_or("b", 0), "b");
  expect_error(m.boolean_or("u", false), "u");

  Encoder arr;
  arr.array(0);
  const std::string abytes = arr.take();
  auto aoh = ipc::decode(abytes.data(), abytes.size());
  auto not_map = MapView::of(aoh->get(), "request");
  REQUIRE_FALSE(not_map.ok());
  CHECK(not_map.error().code == LF_E_PROTOCOL);
  CHECK(not_map.error().message.find("'request'") != std::string::npos);
}

TEST_CASE("reply envelopes carry the id, ok, and the result or the error") {
  Encoder r;
  r.map(1).key("version").u64(3);
  const std::string ok = ipc::encode_ok(77, r.take());
  auto oh = ipc::decode(ok.data(), ok.size());
  REQUIRE(oh.ok());
  auto m = MapView::of(oh->get(), "reply").value();
  CHECK(m.uint("id").value() == 77);
  CHECK(m.boolean("ok").value() == true);
  CHECK(m.map("result").value().uint("version").value() == 3);

  const std::string err = ipc::encode_error(78, make_error(LF_E_NO_VERSION, "gone"));
  auto eoh = ipc::decode(err.data(), err.size());
  REQUIRE(eoh.ok());
  auto em = MapView::of(eoh->get(), "reply").value();
  CHECK(em.uint("id").value() == 78);
  CHECK(em.boolean("ok").value() == false);
  CHECK(em.map("error").value().integer("code").value() == LF_E_NO_VERSION);
  CHECK(em.map("error").value().str("message").value() == "gone");
}

TEST_CASE("to_json escapes quotes, backslashes and control characters") {
  Encoder e;
  e.map(7)
      .key("q\"k").str("say \"hi\"\\")
      .key("ctl").str(std::string("a\nb\tc\rd\x01\x1f", 9))
      .key("n").nil()
      .key("arr").array(3).i64(-1).u64(2).boolean(true)
      .key("f").f64(1.5)
      .key("inf").f64(INFINITY)
      .key("utf8").str("caf\xc3\xa9");
  const std::string bytes = e.take();
  auto oh = ipc::decode(bytes.data(), bytes.size());
  REQUIRE(oh.ok());
  const std::string json = ipc::to_json(oh->get());
  CHECK(json ==
        "{\"q\\\"k\":\"say \\\"hi\\\"\\\\\","
        "\"ctl\":\"a\\nb\\tc\\rd\\u0001\\u001f\","
        "\"n\":null,"
        "\"arr\":[-1,2,true],"
        "\"f\":1.5,"
        "\"inf\":null,"
        "\"utf8\":\"caf\xc3\xa9\"}");
  for (char c : json) CHECK(static_cast<unsigned char>(c) >= 0x20);
}

TEST_CASE("to_json writes binary as hex and non-string keys as strings") {
  Encoder e;
  e.map(1).u64(5);
  e.pk().pack_bin(3);
  e.pk().pack_bin_body("\x00\xab\xff", 3);
  const std::string bytes = e.take();
  auto oh = ipc::decode(bytes.data(), bytes.size());
  REQUIRE(oh.ok());
  CHECK(ipc::to_json(oh->get()) == "{\"5\":\"00abff\"}");
}

TEST_CASE("event topics end with a slash so no adapter's topic prefixes another's") {
  CHECK(ipc::event_topic("a") == "flip/a/");
  CHECK(ipc::event_topic("ab").rfind(ipc::event_topic("a"), 0) == std::string::npos);
  CHECK(ipc::event_topic("a").rfind(std::string(ipc::kEventTopicAll), 0) == 0);
}
