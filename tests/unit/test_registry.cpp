// daemon/registry: create, write, commit, history, pins, leases, drop and device checks.
// Reclamation is tested in test_reclaim.cpp, restart in test_restart.cpp.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon/registry.hpp"
#include "kernels/validate.hpp"
#include "registry_fixture.hpp"
#include "support.hpp"

using namespace registry_fixture;

TEST_CASE("create gives an adapter history + 2 slots by default and stores its schema") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha")).ok());
  const ipc::AdapterRecord &r = f.record("alpha");
  CHECK(r.history_depth == 2);  // the arena default
  CHECK(r.slot_count == 4);
  CHECK(r.slot_bytes == 4096);
  CHECK(r.tensor_count == 2);
  CHECK(r.active.load() == 0);
  CHECK(r.last_version == 0);
  CHECK(r.lora.rank == 4);
  CHECK(std::string(f.arena().pool_string(r.lora.target_modules_offset)) == "q_proj");
  const ipc::TensorDesc *d = f.arena().tensors(r);
  CHECK(std::string(d[0].name) == "base_model.model.layers.0.q_proj.lora_A.weight");
  CHECK(d[1].offset == 1024);
  CHECK(d[1].nbytes == 512);
  CHECK(f.r().data_allocator().used() == 4 * 4096);

  REQUIRE(f.r().create(spec("beta", 0, 5)).ok());
  CHECK(f.record("beta").slot_count == 7);
  CHECK(f.record("beta").history_depth == 5);
  REQUIRE(f.r().create(spec("gamma", 9, 0)).ok());
  CHECK(f.record("gamma").slot_count == 9);
  // Slots of different adapters never overlap.
  CHECK(f.record("beta").data_offset >= f.record("alpha").data_offset + 4 * 4096);
}

TEST_CASE("create refuses a name that exists, bad names and slot counts out of range") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha")).ok());
  const uint64_t used = f.r().data_allocator().used(), pool = f.r().pool_allocator().used();
  CHECK(f.r().create(spec("alpha")).code() == LF_E_EXISTS);
  CHECK(f.r().create(spec("-bad")).code() == LF_E_INVALID_ARGUMENT);
  CHECK(f.r().create(spec("")).code() == LF_E_INVALID_ARGUMENT);
  CHECK(f.r().create(spec("b", 3, 2)).code() == LF_E_INVALID_ARGUMENT);   // < history + 2
  CHECK(f.r().create(spec("b", 65, 2)).code() == LF_E_INVALID_ARGUMENT);  // > kMaxSlots
  CHECK(f.r().create(spec("b", 0, 63)).code() == LF_E_INVALID_ARGUMENT);  // 65 slots
  CHECK(f.r().create(spec("b", 0, INT32_MAX)).code() == LF_E_INVALID_ARGUMENT);
  CreateRequest rank = spec("b");
  rank.rank = 70000;
  CHECK(rank.rank > 65536);
  CHECK(f.r().create(rank).code() == LF_E_INVALID_ARGUMENT);
  CreateRequest meta = spec("b");
  meta.metadata.assign(65537, 'm');
  CHECK(f.r().create(meta).code() == LF_E_TOO_LARGE);
  CreateRequest none = spec("b");
  none.tensors.clear();
  CHECK(f.r().create(none).code() == LF_E_INVALID_ARGUMENT);
  CHECK(f.r().data_allocator().used() == used);
  CHECK(f.r().pool_allocator().used() == pool);
  CHECK(f.r().live_adapters().size() == 1);
}

TEST_CASE("create refuses a new adapter once max_adapters are in the table") {
  Fixture f(/*max_adapters=*/2);
  REQUIRE(f.r().create(spec("a1")).ok());
  REQUIRE(f.r().create(spec("a2")).ok());
  const uint64_t used = f.r().data_allocator().used();
  CHECK(f.r().create(spec("a3")).code() == LF_E_TABLE_FULL);
  CHECK(f.r().data_allocator().used() == used);
  // A dropped adapter's record is free again only once reap() gives its memory back.
  REQUIRE(f.r().drop("a1").ok());
  CHECK(f.r().create(spec("a3")).code() == LF_E_TABLE_FULL);
  CHECK(f.r().reap(kT0).adapters_freed == 1);
  CHECK(f.r().create(spec("a3")).ok());
}

TEST_CASE("create refuses an adapter that does not fit the data arena") {
  Fixture f;  // 4 MiB of data
  auto big = [](const std::string &name, int64_t floats, uint32_t slots) {
    CreateRequest q = spec(name, slots, 0);
    q.tensors = {{"w", LF_DTYPE_F32, {floats}}};
    return q;
  };
  // 2 slots of 3 MiB can never fit.
  CHECK(f.r().create(big("x", 3 << 18, 2)).code() == LF_E_ARENA_FULL);
  // A slot larger than the arena is "too large", not "full".
  CHECK(f.r().create(big("x", 2 << 20, 2)).code() == LF_E_TOO_LARGE);
  CHECK(f.r().data_allocator().used() == 0);
  // 2 slots of 1.5 MiB fit once; the second copy finds 1 MiB left.
  REQUIRE(f.r().create(big("x", 3 << 17, 2)).ok());
  const uint64_t used = f.r().data_allocator().used(), pool = f.r().pool_allocator().used();
  CHECK(used == 3 << 20);
  const Status full = f.r().create(big("y", 3 << 17, 2));
  CHECK(full.code() == LF_E_ARENA_FULL);
  CHECK(f.r().data_allocator().used() == used);
  CHECK(f.r().pool_allocator().used() == pool);  // the pool reservation was given back
  CHECK_FALSE(f.r().find("y").has_value());
}

TEST_CASE("create refuses an adapter whose descriptors do not fit the pool") {
  Fixture f;  // 64 KiB of pool: about 190 descriptors
  CreateRequest q = spec("many", 0, 0);
  q.tensors.clear();
  for (int i = 0; i < 400; ++i) q.tensors.push_back({"t" + std::to_string(i), LF_DTYPE_U8, {1}});
  CHECK(f.r().create(q).code() == LF_E_ARENA_FULL);
  CHECK(f.r().pool_allocator().used() == 0);
  CHECK(f.r().data_allocator().used() == 0);
}

TEST_CASE("commit flips the active word to (version, slot) and versions strictly increase") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha")).ok());
  const uint32_t seq0 = f.arena().header().flip_seq.load();
  uint64_t previous = 0;
  for (int i = 0; i < 20; ++i) {
    const Lease lease = begin(f, "alpha");
    if (previous != 0) CHECK(lease.slot != ipc::active_slot(f.active("alpha")));
    fill(f, lease, static_cast<float>(i));
    auto flip = f.r().commit(CommitRequest{lease.id, 0, std::nullopt, std::nullopt, self()}, kT0);
    REQUIRE_MESSAGE(flip.ok(), test::why(flip));
    CHECK(flip->version == previous + 1);
    CHECK(flip->previous == previous);
    CHECK(flip->kind == "commit");
    CHECK(flip->adapter == "alpha");
    CHECK(f.active("alpha") == ipc::pack_active(flip->version, lease.slot));
    CHECK(f.record("alpha").last_version == flip->version);
    CHECK(f.record("alpha").slots[lease.slot].word.load() ==
          ipc::pack_slot_word(flip->version, ipc::SlotState::kCommitted));
    previous = flip->version;
  }
  CHECK(f.record("alpha").commits.load() == 20);
  CHECK(f.arena().header().flip_seq.load() == seq0 + 20);
}

TEST_CASE("a commit takes a chosen version only above the newest, and a refused one ends the lease") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha")).ok());
  Lease lease = begin(f, "alpha");
  auto flip = f.r().commit(CommitRequest{lease.id, 0, std::nullopt, std::nullopt, self(), 17}, kT0);
  REQUIRE_MESSAGE(flip.ok(), test::why(flip));
  CHECK(flip->version == 17);
  CHECK(f.record("alpha").last_version == 17);
  for (uint64_t bad : {uint64_t{17}, uint64_t{2}, uint64_t{0}, ipc::kMaxVersion + 1}) {
    CAPTURE(bad);
    lease = begin(f, "alpha");
    auto refused =
        f.r().commit(CommitRequest{lease.id, 0, std::nullopt, std::nullopt, self(), bad}, kT0);
    REQUIRE(!refused.ok());
    CHECK(refused.error().code == LF_E_INVALID_ARGUMENT);
    CHECK(ipc::active_version(f.active("alpha")) == 17);
    CHECK(f.record("alpha").last_version == 17);
    // The lease ended: asking again finds no lease.
    auto again = f.r().commit(CommitRequest{lease.id, 0, std::nullopt, std::nullopt, self()}, kT0);
    REQUIRE(!again.ok());
    CHECK(again.error().code == LF_E_LEASE);
  }
  // Without a number, the next one.
  CHECK(publish(f, "alpha") == 18);
}

TEST_CASE("history keeps exactly `history` committed versions besides the active one") {
  for (int32_t history : {0, 1, 2, 5}) {
    Fixture f;
    REQUIRE(f.r().create(spec("alpha", 0, history)).ok());
    for (int i = 1; i <= 12; ++i) {
      const uint64_t v = publish(f, "alpha");
      std::set<uint64_t> expect;
      for (uint64_t k = v > static_cast<uint64_t>(history) ? v - history : 1; k <= v; ++k)
        expect.insert(k);
      REQUIRE_MESSAGE(committed_versions(f.record("alpha")) == expect,
                      "history " << history << " after version " << v);
      const auto census = f.r().census(*f.r().find("alpha"));
      CHECK(census.committed == expect.size());
      CHECK(census.free == f.record("alpha").slot_count - expect.size());
    }
  }
}

TEST_CASE("begin_write never hands out a slot that a reader pins") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha", 3, 0)).ok());  // history 0: old versions are freed at once
  const uint32_t idx = *f.r().find("alpha");
  const Lease first = begin(f, "alpha");
  fill(f, first, 1);
  REQUIRE(f.r().commit({first.id, 0, std::nullopt, std::nullopt, self()}, kT0).ok());
  const uint64_t v1_word = f.active("alpha");
  pin(f, 0, 3, v1_word, idx);  // a reader holds version 1
  publish(f, "alpha");         // version 2 elsewhere: version 1's slot is free but pinned
  CHECK(ipc::slot_word_state(f.record("alpha").slots[first.slot].word.load()) ==
        ipc::SlotState::kFree);
  CHECK(f.r().census(idx).pinned == 1);

  const Lease other = begin(f, "alpha");
  CHECK(other.slot != first.slot);
  CHECK(other.slot != ipc::active_slot(f.active("alpha")));
  Result<Lease> none = f.r().begin_write(begin_req("alpha"), kT0);
  REQUIRE_FALSE(none.ok());
  CHECK(none.error().code == LF_E_NO_FREE_SLOT);
  CHECK(none.error().message.find("1 pinned") != std::string::npos);
  CHECK(f.r().pins_held() == 1);

  unpin(f, 0, 3);
  const Lease reused = begin(f, "alpha");
  CHECK(reused.slot == first.slot);
}

TEST_CASE("a pin of another adapter or of an empty cell does not block a slot") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha", 2, 0)).ok());
  REQUIRE(f.r().create(spec("beta", 2, 0)).ok());
  const uint32_t a = *f.r().find("alpha"), b = *f.r().find("beta");
  publish(f, "alpha");
  const uint64_t w = f.active("alpha");
  publish(f, "alpha");  // version 1's slot is free now
  pin(f, 1, 0, w, b);   // same slot and version, but beta's
  CHECK(f.r().begin_write(begin_req("alpha"), kT0).ok());
  CHECK(f.r().census(a).pinned == 0);
}

TEST_CASE("rollback flips back to a kept version, keeps its number, and later commits go above") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha", 0, 2)).ok());
  const uint64_t v1 = publish(f, "alpha");
  const uint32_t v1_slot = ipc::active_slot(f.active("alpha"));
  publish(f, "alpha");
  const uint64_t v3 = publish(f, "alpha");
  REQUIRE(v3 == 3);

  auto back = f.r().rollback("alpha", v1);
  REQUIRE_MESSAGE(back.ok(), test::why(back));
  CHECK(back->version == 1);
  CHECK(back->previous == 3);
  CHECK(back->kind == "rollback");
  CHECK(f.active("alpha") == ipc::pack_active(1, v1_slot));
  CHECK(committed_versions(f.record("alpha")) == std::set<uint64_t>{1, 2, 3});
  CHECK(f.record("alpha").rollbacks.load() == 1);

  // Rolling back to the active version changes nothing.
  auto same = f.r().rollback("alpha", 1);
  REQUIRE(same.ok());
  CHECK(f.record("alpha").rollbacks.load() == 1);

  const uint64_t v4 = publish(f, "alpha");
  CHECK(v4 == 4);  // above last_version, not above the active one
  // Kept: active 4, then 3 and 2; version 1 was evicted.
  CHECK(committed_versions(f.record("alpha")) == std::set<uint64_t>{2, 3, 4});
  auto gone = f.r().rollback("alpha", 1);
  REQUIRE_FALSE(gone.ok());
  CHECK(gone.error().code == LF_E_NO_VERSION);
  CHECK(f.r().rollback("alpha", 99).error().code == LF_E_NO_VERSION);
  CHECK(f.r().rollback("alpha", 0).error().code == LF_E_NO_VERSION);
  CHECK(f.r().rollback("nobody", 1).error().code == LF_E_NOT_FOUND);
  CHECK(ipc::active_version(f.active("alpha")) == 4);
}

TEST_CASE("abort gives the slot back and ends the lease") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha")).ok());
  const uint32_t idx = *f.r().find("alpha");
  const Lease lease = begin(f, "alpha");
  CHECK(f.r().census(idx).writing == 1);
  CHECK(f.r().abort(lease.id, self()).ok());
  CHECK(f.r().census(idx).writing == 0);
  CHECK(f.r().census(idx).free == 4);
  CHECK(f.record("alpha").aborts.load() == 1);
  CHECK(f.r().abort(lease.id, self()).code() == LF_E_LEASE);
  CHECK(f.r().commit({lease.id, 0, std::nullopt, std::nullopt, self()}, kT0).error().code == LF_E_LEASE);
  CHECK(begin(f, "alpha").slot == lease.slot);
  CHECK(f.active("alpha") == 0);
}

TEST_CASE("commit refuses an unknown lease, unknown flags and begin_write bad arguments") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha")).ok());
  const Lease lease = begin(f, "alpha");
  CHECK(f.r().commit({lease.id + 1000, 0, std::nullopt, std::nullopt, self()}, kT0).error().code == LF_E_LEASE);
  CHECK(f.r().commit({0, 0, std::nullopt, std::nullopt, self()}, kT0).error().code == LF_E_LEASE);
  CHECK(f.r().commit({lease.id, 4, std::nullopt, std::nullopt, self()}, kT0).error().code == LF_E_INVALID_ARGUMENT);
  CHECK(f.r().abort(0, self()).code() == LF_E_LEASE);
  // The refused calls did not end the real lease.
  CHECK(f.r().commit({lease.id, 0, std::nullopt, std::nullopt, self()}, kT0).ok());

  BeginRequest q = begin_req("alpha");
  q.writer.pid = 0;
  CHECK(f.r().begin_write(q, kT0).error().code == LF_E_INVALID_ARGUMENT);
  q = begin_req("alpha");
  q.lease_ms = 0;
  CHECK(f.r().begin_write(q, kT0).error().code == LF_E_INVALID_ARGUMENT);
  CHECK(f.r().begin_write(begin_req("nobody"), kT0).error().code == LF_E_NOT_FOUND);
}

TEST_CASE("lease ids never repeat") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha")).ok());
  std::set<uint64_t> ids;
  for (int i = 0; i < 20; ++i) {
    const Lease l = begin(f, "alpha");
    CHECK(ids.insert(l.id).second);
    REQUIRE(f.r().abort(l.id, self()).ok());
  }
}

TEST_CASE("commit after the lease deadline fails with LF_E_LEASE and leaves the active version") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha")).ok());
  publish(f, "alpha");
  const uint64_t before = f.active("alpha");
  Result<Lease> lease = f.r().begin_write(begin_req("alpha", 10), kT0);
  REQUIRE(lease.ok());
  fill(f, lease.value(), 2);
  // Exactly at the deadline is still in time; one nanosecond later is not.
  SUBCASE("late") {
    auto late = f.r().commit({lease->id, 0, std::nullopt, std::nullopt, self()}, kT0 + 10 * kMs + 1);
    REQUIRE_FALSE(late.ok());
    CHECK(late.error().code == LF_E_LEASE);
    CHECK(f.active("alpha") == before);
    CHECK(f.r().census(*f.r().find("alpha")).writing == 0);
    CHECK(f.r().commit({lease->id, 0, std::nullopt, std::nullopt, self()}, kT0).error().code == LF_E_LEASE);
  }
  SUBCASE("on time") {
    CHECK(f.r().commit({lease->id, 0, std::nullopt, std::nullopt, self()}, kT0 + 10 * kMs).ok());
  }
}

TEST_CASE("LF_COMMIT_CHECK_FINITE refuses a NaN and leaves the active version and the slot free") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha")).ok());
  const uint32_t idx = *f.r().find("alpha");
  publish(f, "alpha");
  const uint64_t before = f.active("alpha");
  const ipc::TensorDesc *d = f.arena().tensors(f.record("alpha"));

  SUBCASE("NaN in the f32 tensor") {
    const Lease lease = begin(f, "alpha");
    fill(f, lease, 3);
    reinterpret_cast<float *>(f.arena().data_at(lease.data_offset + d[0].offset))[37] = NAN;
    // Without the check the commit would go through; with it, it is refused.
    auto bad = f.r().commit({lease.id, LF_COMMIT_CHECK_FINITE, std::nullopt, std::nullopt, self()}, kT0);
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().code == LF_E_VALIDATION);
    CHECK(bad.error().message == "tensor 'base_model.model.layers.0.q_proj.lora_A.weight' holds "
                                 "NaN at element 37 (f32 bits 0x7fc00000)");
    CHECK(f.active("alpha") == before);
    CHECK(f.record("alpha").last_version == 1);
    CHECK(f.r().census(idx).writing == 0);
    CHECK(begin(f, "alpha").slot == lease.slot);  // reusable at once
  }
  SUBCASE("infinity in the f16 tensor") {
    const Lease lease = begin(f, "alpha");
    fill(f, lease, 3);
    reinterpret_cast<uint16_t *>(f.arena().data_at(lease.data_offset + d[1].offset))[0] = 0x7C00;
    CHECK(f.r().commit({lease.id, LF_COMMIT_CHECK_FINITE, std::nullopt, std::nullopt, self()}, kT0).error().code ==
          LF_E_VALIDATION);
    CHECK(f.active("alpha") == before);
  }
  SUBCASE("finite data passes, and the next version follows the last one") {
    const Lease lease = begin(f, "alpha");
    fill(f, lease, 3);
    auto ok = f.r().commit({lease.id, LF_COMMIT_CHECK_FINITE, std::nullopt, std::nullopt, self()}, kT0);
    REQUIRE(ok.ok());
    CHECK(ok->version == 2);
  }
  SUBCASE("a NaN is accepted when the check is not asked for") {
    const Lease lease = begin(f, "alpha");
    fill(f, lease, 3);
    reinterpret_cast<float *>(f.arena().data_at(lease.data_offset + d[0].offset))[0] = NAN;
    CHECK(f.r().commit({lease.id, 0, std::nullopt, std::nullopt, self()}, kT0).ok());
  }
}

TEST_CASE("LF_COMMIT_CHECKSUM refuses a wrong writer checksum and accepts the right one") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha")).ok());
  publish(f, "alpha");
  const uint64_t before = f.active("alpha");
  const Lease lease = begin(f, "alpha");
  fill(f, lease, 5);
  const uint64_t sum = kernels::checksum(f.arena().data_at(lease.data_offset), lease.slot_bytes);
  auto wrong = f.r().commit({lease.id, LF_COMMIT_CHECKSUM, sum + 1, std::nullopt, self()}, kT0);
  REQUIRE_FALSE(wrong.ok());
  CHECK(wrong.error().code == LF_E_VALIDATION);
  CHECK(f.active("alpha") == before);

  const Lease again = begin(f, "alpha");
  fill(f, again, 5);
  auto right = f.r().commit({again.id, LF_COMMIT_CHECKSUM | LF_COMMIT_CHECK_FINITE, sum, std::nullopt, self()}, kT0);
  REQUIRE_MESSAGE(right.ok(), test::why(right));
  CHECK(right->checksum == sum);
  CHECK(f.record("alpha").slots[again.slot].checksum == sum);
  CHECK(f.active("alpha") == ipc::pack_active(2, again.slot));

  // Without a writer checksum the daemon still computes and records one.
  const Lease third = begin(f, "alpha");
  fill(f, third, 6);
  const uint64_t sum3 = kernels::checksum(f.arena().data_at(third.data_offset), third.slot_bytes);
  auto computed = f.r().commit({third.id, LF_COMMIT_CHECKSUM, std::nullopt, std::nullopt, self()}, kT0);
  REQUIRE(computed.ok());
  CHECK(computed->checksum == sum3);
}

namespace {

// A registry serving two host stand-in devices, as `loraflipd --device-backend host --devices
// 0,1` makes it.
struct DeviceFixture {
  test::ScopedInstance instance;
  std::optional<Registry> reg;

  DeviceFixture() {
    bool created = false;
    Result<ipc::Arena> arena =
        ipc::Arena::open_or_create(test::small_config(instance.name), &created);
    REQUIRE_MESSAGE(arena.ok(), test::why(arena));
    Result<daemon::DeviceSet> devices = daemon::DeviceSet::open(
        device::make_host_backend(instance.name, 2), {0, 1}, uint64_t{1} << 20,
        daemon::kDeviceArenaTag);
    REQUIRE_MESSAGE(devices.ok(), test::why(devices));
    Result<Registry> r = Registry::open(std::move(arena).value(), std::move(devices).value());
    REQUIRE_MESSAGE(r.ok(), test::why(r));
    reg.emplace(std::move(r).value());
  }
  ~DeviceFixture() {
    reg.reset();  // frees the device blocks
    device::remove_host_blocks(instance.name, daemon::kDeviceArenaTag);
  }
  Registry &r() { return *reg; }
  // The slot of `lease` on device index `d` (the first device is where writers write).
  std::byte *slot(const Lease &lease, size_t d = 0) {
    const ipc::AdapterRecord &rec = reg->arena().adapter(lease.adapter);
    const uint64_t offset = d == rec.primary_device
                                ? lease.data_offset
                                : rec.device_offset[d] + uint64_t{lease.slot} * rec.slot_bytes;
    return reg->devices().base(d) + offset;
  }
};

}  // namespace

TEST_CASE("a device adapter's commit checks run on its first device, as a host adapter's do") {
  DeviceFixture f;
  CreateRequest q = spec("gpu");
  q.devices = {0, 1};
  REQUIRE(f.r().create(q).ok());
  const ipc::AdapterRecord &rec = f.r().arena().adapter(*f.r().find("gpu"));
  const ipc::TensorDesc *d = f.r().arena().tensors(rec);
  // The stand-in's device memory is host memory: the test writes it directly.
  auto fill_device = [&](const Lease &lease, float seed) {
    auto *a = reinterpret_cast<float *>(f.slot(lease) + d[0].offset);
    for (uint64_t i = 0; i < d[0].nbytes / 4; ++i) a[i] = seed + static_cast<float>(i);
    auto *b = reinterpret_cast<uint16_t *>(f.slot(lease) + d[1].offset);
    for (uint64_t i = 0; i < d[1].nbytes / 2; ++i) b[i] = 0x3C00;  // 1.0 in f16
  };
  const uint32_t both = LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM;

  auto lease_of = [&] {
    Result<Lease> lease = f.r().begin_write(begin_req("gpu"), kT0);
    REQUIRE_MESSAGE(lease.ok(), test::why(lease));
    return lease.value();
  };
  auto active = [&] { return rec.active.load(); };
  const Lease first = lease_of();
  fill_device(first, 1);
  REQUIRE(f.r().commit({first.id, both, std::nullopt, std::nullopt, self()}, kT0).ok());
  const uint64_t before = active();

  SUBCASE("a NaN in the second tensor is refused, naming that tensor, the element and the value") {
    const Lease lease = lease_of();
    fill_device(lease, 3);
    reinterpret_cast<uint16_t *>(f.slot(lease) + d[1].offset)[5] = 0x7E00;  // f16 NaN
    const uint64_t sum = kernels::checksum(f.slot(lease), lease.slot_bytes);
    auto bad = f.r().commit({lease.id, both, sum, std::nullopt, self()}, kT0);
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().code == LF_E_VALIDATION);
    CHECK(bad.error().message == "tensor 'base_model.model.layers.0.q_proj.lora_B.weight' holds "
                                 "NaN at element 5 (f16 bits 0x7e00)");
    CHECK(active() == before);
    CHECK(f.r().census(*f.r().find("gpu")).writing == 0);
    CHECK(lease_of().slot == lease.slot);  // free again at once
  }
  SUBCASE("an infinity in the first tensor is named with its sign") {
    const Lease lease = lease_of();
    fill_device(lease, 3);
    reinterpret_cast<float *>(f.slot(lease) + d[0].offset)[200] = -INFINITY;
    auto bad = f.r().commit({lease.id, LF_COMMIT_CHECK_FINITE, std::nullopt, std::nullopt, self()}, kT0);
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().message.find("lora_A.weight' holds -infinity at element 200 (f32 bits "
                                   "0xff800000)") != std::string::npos);
    CHECK(active() == before);
  }
  SUBCASE("the writer's checksum of the whole slot is accepted, and the slot replicated") {
    const Lease lease = lease_of();
    fill_device(lease, 5);
    const uint64_t sum = kernels::checksum(f.slot(lease), lease.slot_bytes);
    auto right = f.r().commit({lease.id, both, sum, std::nullopt, self()}, kT0);
    REQUIRE_MESSAGE(right.ok(), test::why(right));
    CHECK(right->checksum == sum);
    CHECK(rec.slots[lease.slot].checksum == sum);
    CHECK(active() == ipc::pack_active(2, lease.slot));
    CHECK(std::memcmp(f.slot(lease, 1), f.slot(lease, 0), lease.slot_bytes) == 0);
  }
  SUBCASE("a wrong writer checksum is refused and nothing flips") {
    const Lease lease = lease_of();
    fill_device(lease, 5);
    const uint64_t sum = kernels::checksum(f.slot(lease), lease.slot_bytes);
    auto wrong = f.r().commit({lease.id, both, sum + 1, std::nullopt, self()}, kT0);
    REQUIRE_FALSE(wrong.ok());
    CHECK(wrong.error().code == LF_E_VALIDATION);
    CHECK(wrong.error().message.find("checksum mismatch") != std::string::npos);
    CHECK(active() == before);
  }
  SUBCASE("without a writer checksum the daemon computes and records one") {
    const Lease lease = lease_of();
    fill_device(lease, 6);
    const uint64_t sum = kernels::checksum(f.slot(lease), lease.slot_bytes);
    auto computed = f.r().commit({lease.id, LF_COMMIT_CHECKSUM, std::nullopt, std::nullopt, self()}, kT0);
    REQUIRE_MESSAGE(computed.ok(), test::why(computed));
    CHECK(computed->checksum == sum);
  }
  SUBCASE("a NaN passes when no check is asked for") {
    const Lease lease = lease_of();
    fill_device(lease, 3);
    reinterpret_cast<uint16_t *>(f.slot(lease) + d[1].offset)[0] = 0x7E00;
    CHECK(f.r().commit({lease.id, 0, std::nullopt, std::nullopt, self()}, kT0).ok());
  }
}

TEST_CASE("a device whose context failed for good fails a commit with LF_E_DEVICE") {
  // In a child: the failure lasts for the rest of the process, as a sticky CUDA error does.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    int code = 0;
    {
      DeviceFixture f;
      CreateRequest q = spec("gpu");
      q.devices = {0, 1};
      if (!f.r().create(q).ok()) ::_exit(1);
      Result<Lease> lease = f.r().begin_write(begin_req("gpu"), kT0);
      if (!lease.ok()) code = 2;
      if (code == 0) {
        device::host_fail_device(0);
        auto failed = f.r().commit(
            {lease->id, LF_COMMIT_CHECK_FINITE, std::nullopt, std::nullopt, self()}, kT0);
        if (failed.ok()) code = 3;
        else if (failed.error().code != LF_E_DEVICE) code = 4;
        else if (f.r().arena().adapter(*f.r().find("gpu")).active.load() != 0) code = 5;
      }
    }
    ::_exit(code);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("a begin asked again after its lease expired frees that slot and lends a fresh one") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha", 4, 0)).ok());
  BeginRequest q = begin_req("alpha", /*lease_ms=*/1);
  q.token = 99;
  Result<Lease> first = f.r().begin_write(q, kT0);
  REQUIRE(first.ok());
  // The reply was lost and the writer asks again after the lease ran out: the process says it
  // never learned that lease, so nothing of it writes there; the slot comes back at once.
  Result<Lease> again = f.r().begin_write(q, kT0 + 10 * kMs);
  REQUIRE(again.ok());
  CHECK(again->id != first->id);
  const uint32_t index = *f.r().find("alpha");
  CHECK(f.r().census(index).writing == 1);
  CHECK(f.r().census(index).abandoned == 0);
  CHECK(f.r().commit({first->id, 0, std::nullopt, std::nullopt, self()}, kT0 + 10 * kMs).error().code ==
        LF_E_LEASE);
}
