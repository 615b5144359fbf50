// daemon/handlers, bad requests: every class of bad input answered with an error reply that
// leaves the shared state exactly as it was.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "handlers_fixture.hpp"

using namespace handlers_fixture;

namespace {

struct Bad {
  std::string what;
  std::string bytes;
  int expected;  // an LF_E_* code, or 0 for "any error"
};

std::vector<Bad> bad_requests() {
  std::vector<Bad> bad;
  auto add = [&](std::string what, std::string bytes, int code) {
    bad.push_back({std::move(what), std::move(bytes), code});
  };
  auto raw_args = [](const std::string &o, const std::function<void(Encoder &)> &f) {
    return op(o, f);
  };

  // ---- Bytes that are not a request ----
  const std::string valid = encode_create({.name = "delta"});
  for (size_t n = 0; n < valid.size(); ++n)
    add("truncated to " + std::to_string(n) + " bytes", valid.substr(0, n), LF_E_PROTOCOL);
  add("trailing bytes", valid + '\x00', LF_E_PROTOCOL);
  add("never-used byte 0xc1", std::string("\xc1", 1), LF_E_PROTOCOL);
  std::mt19937_64 rng(11);
  for (int i = 0; i < 50; ++i) {
    std::string garbage(1 + rng() % 64, '\0');
    for (char &c : garbage) c = static_cast<char>(rng());
    add("garbage #" + std::to_string(i), garbage, 0);
  }
  {
    Encoder e; e.array(2).str("hello").u64(1);
    add("an array, not a map", e.take(), LF_E_PROTOCOL);
  }
  { Encoder e; e.str("hello"); add("a string, not a map", e.take(), LF_E_PROTOCOL); }
  { Encoder e; e.u64(1); add("an integer, not a map", e.take(), LF_E_PROTOCOL); }
  { Encoder e; e.nil(); add("nil", e.take(), LF_E_PROTOCOL); }
  { Encoder e; e.map(1).key("id").u64(1); add("missing op", e.take(), LF_E_PROTOCOL); }
  { Encoder e; e.map(1).key("op").u64(3); add("op not a string", e.take(), LF_E_PROTOCOL); }
  { Encoder e; e.map(2).key("op").str("list").key("id").str("x");
    add("id not an integer", e.take(), LF_E_PROTOCOL); }
  { Encoder e; e.map(2).key("op").str("list").key("id").i64(-1);
    add("negative id", e.take(), LF_E_PROTOCOL); }
  { Encoder e; e.map(2).key("op").str("list").key("args").array(0);
    add("args not a map", e.take(), LF_E_PROTOCOL); }
  add("unknown op", op("frobnicate"), LF_E_UNKNOWN_OP);
  add("empty op", op(""), LF_E_UNKNOWN_OP);
  add("op with a NUL", op(std::string("list\0x", 6)), LF_E_INVALID_ARGUMENT);
  add("op differing in case", op("LIST"), LF_E_UNKNOWN_OP);

  // ---- Limits ----
  add("string over kMaxString", named("info", std::string(ipc::kMaxString + 1, 'a')), LF_E_TOO_LARGE);
  add("array over kMaxArray", raw_args("list", [](Encoder &e) {
        e.map(1).key("x").array(static_cast<uint32_t>(ipc::kMaxArray + 1));
        for (size_t i = 0; i <= ipc::kMaxArray; ++i) e.nil();
      }), LF_E_TOO_LARGE);
  add("map over kMaxMap", raw_args("list", [](Encoder &e) {
        e.map(static_cast<uint32_t>(ipc::kMaxMap + 1));
        for (size_t i = 0; i <= ipc::kMaxMap; ++i) e.u64(i).nil();
      }), LF_E_TOO_LARGE);
  add("binary over kMaxBinary", raw_args("list", [](Encoder &e) {
        std::string blob(ipc::kMaxBinary + 1, 'b');
        e.map(1).key("x");
        e.pk().pack_bin(static_cast<uint32_t>(blob.size()));
        e.pk().pack_bin_body(blob.data(), static_cast<uint32_t>(blob.size()));
      }), LF_E_TOO_LARGE);
  add("message over kMaxMessageBytes", raw_args("list", [](Encoder &e) {
        e.map(1).key("x").array(80);
        for (int i = 0; i < 80; ++i) e.str(std::string(ipc::kMaxString, 'z'));
      }), LF_E_TOO_LARGE);
  add("a huge array header with nothing behind it",
      std::string("\x82\xa2op\xa4list\xa4" "args" "\x81\xa1x\xdd\xff\xff\xff\xff", 22),
      LF_E_TOO_LARGE);
  add("nesting deeper than kMaxDepth", raw_args("list", [](Encoder &e) {
        e.map(1).key("x");
        for (size_t i = 0; i < ipc::kMaxDepth; ++i) e.array(1);
        e.nil();
      }), LF_E_TOO_LARGE);
  add("very deep nesting", std::string(100000, '\x91') + '\x01', LF_E_TOO_LARGE);

  // ---- hello ----
  add("hello, wrong protocol", hello(LF_PROTOCOL_VERSION + 1), LF_E_PROTOCOL_VERSION);
  add("hello, protocol 0", hello(0), LF_E_PROTOCOL_VERSION);
  add("hello, no protocol", op("hello"), LF_E_PROTOCOL);
  add("hello, protocol a string", raw_args("hello", [](Encoder &e) {
        e.map(1).key("protocol").str("1"); }), LF_E_PROTOCOL);

  // ---- create_adapter ----
  add("create, existing name", encode_create({.name = "alpha"}), LF_E_EXISTS);
  add("create, empty name", encode_create({.name = ""}), LF_E_INVALID_ARGUMENT);
  add("create, 128-byte name", encode_create({.name = std::string(128, 'n')}), LF_E_TOO_LARGE);
  for (const std::string name : {"-lead", ".x", "a/b", "a b", "caf\xc3\xa9", "a\nb"})
    add("create, adapter name '" + name + "'", encode_create({.name = name}), LF_E_INVALID_ARGUMENT);
  add("create, adapter name with a NUL", encode_create({.name = std::string("ab\0c", 4)}),
      LF_E_INVALID_ARGUMENT);
  for (const std::string tname : {"", "has space", "quote\"d", "back\\slash", "tab\tbed", "\x7f"})
    add("create, tensor name '" + tname + "'",
        encode_create({.name = "delta", .tensors = {{tname, "f16", {4}}}}), LF_E_INVALID_ARGUMENT);
  add("create, 256-byte tensor name",
      encode_create({.name = "delta", .tensors = {{std::string(256, 't'), "f16", {4}}}}),
      LF_E_TOO_LARGE);
  add("create, duplicate tensor names",
      encode_create({.name = "delta", .tensors = {{"w", "f16", {4}}, {"w", "f32", {4}}}}),
      LF_E_INVALID_ARGUMENT);
  add("create, no tensors", encode_create({.name = "delta", .tensors = {}}), LF_E_INVALID_ARGUMENT);
  add("create, overflowing shape",
      encode_create({.name = "delta", .tensors = {{"w", "f16", {int64_t{1} << 40, int64_t{1} << 40}}}}),
      LF_E_TOO_LARGE);
  add("create, shape near INT64_MAX",
      encode_create({.name = "delta", .tensors = {{"w", "u8", {INT64_MAX, INT64_MAX}}}}),
      LF_E_TOO_LARGE);
  add("create, negative dimension",
      encode_create({.name = "delta", .tensors = {{"w", "f16", {16, -1}}}}), LF_E_INVALID_ARGUMENT);
  add("create, 7 dimensions",
      encode_create({.name = "delta", .tensors = {{"w", "f16", {1, 1, 1, 1, 1, 1, 1}}}}),
      LF_E_TOO_LARGE);
  add("create, unknown dtype name",
      encode_create({.name = "delta", .tensors = {{"w", "f8", {4}}}}), LF_E_INVALID_ARGUMENT);
  add("create, empty dtype name",
      encode_create({.name = "delta", .tensors = {{"w", "", {4}}}}), LF_E_INVALID_ARGUMENT);
  for (int64_t code : {int64_t{0}, int64_t{9}, int64_t{-1}, INT64_MAX, INT64_MIN})
    add("create, dtype code " + std::to_string(code), raw_args("create_adapter", [&](Encoder &e) {
          e.map(2).key("name").str("delta").key("tensors").array(1);
          e.map(3).key("name").str("w").key("dtype").i64(code).key("shape").array(1).i64(4);
        }), LF_E_INVALID_ARGUMENT);
  add("create, dtype a bool", raw_args("create_adapter", [](Encoder &e) {
        e.map(2).key("name").str("delta").key("tensors").array(1);
        e.map(3).key("name").str("w").key("dtype").boolean(true).key("shape").array(1).i64(4);
      }), LF_E_PROTOCOL);
  add("create, dimension a string", raw_args("create_adapter", [](Encoder &e) {
        e.map(2).key("name").str("delta").key("tensors").array(1);
        e.map(3).key("name").str("w").key("dtype").str("f16").key("shape").array(1).str("4");
      }), LF_E_PROTOCOL);
  add("create, dimension above INT64_MAX", raw_args("create_adapter", [](Encoder &e) {
        e.map(2).key("name").str("delta").key("tensors").array(1);
        e.map(3).key("name").str("w").key("dtype").str("f16").key("shape").array(1).u64(UINT64_MAX);
      }), LF_E_PROTOCOL);
  add("create, dimension a float", raw_args("create_adapter", [](Encoder &e) {
        e.map(2).key("name").str("delta").key("tensors").array(1);
        e.map(3).key("name").str("w").key("dtype").str("f16").key("shape").array(1).f64(4.5);
      }), LF_E_PROTOCOL);
  add("create, shape not an array", raw_args("create_adapter", [](Encoder &e) {
        e.map(2).key("name").str("delta").key("tensors").array(1);
        e.map(3).key("name").str("w").key("dtype").str("f16").key("shape").u64(4);
      }), LF_E_PROTOCOL);
  add("create, tensor not a map", raw_args("create_adapter", [](Encoder &e) {
        e.map(2).key("name").str("delta").key("tensors").array(1).str("w");
      }), LF_E_PROTOCOL);
  add("create, tensors not an array", raw_args("create_adapter", [](Encoder &e) {
        e.map(2).key("name").str("delta").key("tensors").map(0);
      }), LF_E_PROTOCOL);
  add("create, no tensors field", named("create_adapter", "delta"), LF_E_PROTOCOL);
  add("create, no name", raw_args("create_adapter", [](Encoder &e) {
        e.map(1).key("tensors").array(0); }), LF_E_PROTOCOL);
  add("create, name an integer", raw_args("create_adapter", [](Encoder &e) {
        e.map(1).key("name").u64(5); }), LF_E_PROTOCOL);
  auto with_lora = [&](const std::string &what, const std::function<void(Encoder &)> &lora, int code) {
    add("create, " + what, raw_args("create_adapter", [&](Encoder &e) {
          e.map(3).key("name").str("delta").key("tensors").array(1);
          e.map(3).key("name").str("w").key("dtype").str("f16").key("shape").array(1).i64(4);
          e.key("lora");
          lora(e);
        }), code);
  };
  with_lora("lora not a map", [](Encoder &e) { e.array(0); }, LF_E_PROTOCOL);
  with_lora("negative rank", [](Encoder &e) { e.map(1).key("rank").i64(-4); }, LF_E_PROTOCOL);
  with_lora("rank over 65536", [](Encoder &e) { e.map(1).key("rank").u64(65537); },
            LF_E_INVALID_ARGUMENT);
  with_lora("rank 2^40", [](Encoder &e) { e.map(1).key("rank").u64(uint64_t{1} << 40); },
            LF_E_INVALID_ARGUMENT);
  with_lora("alpha a string", [](Encoder &e) { e.map(1).key("alpha").str("8"); }, LF_E_PROTOCOL);
  with_lora("alpha NaN", [](Encoder &e) { e.map(1).key("alpha").f64(NAN); }, LF_E_INVALID_ARGUMENT);
  with_lora("alpha infinite", [](Encoder &e) { e.map(1).key("alpha").f64(-INFINITY); },
            LF_E_INVALID_ARGUMENT);
  with_lora("use_rslora an integer", [](Encoder &e) { e.map(1).key("use_rslora").u64(1); },
            LF_E_PROTOCOL);
  with_lora("target_modules an integer", [](Encoder &e) { e.map(1).key("target_modules").u64(1); },
            LF_E_PROTOCOL);
  with_lora("target module not a string",
            [](Encoder &e) { e.map(1).key("target_modules").array(1).u64(1); }, LF_E_PROTOCOL);
  with_lora("target module with a comma",
            [](Encoder &e) { e.map(1).key("target_modules").array(1).str("q,v"); },
            LF_E_INVALID_ARGUMENT);
  auto with_field = [&](const std::string &what, const std::function<void(Encoder &)> &field,
                        int code) {
    add("create, " + what, raw_args("create_adapter", [&](Encoder &e) {
          e.map(3).key("name").str("delta").key("tensors").array(1);
          e.map(3).key("name").str("w").key("dtype").str("f16").key("shape").array(1).i64(4);
          field(e);
        }), code);
  };
  with_field("metadata an integer", [](Encoder &e) { e.key("metadata").u64(1); }, LF_E_PROTOCOL);
  with_field("slots a string", [](Encoder &e) { e.key("slots").str("4"); }, LF_E_PROTOCOL);
  with_field("slots negative", [](Encoder &e) { e.key("slots").i64(-1); }, LF_E_PROTOCOL);
  with_field("history a string", [](Encoder &e) { e.key("history").str("2"); }, LF_E_PROTOCOL);
  with_field("placement an integer", [](Encoder &e) { e.key("placement").u64(0); }, LF_E_PROTOCOL);
  add("create, slots 65", encode_create({.name = "delta", .slots = 65}), LF_E_INVALID_ARGUMENT);
  add("create, slots 2^40", encode_create({.name = "delta", .slots = uint64_t{1} << 40}),
      LF_E_INVALID_ARGUMENT);
  add("create, slots 1", encode_create({.name = "delta", .slots = 1}), LF_E_INVALID_ARGUMENT);
  add("create, slots below history + 2", encode_create({.name = "delta", .slots = 4, .history = 3}),
      LF_E_INVALID_ARGUMENT);
  add("create, history 63", encode_create({.name = "delta", .history = 63}), LF_E_INVALID_ARGUMENT);
  add("create, history 2^40", encode_create({.name = "delta", .history = int64_t{1} << 40}),
      LF_E_INVALID_ARGUMENT);
  add("create, history -2", encode_create({.name = "delta", .history = -2}), LF_E_INVALID_ARGUMENT);
  add("create, placement cuda:0", encode_create({.name = "delta", .placement = "cuda:0"}),
      LF_E_UNSUPPORTED);
  add("create, placement empty", encode_create({.name = "delta", .placement = ""}),
      LF_E_INVALID_ARGUMENT);
  add("create, slot larger than the arena",
      encode_create({.name = "delta", .tensors = {{"w", "f32", {4096, 4096}}}}), LF_E_TOO_LARGE);
  add("create, slots that can never fit",
      encode_create({.name = "delta", .tensors = {{"w", "f16", {1024, 1024}}}, .slots = 4}),
      LF_E_ARENA_FULL);
  add("create, more than the free data",
      encode_create({.name = "delta", .tensors = {{"w", "f16", {1024, 1024}}}, .slots = 2,
                     .history = 0}),
      LF_E_ARENA_FULL);
  {
    CreateArgs many{.name = "delta", .tensors = {}};
    for (int i = 0; i < 400; ++i) many.tensors.push_back({"t" + std::to_string(i), "u8", {1}});
    add("create, descriptors that do not fit the pool", encode_create(many), LF_E_ARENA_FULL);
  }

  // ---- Names as long as a string may be: the reply must still fit the client's limits ----
  const std::string longest(ipc::kMaxString, 'n');
  add("create, longest adapter name", encode_create({.name = longest}), LF_E_TOO_LARGE);
  add("create, longest tensor name",
      encode_create({.name = "delta", .tensors = {{longest, "f16", {4}}}}), LF_E_TOO_LARGE);
  add("create, longest tensor name and an unknown dtype",
      encode_create({.name = "delta", .tensors = {{longest, "f8", {4}}}}), LF_E_INVALID_ARGUMENT);
  add("create, longest tensor name and 7 dimensions",
      encode_create({.name = "delta", .tensors = {{longest, "f16", {1, 1, 1, 1, 1, 1, 1}}}}),
      LF_E_TOO_LARGE);
  add("create, longest unknown dtype name",
      encode_create({.name = "delta", .tensors = {{"w", longest, {4}}}}), LF_E_INVALID_ARGUMENT);
  add("create, longest placement", encode_create({.name = "delta", .placement = longest}),
      LF_E_INVALID_ARGUMENT);
  add("info, longest name", named("info", longest), LF_E_NOT_FOUND);
  add("drop, longest name", named("drop_adapter", longest), LF_E_NOT_FOUND);
  add("begin_write, longest name", begin_write(longest), LF_E_NOT_FOUND);
  add("rollback, longest name", rollback(longest, 1), LF_E_NOT_FOUND);
  add("longest op", op(longest), LF_E_UNKNOWN_OP);

  // ---- The other operations ----
  add("info, unknown adapter", named("info", "nobody"), LF_E_NOT_FOUND);
  add("info, name nil", raw_args("info", [](Encoder &e) { e.map(1).key("name").nil(); }),
      LF_E_PROTOCOL);
  add("info, no args", op("info"), LF_E_PROTOCOL);
  add("drop, unknown adapter", named("drop_adapter", "nobody"), LF_E_NOT_FOUND);
  add("drop, a prefix of a name", named("drop_adapter", "alph"), LF_E_NOT_FOUND);
  add("drop, a name with a NUL after a real one", named("drop_adapter", std::string("alpha\0", 6)),
      LF_E_INVALID_ARGUMENT);
  add("drop, name an array", raw_args("drop_adapter", [](Encoder &e) {
        e.map(1).key("name").array(1).str("alpha"); }), LF_E_PROTOCOL);
  add("begin_write, unknown adapter", begin_write("nobody"), LF_E_NOT_FOUND);
  // The writer is the sender the kernel names: a pid in the message is a lie or a mistake.
  add("begin_write, a pid of its own", raw_args("begin_write", [](Encoder &e) {
        e.map(2).key("name").str("alpha").key("pid").u64(1); }), LF_E_PROTOCOL);
  add("begin_write, a start time of its own", raw_args("begin_write", [](Encoder &e) {
        e.map(2).key("name").str("alpha").key("start").u64(1); }), LF_E_PROTOCOL);
  add("begin_write, name given twice", raw_args("begin_write", [](Encoder &e) {
        e.map(2).key("name").str("alpha").key("name").str("beta"); }), LF_E_PROTOCOL);
  add("begin_write, lease 0 ms", begin_write("alpha", 0), LF_E_INVALID_ARGUMENT);
  add("begin_write, lease 2^63 ms", begin_write("alpha", uint64_t{1} << 63),
      LF_E_INVALID_ARGUMENT);
  add("begin_write, no free slot", begin_write("beta"), LF_E_NO_FREE_SLOT);
  add("commit, unknown lease", commit(999999), LF_E_LEASE);
  add("commit, lease 0", commit(0), LF_E_LEASE);
  add("commit, no lease", op("commit"), LF_E_PROTOCOL);
  add("commit, lease a string", raw_args("commit", [](Encoder &e) {
        e.map(1).key("lease").str("1"); }), LF_E_PROTOCOL);
  add("commit, unknown flags", commit(999999, 4), LF_E_INVALID_ARGUMENT);
  add("commit, flags 2^32 + 1", commit(999999, (uint64_t{1} << 32) + 1), LF_E_INVALID_ARGUMENT);
  add("commit, checksum a string", raw_args("commit", [](Encoder &e) {
        e.map(2).key("lease").u64(999999).key("checksum").str("0"); }), LF_E_PROTOCOL);
  add("abort, unknown lease", abort_op(999999), LF_E_LEASE);
  add("abort, lease negative", raw_args("abort", [](Encoder &e) {
        e.map(1).key("lease").i64(-1); }), LF_E_PROTOCOL);
  add("rollback, unknown adapter", rollback("nobody", 1), LF_E_NOT_FOUND);
  add("rollback, unknown version", rollback("alpha", 77), LF_E_NO_VERSION);
  add("rollback, version 0", rollback("alpha", 0), LF_E_NO_VERSION);
  add("rollback, version a string", raw_args("rollback", [](Encoder &e) {
        e.map(2).key("name").str("alpha").key("version").str("1"); }), LF_E_PROTOCOL);
  add("rollback, no version", named("rollback", "alpha"), LF_E_PROTOCOL);
  return bad;
}

}  // namespace

TEST_CASE("every class of bad request gets an error reply and leaves the state unchanged") {
  Fixture f;
  build_state(f);
  const std::vector<Bad> bad = bad_requests();
  REQUIRE(bad.size() > 100);
  const uint64_t data_used = f.reg->data_allocator().used();
  const uint64_t pool_used = f.reg->pool_allocator().used();
  const size_t events = f.events.size();
  const std::vector<std::byte> snapshot = f.control();
  for (const Bad &b : bad) {
    CAPTURE(b.what);
    std::string bytes;
    CHECK_NOTHROW(bytes = f.raw(b.bytes));
    Reply r = parse_reply(bytes);
    REQUIRE(r.decoded);
    CHECK_FALSE(r.ok);
    if (b.expected != 0) CHECK_MESSAGE(r.code == b.expected, r.message);
    CHECK(r.code < 0);
    CHECK(r.code >= LF_E_DEVICE);
    CHECK_FALSE(r.message.empty());
    REQUIRE(f.control_equals(snapshot));
    REQUIRE(f.reg->data_allocator().used() == data_used);
    REQUIRE(f.reg->pool_allocator().used() == pool_used);
    REQUIRE(f.events.size() == events);
  }
  // The daemon still works after all of that.
  CHECK(f.must(hello(LF_PROTOCOL_VERSION)).ok);
  CHECK(f.write_and_commit("alpha") == 3);
  CHECK(f.must(op("stats")).result->uint("errors").value() == bad.size());
}
