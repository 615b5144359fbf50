// daemon/handlers, leases: a lease is its writer's alone (the sender as the kernel names it),
// and a commit or a begin asked again after a lost reply answers what the first one made.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "handlers_fixture.hpp"

using namespace handlers_fixture;

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
