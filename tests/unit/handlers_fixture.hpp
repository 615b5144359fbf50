// Shared by the request handler's unit tests (test_handlers, test_handlers_leases,
// test_handlers_bad_requests, test_handlers_messages): a RequestHandler over a fresh registry,
// the replies it gives parsed back, the requests the tests send, and a state worth damaging.
// Test-only; each test file includes it once and says `using namespace handlers_fixture;`.
#pragma once

#include <doctest/doctest.h>

#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <unistd.h>
#include <vector>

#include "daemon/handlers.hpp"
#include "ipc/messages.hpp"
#include "support.hpp"

namespace handlers_fixture {

using namespace loraflip;
using daemon::FlipEvent;
using daemon::Registry;
using daemon::RequestHandler;
using ipc::Encoder;
using ipc::MapView;

inline constexpr uint64_t kT0 = 1'000'000'000'000ULL;
inline const std::string kA = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
inline const std::string kB = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

struct Reply {
  msgpack::object_handle oh;
  bool decoded = false;
  bool ok = false;
  uint64_t id = 0;
  int64_t code = 0;
  std::string message;
  std::optional<MapView> result;
};

inline Reply parse_reply(const std::string &bytes) {
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

inline std::string encode_create(const CreateArgs &c) {
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

inline std::string op(const std::string &name, const std::function<void(Encoder &)> &args = nullptr,
               uint64_t id = 1) {
  Encoder e;
  if (args) args(e);
  else e.map(0);
  return ipc::encode_request(name, id, e.take());
}

inline std::string hello(uint64_t protocol) {
  return op("hello", [&](Encoder &e) { e.map(1).key("protocol").u64(protocol); });
}
inline std::string named(const std::string &o, const std::string &name) {
  return op(o, [&](Encoder &e) { e.map(1).key("name").str(name); });
}
// Well-formed requests come from the messages' one declaration (ipc/messages.hpp); the bad
// ones below are written by hand on purpose.
inline std::string begin_write(const std::string &name, uint64_t lease_ms = 30000) {
  return ipc::msg::encode_request(1, ipc::msg::BeginWrite{name, lease_ms});
}
inline std::string commit(uint64_t lease, uint64_t flags = 0, std::optional<uint64_t> sum = std::nullopt) {
  return ipc::msg::encode_request(1, ipc::msg::Commit{lease, flags, sum, std::nullopt});
}
inline std::string abort_op(uint64_t lease) { return ipc::msg::encode_request(1, ipc::msg::Abort{lease}); }
inline std::string rollback(const std::string &name, uint64_t version) {
  return ipc::msg::encode_request(1, ipc::msg::Rollback{name, version});
}

// This test process as the kernel would name it to the daemon, and another live process.
inline daemon::PeerCredentials self_peer() {
  return {static_cast<uint32_t>(::getuid()), static_cast<uint32_t>(::getgid()),
          static_cast<uint32_t>(::getpid())};
}
inline const daemon::PeerCredentials kInit{0, 0, 1};

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
inline void build_state(Fixture &f) {
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

}  // namespace handlers_fixture
