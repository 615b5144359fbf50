// Shared by the registry's unit tests (test_registry, test_reclaim, test_restart): an open
// registry over a fresh arena and the steps the tests repeat (create spec, begin, fill, publish,
// pin). Test-only; each test file includes it once and says `using namespace registry_fixture;`.
#pragma once

#include <doctest/doctest.h>

#include <optional>
#include <set>
#include <string>
#include <unistd.h>

#include "daemon/registry.hpp"
#include "support.hpp"

namespace registry_fixture {

using namespace loraflip;
using daemon::BeginRequest;
using daemon::CommitRequest;
using daemon::CreateRequest;
using daemon::Lease;
using daemon::Registry;

inline constexpr uint64_t kT0 = 1'000'000'000'000ULL;  // an arbitrary "now" on the monotonic clock
inline constexpr uint64_t kMs = 1'000'000ULL;

// An open registry over a fresh arena, removed at the end of the test.
struct Fixture {
  test::ScopedInstance instance;
  std::optional<Registry> reg;

  explicit Fixture(uint32_t max_adapters = 8, uint64_t data_bytes = uint64_t{4} << 20) {
    ipc::ArenaConfig config = test::small_config(instance.name);
    config.max_adapters = max_adapters;
    config.data_bytes = data_bytes;
    reg.emplace(test::open_registry(config));
  }
  Registry &r() { return *reg; }
  const ipc::Arena &arena() { return reg->arena(); }
  ipc::AdapterRecord &record(const std::string &name) {
    auto index = reg->find(name);
    REQUIRE(index.has_value());
    return arena().adapter(*index);
  }
  uint64_t active(const std::string &name) { return record(name).active.load(); }
};

// A small LoRA pair: A is f32 [4, 64] (1 KiB), B is f16 [64, 4] (512 B): one page per slot.
inline CreateRequest spec(const std::string &name, uint32_t slots = 0, int32_t history = -1) {
  CreateRequest q;
  q.name = name;
  q.tensors = {{"base_model.model.layers.0.q_proj.lora_A.weight", LF_DTYPE_F32, {4, 64}},
               {"base_model.model.layers.0.q_proj.lora_B.weight", LF_DTYPE_F16, {64, 4}}};
  q.rank = 4;
  q.alpha = 8;
  q.target_modules = "q_proj";
  q.slots = slots;
  q.history = history;
  return q;
}

// This test process, as the daemon would name it from the socket's credentials.
inline daemon::Requester self() {
  return {static_cast<uint64_t>(::getpid()), ipc::process_start_time(::getpid())};
}

inline BeginRequest begin_req(const std::string &name, uint64_t lease_ms = 30000) {
  return BeginRequest{name, lease_ms, self()};
}

// Fills the slot of `lease` with finite values derived from `seed`.
inline void fill(Fixture &f, const Lease &lease, float seed) {
  const ipc::AdapterRecord &r = f.arena().adapter(lease.adapter);
  const ipc::TensorDesc *d = f.arena().tensors(r);
  auto *a = reinterpret_cast<float *>(f.arena().data_at(lease.data_offset + d[0].offset));
  for (uint64_t i = 0; i < d[0].nbytes / 4; ++i) a[i] = seed + static_cast<float>(i);
  auto *b = reinterpret_cast<uint16_t *>(f.arena().data_at(lease.data_offset + d[1].offset));
  for (uint64_t i = 0; i < d[1].nbytes / 2; ++i) b[i] = 0x3C00;  // 1.0 in f16
}

inline Lease begin(Fixture &f, const std::string &name, uint64_t now = kT0) {
  Result<Lease> lease = f.r().begin_write(begin_req(name), now);
  REQUIRE_MESSAGE(lease.ok(), test::why(lease));
  return lease.value();
}

// begin, fill, commit: returns the new version.
inline uint64_t publish(Fixture &f, const std::string &name, uint64_t now = kT0) {
  const Lease lease = begin(f, name, now);
  fill(f, lease, 1.0f);
  auto flip = f.r().commit(CommitRequest{lease.id, 0, std::nullopt, std::nullopt, self()}, now);
  REQUIRE_MESSAGE(flip.ok(), test::why(flip));
  return flip->version;
}

inline void pin(Fixture &f, uint32_t reader, uint32_t cell, uint64_t active_word, uint32_t adapter,
         uint64_t pid = static_cast<uint64_t>(::getpid()), uint64_t start = 0) {
  ipc::ReaderEntry &e = f.arena().reader(reader);
  e.owner_pid.store(pid);
  e.owner_start.store(start != 0 ? start : ipc::process_start_time(static_cast<pid_t>(pid)));
  e.pins[cell].store(ipc::pack_pin(active_word, adapter));
}

inline void unpin(Fixture &f, uint32_t reader, uint32_t cell) { f.arena().reader(reader).pins[cell].store(0); }

inline std::set<uint64_t> committed_versions(const ipc::AdapterRecord &r) {
  std::set<uint64_t> out;
  for (uint32_t s = 0; s < r.slot_count; ++s) {
    const uint64_t w = r.slots[s].word.load();
    if (ipc::slot_word_state(w) == ipc::SlotState::kCommitted) out.insert(ipc::slot_word_version(w));
  }
  return out;
}

}  // namespace registry_fixture
