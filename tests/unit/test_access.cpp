// Who may send control requests: Peer-Address parsing, the policy, and the /proc group lookup.
#include <doctest/doctest.h>

#include <algorithm>
#include <grp.h>
#include <unistd.h>

#include "daemon/access.hpp"

using namespace loraflip;
using namespace loraflip::daemon;

TEST_CASE("an IPC peer address gives uid, gid and pid; anything else gives nothing") {
  auto p = parse_peer_address("localhost:1001:1002:4242");
  REQUIRE(p);
  CHECK(p->uid == 1001);
  CHECK(p->gid == 1002);
  CHECK(p->pid == 4242);
  CHECK(parse_peer_address(":0:0:1"));            // no host part
  CHECK(parse_peer_address("::1:7:8:9")->uid == 7);  // a host that holds colons itself
  CHECK_FALSE(parse_peer_address(""));
  CHECK_FALSE(parse_peer_address("127.0.0.1"));
  CHECK_FALSE(parse_peer_address("localhost:1:2"));
  CHECK_FALSE(parse_peer_address("localhost:1:2:x"));
  CHECK_FALSE(parse_peer_address("localhost:1:2:"));
  CHECK_FALSE(parse_peer_address("localhost:-1:2:3"));
  CHECK_FALSE(parse_peer_address("localhost:99999999999:2:3"));  // over 32 bits
}

TEST_CASE("no lists: everyone the socket's mode lets in is served") {
  AccessPolicy open;
  CHECK_FALSE(open.restricts());
  CHECK(open.allows({.uid = 4321, .gid = 4321, .pid = 1}, {}));
  CHECK(open.allows_address("garbage"));
}

TEST_CASE("lists admit listed users, primary and supplementary groups, root and the daemon") {
  const AccessPolicy policy({1001}, {2000}, /*daemon_uid=*/999);
  CHECK(policy.restricts());
  CHECK(policy.allows({.uid = 1001, .gid = 5}, {}));
  CHECK(policy.allows({.uid = 1002, .gid = 2000}, {}));
  CHECK(policy.allows({.uid = 1002, .gid = 5}, {7, 2000}));
  CHECK(policy.allows({.uid = 0, .gid = 0}, {}));
  CHECK(policy.allows({.uid = 999, .gid = 999}, {}));
  CHECK_FALSE(policy.allows({.uid = 1002, .gid = 5}, {}));
  CHECK_FALSE(policy.allows({.uid = 1002, .gid = 5}, {6, 7}));
}

TEST_CASE("an address that names nobody real is refused, and the refusal says why") {
  AccessPolicy policy({1001}, {}, 999);
  CHECK_FALSE(policy.allows_address("not an ipc peer"));
  CHECK_FALSE(policy.allows_address("localhost:1002:1002:1"));
  CHECK(policy.allows_address("localhost:1001:1001:1"));
  // Decided once per address: asked again, the same answer.
  CHECK_FALSE(policy.allows_address("localhost:1002:1002:1"));
  CHECK(policy.refusal("localhost:1002:1003:1").find("uid 1002") != std::string::npos);
  CHECK(policy.refusal("x").find("--allow-user") != std::string::npos);
}

TEST_CASE("supplementary groups come from /proc and only while the pid runs as that user") {
  const uint32_t pid = static_cast<uint32_t>(::getpid());
  const uint32_t uid = static_cast<uint32_t>(::geteuid());
  auto groups = process_groups(pid, uid);
  REQUIRE(groups);
  std::vector<gid_t> expected(static_cast<size_t>(::getgroups(0, nullptr)));
  ::getgroups(static_cast<int>(expected.size()), expected.data());
  CHECK(groups->size() == expected.size());
  for (gid_t g : expected)
    CHECK(std::find(groups->begin(), groups->end(), g) != groups->end());
  CHECK_FALSE(process_groups(pid, uid + 1));  // another user now: not this peer's groups
  CHECK_FALSE(process_groups(0x7ffffff0u, uid));  // no such process
}

TEST_CASE("users and groups are given by name or number") {
  CHECK(user_id("root").value() == 0);
  CHECK(user_id("1234").value() == 1234);
  CHECK(user_id("no-such-user-anywhere").error().code == LF_E_NOT_FOUND);
  CHECK(group_id_of("root").value() == 0);
  CHECK(group_id_of("77").value() == 77);
  CHECK(group_id_of("no-such-group-anywhere").error().code == LF_E_NOT_FOUND);
}
