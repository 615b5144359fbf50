// daemon/registry, restart: Registry::open over an arena a previous daemon left.
#include <doctest/doctest.h>

#include <string>

#include "daemon/registry.hpp"
#include "registry_fixture.hpp"
#include "support.hpp"

using namespace registry_fixture;

TEST_CASE("Registry::open on an existing arena rebuilds the allocators and keeps active versions") {
  test::ScopedInstance instance;
  const ipc::ArenaConfig config = test::small_config(instance.name);
  uint64_t data_used = 0, pool_used = 0, alpha_word = 0, gamma_word = 0, leases = 0;
  {
    bool created = false;
    Result<ipc::Arena> arena = ipc::Arena::open_or_create(config, &created);
    REQUIRE(arena.ok());
    Result<Registry> r = Registry::open(std::move(arena).value());
    REQUIRE(r.ok());
    Registry &reg = r.value();
    REQUIRE(reg.create(spec("alpha")).ok());
    REQUIRE(reg.create(spec("beta", 0, 4)).ok());
    REQUIRE(reg.create(spec("gamma")).ok());
    REQUIRE(reg.drop("beta").ok());
    REQUIRE(reg.reap(kT0).adapters_freed == 1);  // a hole in both allocators
    for (const char *name : {"alpha", "alpha", "gamma"}) {
      auto lease = reg.begin_write(begin_req(name), kT0);
      REQUIRE(lease.ok());
      REQUIRE(reg.commit({lease->id, 0, std::nullopt, std::nullopt, self()}, kT0).ok());
    }
    auto pending = reg.begin_write(begin_req("gamma"), kT0);  // a write across the restart
    REQUIRE(pending.ok());
    leases = pending->id;
    data_used = reg.data_allocator().used();
    pool_used = reg.pool_allocator().used();
    alpha_word = reg.arena().adapter(*reg.find("alpha")).active.load();
    gamma_word = reg.arena().adapter(*reg.find("gamma")).active.load();
  }  // the daemon "exits": only the shared memory is left
  bool created = true;
  Result<ipc::Arena> arena = ipc::Arena::open_or_create(config, &created);
  REQUIRE(arena.ok());
  CHECK_FALSE(created);
  Result<Registry> r = Registry::open(std::move(arena).value());
  REQUIRE_MESSAGE(r.ok(), test::why(r));
  Registry &reg = r.value();
  CHECK(reg.data_allocator().used() == data_used);
  CHECK(reg.pool_allocator().used() == pool_used);
  CHECK(reg.live_adapters().size() == 2);
  CHECK(reg.arena().adapter(*reg.find("alpha")).active.load() == alpha_word);
  CHECK(reg.arena().adapter(*reg.find("gamma")).active.load() == gamma_word);
  CHECK(ipc::active_version(alpha_word) == 2);
  // The lease made before the restart still commits, numbered after the last version.
  auto flip = reg.commit({leases, 0, std::nullopt, std::nullopt, self()}, kT0);
  REQUIRE_MESSAGE(flip.ok(), test::why(flip));
  CHECK(flip->version == 2);
  // New allocations do not land on the memory of existing adapters.
  REQUIRE(reg.create(spec("delta", 0, 0)).ok());
  const auto &alpha = reg.arena().adapter(*reg.find("alpha"));
  const auto &delta = reg.arena().adapter(*reg.find("delta"));
  const auto &gamma = reg.arena().adapter(*reg.find("gamma"));
  auto disjoint = [](const ipc::AdapterRecord &x, const ipc::AdapterRecord &y) {
    return x.data_offset + x.slot_bytes * x.slot_count <= y.data_offset ||
           y.data_offset + y.slot_bytes * y.slot_count <= x.data_offset;
  };
  CHECK(disjoint(alpha, delta));
  CHECK(disjoint(gamma, delta));
  auto new_lease = reg.begin_write(begin_req("gamma"), kT0);
  REQUIRE(new_lease.ok());
  CHECK(new_lease->id > leases);  // lease ids do not repeat across restarts
}

TEST_CASE("Registry::open refuses an arena whose records overlap") {
  test::ScopedInstance instance;
  const ipc::ArenaConfig config = test::small_config(instance.name);
  {
    bool created = false;
    Result<Registry> r = Registry::open(ipc::Arena::open_or_create(config, &created).value());
    REQUIRE(r.ok());
    REQUIRE(r->create(spec("alpha")).ok());
    REQUIRE(r->create(spec("beta")).ok());
    auto &beta = r->arena().adapter(*r->find("beta"));
    beta.data_offset = r->arena().adapter(*r->find("alpha")).data_offset;  // damage
  }
  bool created = false;
  Result<Registry> r = Registry::open(ipc::Arena::open_or_create(config, &created).value());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == LF_E_LAYOUT_MISMATCH);
  CHECK(r.error().message.find("beta") != std::string::npos);
}
