// daemon/registry, reclamation: reaping dead or expired writers and dead readers, and
// freeing dropped adapters once no pin or lease names them.
#include <doctest/doctest.h>

#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon/registry.hpp"
#include "registry_fixture.hpp"
#include "support.hpp"

using namespace registry_fixture;

TEST_CASE("reap marks an expired lease of a live writer abandoned, never to be lent again") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha", 2, 0)).ok());
  const uint32_t idx = *f.r().find("alpha");
  Result<Lease> lease = f.r().begin_write(begin_req("alpha", 5), kT0);
  REQUIRE(lease.ok());
  CHECK(f.r().reap(kT0 + 5 * kMs).expired_leases == 0);  // not yet
  const auto report = f.r().reap(kT0 + 6 * kMs);
  CHECK(report.expired_leases == 1);
  CHECK(report.dead_writers == 0);
  CHECK(f.r().census(idx).abandoned == 1);
  // The other slot is lent; the abandoned one never is.
  const Lease other = begin(f, "alpha", kT0 + 7 * kMs);
  CHECK(other.slot != lease->slot);
  CHECK(f.r().begin_write(begin_req("alpha"), kT0 + 7 * kMs).error().code == LF_E_NO_FREE_SLOT);
  CHECK(f.r().reap(kT0 + 8 * kMs).expired_leases == 0);  // counted once
  CHECK(f.r().census(idx).abandoned == 1);
  // The writer answers at last: told its lease ended, and the slot comes back.
  CHECK(f.r().commit({lease->id, 0, std::nullopt, std::nullopt, self()}, kT0 + 9 * kMs).error().code == LF_E_LEASE);
  CHECK(f.r().census(idx).abandoned == 0);
  CHECK(f.r().census(idx).free == 1);
}

TEST_CASE("reap frees the slot of a writer that died, expired or not") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha")).ok());
  const uint32_t idx = *f.r().find("alpha");
  uint64_t start = 0;
  const pid_t dead = test::dead_child(&start);
  REQUIRE(dead > 0);
  REQUIRE(start != 0);
  BeginRequest q{"alpha", 30000, static_cast<uint64_t>(dead), start};
  REQUIRE(f.r().begin_write(q, kT0).ok());
  q.lease_ms = 1;
  REQUIRE(f.r().begin_write(q, kT0).ok());
  CHECK(f.r().census(idx).writing == 2);
  const auto report = f.r().reap(kT0 + 5 * kMs);
  CHECK(report.dead_writers == 2);
  CHECK(report.expired_leases == 0);
  CHECK(f.r().census(idx).writing == 0);
  CHECK(f.r().census(idx).free == 4);
  CHECK(f.active("alpha") == 0);
}

TEST_CASE("reap frees an abandoned slot once its writer dies") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha")).ok());
  const uint32_t idx = *f.r().find("alpha");
  // A live pid (ours) with the start time of a process that has exited stands for a writer
  // that died and whose pid was reused.
  uint64_t start = 0;
  test::dead_child(&start);
  REQUIRE(start != 0);
  BeginRequest q{"alpha", 1, static_cast<uint64_t>(::getpid()),
                 ipc::process_start_time(::getpid())};
  Result<Lease> lease = f.r().begin_write(q, kT0);
  REQUIRE(lease.ok());
  CHECK(f.r().reap(kT0 + 2 * kMs).expired_leases == 1);
  CHECK(f.r().census(idx).abandoned == 1);
  f.arena().adapter(idx).slots[lease->slot].writer_start = start + 1;  // "pid reused"
  CHECK(f.r().reap(kT0 + 3 * kMs).dead_writers == 1);
  CHECK(f.r().census(idx).abandoned == 0);
}

TEST_CASE("reap clears a dead reader's pins and frees its entry") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha", 2, 0)).ok());
  const uint32_t idx = *f.r().find("alpha");
  publish(f, "alpha");
  const uint64_t v1 = f.active("alpha");
  uint64_t start = 0;
  const pid_t dead = test::dead_child(&start);
  pin(f, 2, 0, v1, idx, static_cast<uint64_t>(dead), start);
  pin(f, 2, 7, v1, idx, static_cast<uint64_t>(dead), start);
  pin(f, 4, 1, v1, idx);  // a live reader (this process) is left alone
  CHECK(f.r().live_readers() == 2);
  const auto report = f.r().reap(kT0);
  CHECK(report.dead_readers == 1);
  CHECK(report.pins_cleared == 2);
  const ipc::ReaderEntry &e = f.arena().reader(2);
  CHECK(e.owner_pid.load() == 0);
  CHECK(e.owner_start.load() == 0);
  for (const auto &cell : e.pins) CHECK(cell.load() == 0);
  CHECK(f.arena().reader(4).pins[1].load() == ipc::pack_pin(v1, idx));
  CHECK(f.r().live_readers() == 1);
  CHECK(f.r().pins_held() == 1);
  CHECK(f.r().reap(kT0).dead_readers == 0);
  // The running totals (for metrics) keep what every pass reclaimed.
  CHECK(f.r().reclaimed_total().dead_readers == 1);
  CHECK(f.r().reclaimed_total().pins_cleared == 2);
}

TEST_CASE("reap reclaims a reader entry whose pid now names another process") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha", 2, 0)).ok());
  const uint32_t idx = *f.r().find("alpha");
  publish(f, "alpha");
  const uint64_t v1 = f.active("alpha");
  const uint64_t me = static_cast<uint64_t>(::getpid());
  const uint64_t my_start = ipc::process_start_time(::getpid());
  REQUIRE(my_start != 0);
  pin(f, 0, 0, v1, idx, me, my_start + 1);  // same pid, another start time: a reused pid
  pin(f, 1, 0, v1, idx, me, my_start);      // the real owner
  publish(f, "alpha");                      // version 1's slot is now free, but pinned
  CHECK(f.r().begin_write(begin_req("alpha"), kT0).error().code == LF_E_NO_FREE_SLOT);
  const auto report = f.r().reap(kT0);
  CHECK(report.dead_readers == 1);
  CHECK(f.arena().reader(0).owner_pid.load() == 0);
  CHECK(f.arena().reader(1).owner_pid.load() == me);
  CHECK(f.arena().reader(1).pins[0].load() != 0);
  unpin(f, 1, 0);
  CHECK(f.r().begin_write(begin_req("alpha"), kT0).ok());
}

TEST_CASE("reap treats zombie readers and writers as dead") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha", 2, 0)).ok());
  const uint32_t idx = *f.r().find("alpha");
  publish(f, "alpha");
  uint64_t start = 0;
  const pid_t zombie = test::zombie_child(&start);
  REQUIRE(zombie > 0);
  pin(f, 0, 0, f.active("alpha"), idx, static_cast<uint64_t>(zombie), start);
  REQUIRE(f.r().begin_write({"alpha", 30000, static_cast<uint64_t>(zombie), start}, kT0).ok());
  const auto report = f.r().reap(kT0);
  int status = 0;
  ::waitpid(zombie, &status, 0);
  CHECK(report.dead_readers == 1);
  CHECK(report.dead_writers == 1);
  CHECK(f.r().census(idx).writing == 0);
}

TEST_CASE("drop hides the adapter at once and frees its memory only once no pin names it") {
  Fixture f;
  const uint64_t data0 = f.r().data_allocator().used(), pool0 = f.r().pool_allocator().used();
  REQUIRE(f.r().create(spec("alpha")).ok());
  const uint32_t idx = *f.r().find("alpha");
  publish(f, "alpha");
  const uint64_t word = f.active("alpha");
  pin(f, 3, 0, word, idx);
  const uint64_t data1 = f.r().data_allocator().used();
  CHECK(data1 > data0);

  auto dropped = f.r().drop("alpha");
  REQUIRE(dropped.ok());
  CHECK(dropped->kind == "drop");
  CHECK(dropped->previous == 1);
  CHECK_FALSE(f.r().find("alpha").has_value());
  CHECK(f.arena().adapter(idx).active.load() == 0);
  CHECK(f.arena().adapter(idx).state.load() == static_cast<uint32_t>(ipc::AdapterState::kDropping));
  CHECK(f.r().drop("alpha").error().code == LF_E_NOT_FOUND);
  CHECK(f.r().begin_write(begin_req("alpha"), kT0).error().code == LF_E_NOT_FOUND);

  CHECK(f.r().reap(kT0).adapters_freed == 0);
  CHECK(f.r().data_allocator().used() == data1);
  // A new adapter of the same name is independent of the one being dropped.
  REQUIRE(f.r().create(spec("alpha")).ok());
  CHECK(*f.r().find("alpha") != idx);
  REQUIRE(f.r().drop("alpha").ok());
  CHECK(f.r().reap(kT0).adapters_freed == 1);  // the unpinned one goes at once

  unpin(f, 3, 0);
  CHECK(f.r().reap(kT0).adapters_freed == 1);
  CHECK(f.r().data_allocator().used() == data0);
  CHECK(f.r().pool_allocator().used() == pool0);
  CHECK(f.arena().adapter(idx).state.load() == static_cast<uint32_t>(ipc::AdapterState::kFree));
}

TEST_CASE("drop during a write keeps the slot away until the writer answers") {
  Fixture f;
  REQUIRE(f.r().create(spec("alpha")).ok());
  const uint32_t idx = *f.r().find("alpha");
  const Lease lease = begin(f, "alpha");
  REQUIRE(f.r().drop("alpha").ok());
  CHECK(f.r().census(idx).abandoned == 1);
  CHECK(f.r().reap(kT0).adapters_freed == 0);  // the writer lives and may still copy
  auto late = f.r().commit({lease.id, 0, std::nullopt, std::nullopt, self()}, kT0);
  REQUIRE_FALSE(late.ok());
  CHECK(late.error().code == LF_E_LEASE);
  CHECK(late.error().message.find("dropped") != std::string::npos);
  CHECK(f.r().reap(kT0).adapters_freed == 1);
  CHECK(f.r().data_allocator().used() == 0);
}
