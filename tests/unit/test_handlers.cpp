// daemon/handlers: every operation through RequestHandler::handle, and every class of bad
// input answered with an error reply that leaves the shared state exactly as it was.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <unistd.h>
#include <vector>

#include "daemon/handlers.hpp"
#include "ipc/text.hpp"
#include "kernels/validate.hpp"
#include "support.hpp"

using namespace loraflip;
using daemon::FlipEvent;
using daemon::Registry;
using daemon::RequestHandler;
using ipc::Encoder;
using ipc::MapView;

namespace {

constexpr uint64_t kT0 = 1'000'000'000'000ULL;
const std::string kA = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const std::string kB = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

struct Reply {
  msgpack::object_handle oh;
  bool decoded = false;
  bool ok = false;
  uint64_t id = 0;
  int64_t code = 0;
  std::string message;
  std::optional<MapView> result;
};

Reply parse_reply(const std::string &bytes) {
  Reply r;
  auto oh = ipc::decode(bytes.data(), bytes.size());
  if (!oh) return r;
  r.oh = std::move(oh).value();
  auto m = MapView::of(r.oh.get(), "reply");
  if (!m) return r;
  auto ok = m->boolean("ok");
  auto id = m->uint("id");
  if (!ok || !id) return r;
  r.ok = ok.value();
  r.id = id.value();
  if (r.ok) {
    auto res = m->map("result");
    if (!res) return r;
    r.result = res.value();
  } else {
    auto err = m->map("error");
    if (!err) return r;
    auto code = err->integer("code");
    auto msg = err->str("message");
    if (!code || !msg) return r;
    r.code = code.value();
    r.message = std::string(msg.value());
  }
  r.decoded = true;
  return r;
}

struct TensorArg {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
};

struct CreateArgs {
  std::string name = "gamma";
  std::vector<TensorArg> tensors = {{kA, "f16", {16, 4096}}, {kB, "f16", {4096, 16}}};
  std::optional<uint64_t> slots;
  std::optional<int64_t> history;
  std::optional<std::string> placement;
  std::string metadata = "{\"step\": 0}";
};

std::string encode_create(const CreateArgs &c) {
  Encoder e;
  e.map(4 + (c.slots ? 1 : 0) + (c.history ? 1 : 0) + (c.placement ? 1 : 0));
  e.key("name").str(c.name);
  e.key("tensors").array(static_cast<uint32_t>(c.tensors.size()));
  for (const TensorArg &t : c.tensors) {
    e.map(3).key("name").str(t.name).key("dtype").str(t.dtype).key("shape");
    e.array(static_cast<uint32_t>(t.shape.size()));
    for (int64_t d : t.shape) e.i64(d);
  }
  e.key("lora").map(3).key("rank").u64(16).key("alpha").f64(32).key("target_modules");
  e.array(2).str("q_proj").str("v_proj");
  e.key("metadata").str(c.metadata);
  if (c.slots) e.key("slots").u64(*c.slots);
  if (c.history) e.key("history").i64(*c.history);
  if (c.placement) e.key("placement").str(*c.placement);
  return ipc::encode_request("create_adapter", 7, e.take());
}

std::string op(const std::string &name, const std::function<void(Encoder &)> &args = nullptr,
               uint64_t id = 1) {
  Encoder e;
  if (args) args(e);
  else e.map(0);
  return ipc::encode_request(name, id, e.take());
}

std::string hello(uint64_t protocol) {
  return op("hello", [&](Encoder &e) { e.map(1).key("protocol").u64(protocol); });
}
std::string named(const std::string &o, const std::string &name) {
  return op(o, [&](Encoder &e) { e.map(1).key("name").str(name); });
}
// Well-formed requests come from the messages' one declaration (ipc/messages.hpp); the bad
// ones below are written by hand on purpose.
std::string begin_write(const std::string &name, uint64_t lease_ms = 30000) {
  return ipc::msg::encode_request(1, ipc::msg::BeginWrite{name, lease_ms});
}
std::string commit(uint64_t lease, uint64_t flags = 0, std::optional<uint64_t> sum = std::nullopt) {
  return ipc::msg::encode_request(1, ipc::msg::Commit{lease, flags, sum, std::nullopt});
}
std::string abort_op(uint64_t lease) { return ipc::msg::encode_request(1, ipc::msg::Abort{lease}); }
std::string rollback(const std::string &name, uint64_t version) {
  return ipc::msg::encode_request(1, ipc::msg::Rollback{name, version});
}

// This test process as the kernel would name it to the daemon, and another live process.
daemon::PeerCredentials self_peer() {
  return {static_cast<uint32_t>(::getuid()), static_cast<uint32_t>(::getgid()),
          static_cast<uint32_t>(::getpid())};
}
const daemon::PeerCredentials kInit{0, 0, 1};

struct Fixture {
  test::ScopedInstance instance;
  std::optional<Registry> reg;
  std::optional<RequestHandler> handler;
  std::vector<FlipEvent> events;
  // Who sends the requests, as the server would take it from the socket's credentials.
  std::optional<daemon::PeerCredentials> peer = self_peer();

  explicit Fixture(uint32_t max_adapters = 4) {
    ipc::ArenaConfig config = test::small_config(instance.name);
    config.max_adapters = max_adapters;
    reg.emplace(test::open_registry(config));
    handler.emplace(*reg, daemon::DaemonIdentity{instance.name, "/tmp/unit", "0.1.0-test",
                                                 ipc::unix_now_ns()});
  }
  const ipc::Arena &arena() { return reg->arena(); }
  std::string raw(const std::string &request) { return handler->handle(request, peer, kT0, &events); }
  Reply call(const std::string &request) {
    Reply r = parse_reply(raw(request));
    REQUIRE(r.decoded);
    return r;
  }
  Reply must(const std::string &request) {
    Reply r = call(request);
    REQUIRE_MESSAGE(r.ok, r.message);
    return r;
  }
  // Begins a write of `name` and fills its slot with zeros; returns the lease.
  uint64_t begin_zeroed(const std::string &name) {
    Reply b = must(begin_write(name));
    std::memset(arena().data_at(b.result->uint("data_offset").value()), 0,
                b.result->uint("slot_bytes").value());
    return b.result->uint("lease").value();
  }
  uint64_t write_and_commit(const std::string &name, uint64_t flags = LF_COMMIT_CHECK_FINITE) {
    return must(commit(begin_zeroed(name), flags)).result->uint("version").value();
  }
  std::vector<std::byte> control() {
    const auto &seg = arena().control();
    return {seg.base(), seg.base() + seg.size()};
  }
  bool control_equals(const std::vector<std::byte> &snapshot) {
    return std::memcmp(snapshot.data(), arena().control().base(), snapshot.size()) == 0;
  }
};

// The state the bad requests run against: two adapters, committed versions, a write in
// progress and a reader's pin, so that there is something to damage.
void build_state(Fixture &f) {
  f.must(encode_create({.name = "alpha"}));
  f.write_and_commit("alpha");
  f.write_and_commit("alpha");
  f.must(encode_create({.name = "beta", .tensors = {{"w", "f32", {256}}}, .slots = 2,
                        .history = 0}));
  f.write_and_commit("beta");
  f.must(begin_write("beta"));  // beta has no free slot left
  const uint32_t alpha = *f.reg->find("alpha");
  ipc::ReaderEntry &e = f.arena().reader(0);
  e.owner_pid.store(static_cast<uint64_t>(::getpid()));
  e.owner_start.store(ipc::process_start_time(::getpid()));
  e.pins[0].store(ipc::pack_pin(f.arena().adapter(alpha).active.load(), alpha));
}

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

TEST_CASE("every operation works through the request handler") {
  Fixture f;
  SUBCASE("hello with the right protocol describes the daemon") {
    Reply r = f.must(hello(LF_PROTOCOL_VERSION));
    CHECK(r.id == 1);
    CHECK(r.result->uint("protocol").value() == LF_PROTOCOL_VERSION);
    CHECK(r.result->str("control_segment").value() == ipc::control_segment_name(f.instance.name));
    CHECK(r.result->str("data_segment").value() == ipc::data_segment_name(f.instance.name));
    CHECK(r.result->uint("data_bytes").value() == f.arena().data_bytes());
    CHECK(r.result->uint("max_adapters").value() == 4);
    CHECK(r.result->str("version").value() == "0.1.0-test");
  }
  SUBCASE("hello with another protocol is refused") {
    Reply r = f.call(hello(LF_PROTOCOL_VERSION + 1));
    CHECK_FALSE(r.ok);
    CHECK(r.code == LF_E_PROTOCOL_VERSION);
    CHECK(r.message.find(std::to_string(LF_PROTOCOL_VERSION + 1)) != std::string::npos);
  }
  SUBCASE("the adapter life cycle") {
    Reply created = f.must(encode_create({.name = "alpha"}));
    CHECK(created.id == 7);
    CHECK(created.result->str("name").value() == "alpha");
    CHECK(created.result->uint("slot_bytes").value() == 256 * 1024);
    CHECK(created.result->uint("slots").value() == 4);
    CHECK(created.result->uint("history").value() == 2);

    Reply listed = f.must(op("list"));
    auto adapters = listed.result->array("adapters").value();
    REQUIRE(adapters.size() == 1);
    auto first = MapView::of(*adapters[0], "adapter").value();
    CHECK(first.str("name").value() == "alpha");
    CHECK(first.uint("version").value() == 0);
    CHECK(first.uint("tensors").value() == 2);

    Reply info = f.must(named("info", "alpha"));
    CHECK(info.result->uint("version").value() == 0);
    CHECK(info.result->str("metadata").value() == "{\"step\": 0}");
    auto lora = info.result->map("lora").value();
    CHECK(lora.uint("rank").value() == 16);
    CHECK(lora.number("alpha").value() == 32.0);
    auto targets = lora.array("target_modules").value();
    REQUIRE(targets.size() == 2);
    CHECK(ipc::as_str(*targets[1], "t").value() == "v_proj");
    auto tensors = info.result->array("tensors").value();
    REQUIRE(tensors.size() == 2);
    auto t0 = MapView::of(*tensors[0], "t").value();
    CHECK(t0.str("name").value() == kA);
    CHECK(t0.str("dtype").value() == "f16");
    CHECK(t0.uint("nbytes").value() == 16 * 4096 * 2);
    CHECK(MapView::of(*tensors[1], "t").value().uint("offset").value() == 16 * 4096 * 2);
    CHECK(info.result->array("slots").value().size() == 4);

    // begin_write, write, commit with both checks.
    Reply lease = f.must(begin_write("alpha"));
    const uint64_t lease_id = lease.result->uint("lease").value();
    const uint64_t offset = lease.result->uint("data_offset").value();
    const uint64_t bytes = lease.result->uint("slot_bytes").value();
    CHECK(bytes == 256 * 1024);
    std::memset(f.arena().data_at(offset), 0x11, bytes);
    const uint64_t sum = kernels::checksum(f.arena().data_at(offset), bytes);
    Reply committed = f.must(commit(lease_id, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM, sum));
    CHECK(committed.result->uint("version").value() == 1);
    CHECK(committed.result->uint("previous").value() == 0);
    CHECK(committed.result->uint("checksum").value() == sum);
    REQUIRE(f.events.size() == 1);
    CHECK(f.events[0].adapter == "alpha");
    CHECK(f.events[0].kind == "commit");
    CHECK(f.events[0].version == 1);

    // begin_write then abort: the slot comes back.
    Reply other = f.must(begin_write("alpha"));
    f.must(abort_op(other.result->uint("lease").value()));
    Reply after_abort = f.must(named("info", "alpha"));  // owns what the views point into
    auto census = after_abort.result->map("census").value();
    CHECK(census.uint("writing").value() == 0);
    CHECK(census.uint("committed").value() == 1);

    CHECK(f.write_and_commit("alpha") == 2);
    CHECK(f.write_and_commit("alpha") == 3);
    Reply back = f.must(rollback("alpha", 1));
    CHECK(back.result->uint("version").value() == 1);
    CHECK(back.result->uint("previous").value() == 3);
    CHECK(f.events.back().kind == "rollback");
    CHECK(f.must(named("info", "alpha")).result->uint("version").value() == 1);
    CHECK(f.must(named("info", "alpha")).result->uint("last_version").value() == 3);

    Reply stats = f.must(op("stats"));
    CHECK(stats.result->uint("adapters").value() == 1);
    CHECK(stats.result->uint("data_used").value() == 4 * 256 * 1024);
    CHECK(stats.result->uint("flips").value() == 4);
    CHECK(stats.result->uint("errors").value() == 0);

    Reply dropped = f.must(named("drop_adapter", "alpha"));
    CHECK(dropped.result->uint("previous").value() == 1);
    CHECK(f.events.back().kind == "drop");
    CHECK(f.must(op("list")).result->array("adapters").value().empty());
    Reply gone = f.call(named("info", "alpha"));
    CHECK_FALSE(gone.ok);
    CHECK(gone.code == LF_E_NOT_FOUND);
  }
  SUBCASE("a request without args or id gets id 0 and works") {
    Encoder e;
    e.map(1).key("op").str("list");
    Reply r = f.must(e.take());
    CHECK(r.id == 0);
  }
  SUBCASE("integer dtype codes and dtype aliases are accepted") {
    Encoder e;
    e.map(2).key("name").str("codes").key("tensors").array(2);
    e.map(3).key("name").str("a").key("dtype").i64(LF_DTYPE_BF16).key("shape").array(1).i64(8);
    e.map(3).key("name").str("b").key("dtype").str("float32").key("shape").array(0);
    f.must(ipc::encode_request("create_adapter", 1, e.take()));
    Reply info = f.must(named("info", "codes"));
    auto tensors = info.result->array("tensors").value();
    CHECK(MapView::of(*tensors[0], "t").value().str("dtype").value() == "bf16");
    CHECK(MapView::of(*tensors[1], "t").value().str("dtype").value() == "f32");
  }
}

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
    CHECK(r.code >= LF_E_UNKNOWN_OP);
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

TEST_CASE("a lease is its writer's alone: commit and abort from another process change nothing") {
  Fixture f;
  f.must(encode_create({.name = "alpha"}));
  const uint64_t lease = f.begin_zeroed("alpha");
  const std::vector<std::byte> snapshot = f.control();
  f.peer = kInit;  // another live process, which learned the lease number somehow
  for (const std::string &request : {commit(lease), commit(lease, LF_COMMIT_CHECK_FINITE),
                                     abort_op(lease)}) {
    Reply r = f.call(request);
    CHECK_FALSE(r.ok);
    CHECK(r.code == LF_E_LEASE);
    CHECK(r.message.find("another process") != std::string::npos);
    CHECK(f.control_equals(snapshot));
  }
  CHECK(f.events.empty());
  f.peer = self_peer();  // the writer itself still commits its slot
  CHECK(f.must(commit(lease)).result->uint("version").value() == 1);
}

TEST_CASE("requests that act for a process are refused when the kernel names no sender") {
  Fixture f;
  f.must(encode_create({.name = "alpha"}));
  const std::vector<std::byte> snapshot = f.control();
  f.peer = std::nullopt;
  for (const std::string &request :
       {begin_write("alpha"), commit(1), abort_op(1),
        ipc::msg::encode_request(1, ipc::msg::OpenReader{})}) {
    Reply r = f.call(request);
    CHECK_FALSE(r.ok);
    CHECK(r.code == LF_E_PERMISSION);
    CHECK(f.control_equals(snapshot));
  }
  // Requests that act for nobody in particular are still served.
  CHECK(f.must(named("info", "alpha")).ok);
}

TEST_CASE("a commit asked again answers the version it made and flips nothing") {
  Fixture f;
  f.must(encode_create({.name = "alpha"}));
  const uint64_t lease = f.begin_zeroed("alpha");
  Reply first = f.must(commit(lease, LF_COMMIT_CHECK_FINITE));
  CHECK(first.result->uint("version").value() == 1);
  CHECK_FALSE(first.result->find("repeated"));
  REQUIRE(f.events.size() == 1);
  const std::vector<std::byte> snapshot = f.control();
  // The reply was lost (a timeout, a daemon restart): the writer asks again.
  Reply again = f.must(commit(lease, LF_COMMIT_CHECK_FINITE));
  CHECK(again.result->uint("version").value() == 1);
  CHECK(again.result->boolean("repeated").value());
  CHECK(f.events.size() == 1);
  CHECK(f.control_equals(snapshot));
  // Only its writer learns it; to anyone else the lease is unknown.
  f.peer = kInit;
  CHECK(f.call(commit(lease)).code == LF_E_LEASE);
  f.peer = self_peer();
  // Once the slot is written again the lease is gone for good.
  f.write_and_commit("alpha");
  f.write_and_commit("alpha");
  f.write_and_commit("alpha");
  f.write_and_commit("alpha");
  CHECK(f.call(commit(lease)).code == LF_E_LEASE);
}

TEST_CASE("a begin asked again with its token answers the same lease, and only that one") {
  Fixture f;
  f.must(encode_create({.name = "alpha", .slots = 4, .history = 0}));
  const auto begin = [](uint64_t token, uint64_t lease_ms = 30000) {
    return ipc::msg::encode_request(1, ipc::msg::BeginWrite{"alpha", lease_ms, token});
  };
  const uint64_t first = f.must(begin(11)).result->uint("lease").value();
  // The reply was lost; the same begin again gets the same lease, not a second slot.
  CHECK(f.must(begin(11)).result->uint("lease").value() == first);
  CHECK(f.reg->census(*f.reg->find("alpha")).writing == 1);
  // Another token is another write.
  const uint64_t second = f.must(begin(12)).result->uint("lease").value();
  CHECK(second != first);
  CHECK(f.reg->census(*f.reg->find("alpha")).writing == 2);
  // Another process with the same token learns nothing of this one's lease.
  f.peer = kInit;
  const uint64_t foreign = f.must(begin(11)).result->uint("lease").value();
  CHECK(foreign != first);
  CHECK(foreign != second);
  f.peer = self_peer();
  // A committed lease is not handed out again.
  f.must(commit(first));
  const uint64_t third = f.must(begin(11)).result->uint("lease").value();
  CHECK(third != first);
}

TEST_CASE("open_reader claims a reader entry for the sender as the kernel names it") {
  Fixture f;
  Reply r = f.must(ipc::msg::encode_request(1, ipc::msg::OpenReader{}));
  const uint64_t entry = r.result->uint("entry").value();
  CHECK(r.result->uint("owner").value() == static_cast<uint64_t>(::getpid()));
  const ipc::ReaderEntry &e = f.arena().reader(static_cast<uint32_t>(entry));
  CHECK(e.owner_pid.load() == static_cast<uint64_t>(::getpid()));
  CHECK(e.owner_start.load() == ipc::process_start_time(::getpid()));
  // Another process gets another entry.
  f.peer = kInit;
  Reply other = f.must(ipc::msg::encode_request(2, ipc::msg::OpenReader{}));
  CHECK(other.result->uint("entry").value() != entry);
  CHECK(other.result->uint("owner").value() == 1);
}

TEST_CASE("strings that are not UTF-8 or hold NUL are refused wherever they appear, never echoed") {
  Fixture f;
  f.must(encode_create({.name = "alpha"}));
  const std::vector<std::byte> snapshot = f.control();
  const std::string cut("caf\xc3", 4), lone("\xff", 1), surrogate("\xed\xa0\x80", 3),
      overlong("\xc0\xaf", 2), nul("a\0b", 3);
  for (const std::string &text : {cut, lone, surrogate, overlong, nul}) {
    CAPTURE(text.size());
    const std::vector<std::string> requests = {
        op(text),
        named("info", text),
        encode_create({.name = text}),
        encode_create({.name = "delta", .tensors = {{text, "f16", {4}}}}),
        encode_create({.name = "delta", .tensors = {{"w", text, {4}}}}),
        encode_create({.name = "delta", .placement = text}),
        encode_create({.name = "delta", .metadata = text}),
        ipc::encode_request("create_adapter", 1, [&] {
          Encoder e;
          e.map(3).key("name").str("delta").key("tensors").array(1).map(3).key("name").str("w")
              .key("dtype").str("f16").key("shape").array(1).i64(4);
          e.key("lora").map(1).key("target_modules").array(2).str("q_proj").str(text);
          return e.take();
        }()),
        ipc::encode_request("create_adapter", 1, [&] {
          Encoder e;
          e.map(3).key("name").str("delta").key("tensors").array(1).map(3).key("name").str("w")
              .key("dtype").str("f16").key("shape").array(1).i64(4);
          e.key("lora").map(1).key("target_modules").str(text);
          return e.take();
        }()),
    };
    for (const std::string &request : requests) {
      Reply r = f.call(request);
      CHECK_FALSE(r.ok);
      CHECK(r.code == LF_E_INVALID_ARGUMENT);
      CHECK(ipc::check_text(r.message).ok());  // the reply never carries the bad bytes
      CHECK(f.control_equals(snapshot));
    }
  }
  // Valid UTF-8 beyond ASCII is kept as it is.
  f.must(encode_create({.name = "delta", .metadata = "caf\xc3\xa9 \xe2\x9c\x93"}));
  CHECK(f.must(named("info", "delta")).result->str("metadata").value() ==
        "caf\xc3\xa9 \xe2\x9c\x93");
}

TEST_CASE("a request over a decoding limit is answered under its own id") {
  Fixture f;
  Encoder e;
  e.map(2).key("name").str("many").key("tensors").array(70000);
  for (int i = 0; i < 70000; ++i) e.u64(0);
  Reply r = f.call(ipc::encode_request("create_adapter", 4242, e.take()));
  CHECK_FALSE(r.ok);
  CHECK(r.code == LF_E_TOO_LARGE);
  CHECK(r.id == 4242);
  // An id in a signed encoding (int 8: D0 2A) is the same id to the scanner and the decoder.
  Reply signed_id = f.call([] {
    Encoder e;
    e.map(3).key("op").str("list").key("id");
    e.pk().pack_fix_int8(42);
    e.key("args");  // then nested past the decoding limit: refused before any decoding
    return e.take() + std::string(100, '\x91') + "\xc0";
  }());
  CHECK(signed_id.code == LF_E_TOO_LARGE);
  CHECK(signed_id.id == 42);
  // Nested deeper than the limit after the id, and after that garbage: the id still comes back.
  std::string deep = ipc::encode_request("list", 77, std::string(100, '\x91') + "\xc0");
  Reply d = f.call(deep);
  CHECK(d.code == LF_E_TOO_LARGE);
  CHECK(d.id == 77);
}

TEST_CASE("unknown fields and fields given twice are refused in every message") {
  Fixture f;
  f.must(encode_create({.name = "alpha"}));
  Reply unknown = f.call(op("list", [](Encoder &e) { e.map(1).key("verbose").boolean(true); }));
  CHECK(unknown.code == LF_E_PROTOCOL);
  CHECK(unknown.message.find("verbose") != std::string::npos);
  Reply envelope = f.call([] {
    Encoder e;
    e.map(3).key("op").str("list").key("id").u64(3).key("trace").boolean(true);
    return e.take();
  }());
  CHECK(envelope.code == LF_E_PROTOCOL);
  CHECK(envelope.id == 3);
  Reply twice = f.call(op("info", [](Encoder &e) {
    e.map(2).key("name").str("alpha").key("name").str("alpha");
  }));
  CHECK(twice.code == LF_E_PROTOCOL);
  CHECK(twice.message.find("twice") != std::string::npos);
}

TEST_CASE("create_adapter on a full adapter table is refused with LF_E_TABLE_FULL") {
  Fixture f(/*max_adapters=*/2);
  f.must(encode_create({.name = "a1"}));
  f.must(encode_create({.name = "a2"}));
  const std::vector<std::byte> snapshot = f.control();
  Reply r = f.call(encode_create({.name = "a3"}));
  CHECK_FALSE(r.ok);
  CHECK(r.code == LF_E_TABLE_FULL);
  CHECK(f.control_equals(snapshot));
}

TEST_CASE("the handler survives random bytes and mutated requests without changing state on errors") {
  Fixture f;
  build_state(f);
  std::vector<std::string> corpus = {
      hello(LF_PROTOCOL_VERSION), op("list"), op("stats"), named("info", "alpha"),
      named("info", "beta"), encode_create({.name = "delta"}),
      encode_create({.name = "eps", .tensors = {{"w", "bf16", {8, 8}}}, .slots = 3, .history = 1}),
      begin_write("alpha"), commit(1, 3, 12345), commit(2), abort_op(3), rollback("alpha", 1),
      named("drop_adapter", "beta"),
  };
  std::mt19937_64 rng(2024);
  auto mutate = [&](std::string s) {
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits; ++k) {
      switch (rng() % 6) {
        case 0:  // flip a byte
          if (!s.empty()) s[rng() % s.size()] = static_cast<char>(rng());
          break;
        case 1:  // flip a bit
          if (!s.empty()) s[rng() % s.size()] ^= static_cast<char>(1 << (rng() % 8));
          break;
        case 2:  // insert bytes
          s.insert(rng() % (s.size() + 1), std::string(1 + rng() % 4, static_cast<char>(rng())));
          break;
        case 3:  // delete bytes
          if (!s.empty()) s.erase(rng() % s.size(), 1 + rng() % 4);
          break;
        case 4:  // truncate
          s.resize(rng() % (s.size() + 1));
          break;
        case 5: {  // splice in a piece of another request
          const std::string &o = corpus[rng() % corpus.size()];
          const size_t from = rng() % o.size();
          s.insert(rng() % (s.size() + 1), o.substr(from, rng() % 16));
          break;
        }
      }
    }
    return s;
  };
  // A commit that fails after finding its lease ends that lease (the writer is told to stop);
  // that is the one documented change an error reply may make.
  auto ends_a_lease = [](const std::string &request, const Reply &r) {
    if (r.code != LF_E_LEASE && r.code != LF_E_VALIDATION) return false;
    auto oh = ipc::decode(request.data(), request.size());
    if (!oh) return false;
    auto m = MapView::of(oh->get(), "request");
    return m && m->str("op").ok() && m->str("op").value() == "commit";
  };

  std::vector<std::byte> snapshot = f.control();
  int errors = 0, oks = 0;
  auto run = [&](const std::string &request) {
    std::string bytes;
    REQUIRE_NOTHROW(bytes = f.raw(request));
    Reply r = parse_reply(bytes);
    if (!r.decoded) {
      std::string hex;
      for (unsigned char c : request) hex += "0123456789abcdef"[c >> 4], hex += "0123456789abcdef"[c & 15];
      auto d = ipc::decode(bytes.data(), bytes.size());
      FAIL("undecodable reply of " << bytes.size() << " bytes ("
           << (d ? ipc::to_json(d->get()).substr(0, 300) : d.error().message) << ") to " << hex);
    }
    if (r.ok) {
      ++oks;
    } else {
      ++errors;
      REQUIRE(r.code < 0);
      REQUIRE(r.code >= LF_E_UNKNOWN_OP);
      if (!ends_a_lease(request, r) && !f.control_equals(snapshot)) {
        std::string hex;
        for (unsigned char c : request) hex += "0123456789abcdef"[c >> 4], hex += "0123456789abcdef"[c & 15];
        FAIL("an error reply (" << r.code << ": " << r.message << ") changed the state; request "
                                << hex);
      }
    }
    if (r.ok || ends_a_lease(request, r)) snapshot = f.control();
  };
  for (int i = 0; i < 20000; ++i) {
    std::string s(rng() % 96, '\0');
    for (char &c : s) c = static_cast<char>(rng());
    // Half of them start like a map, to get past the first byte more often.
    if (!s.empty() && (i & 1)) s[0] = static_cast<char>(0x80 | (rng() % 4));
    run(s);
  }
  for (int i = 0; i < 20000; ++i) run(mutate(corpus[rng() % corpus.size()]));
  MESSAGE(oks << " ok replies, " << errors << " error replies");
  CHECK(errors > 30000);
  CHECK(f.must(hello(LF_PROTOCOL_VERSION)).ok);
}
