// loraflip-relay beyond one hop: a tree of relays on loopback under CurveZMQ. The upstream U
// serves a middle node M; M follows U and serves what it got, with a second `serve` on its own
// daemon, to two leaves. What a leaf gets has passed through two relays and M's daemon, and
// must still be U's version numbers and U's bytes; a rollback and a drop at U must reach the
// leaves through M.
#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

#include "loraflip.h"
#include "relay_support.hpp"
#include "support.hpp"

using namespace lftest::relay;

namespace {

bool has_adapter(lf_client_t *c, const char *name) {
  char *json = nullptr;
  const int st = lf_client_info(c, name, &json);
  lf_free(json);
  return st == LF_OK;
}

}  // namespace

TEST_CASE("a tree of relays: two leaves follow a middle node that follows the upstream, with the "
          "upstream's numbers and bytes, and a rollback and a drop upstream reach the leaves "
          "through it") {
  // U and M: a mesh of one follower.
  Mesh mesh(1);
  const Daemon &middle = *mesh.daemons[0];
  // M serves under its node's key (the one it follows U with) and an allow file of its own:
  // the leaves' keys, none of which U knows.
  const Keys leaf_keys(mesh.dir, 2, "leaf", mesh.keys.followers[0]);
  const std::string middle_listen = "tcp://127.0.0.1:" + std::to_string(free_port());
  Relay middle_serve({"serve", "--runtime-dir", middle.dir(), "--listen", middle_listen,
                      "--secret-key", leaf_keys.upstream + ".key", "--allow", leaf_keys.allow},
                     middle.dir() + ".serve.log");

  std::vector<std::unique_ptr<Daemon>> leaves;
  std::vector<std::unique_ptr<Relay>> leaf_relays;
  for (int i = 0; i < 2; ++i) {
    leaves.push_back(std::make_unique<Daemon>("relay-leaf" + std::to_string(i)));
    leaves.back()->start();
    leaf_relays.push_back(std::make_unique<Relay>(
        std::vector<std::string>{"follow", "--runtime-dir", leaves.back()->dir(), "--upstream",
                                 middle_listen, "--server-key", leaf_keys.upstream + ".pub",
                                 "--secret-key", leaf_keys.followers[i] + ".key",
                                 "--chunk-bytes", "65536", "--window", "4"},
        leaves.back()->dir() + ".relay.log"));
  }
  const auto leaf_log = [&](int i) { return leaves[i]->dir() + ".relay.log"; };

  // Readers on M and on both leaves look all along: M first, then the leaves.
  std::vector<std::unique_ptr<Watch>> watches;
  watches.push_back(std::make_unique<Watch>(middle));
  for (auto &leaf : leaves) watches.push_back(std::make_unique<Watch>(*leaf));

  // The trainer at U publishes 20 versions as fast as it can.
  create_adapter(mesh.up, "policy", 4, 20000);
  for (uint64_t g = 1; g <= 20; ++g) {
    REQUIRE(publish(mesh.up, "policy", g) == g);
    for (auto &w : watches) w->poll("policy");
  }
  CHECK_MESSAGE(wait_all(watches, "policy", 20) >= 0, "see ", mesh.follow_log(0), ", ",
                middle.dir(), ".serve.log and ", leaf_log(0));

  std::vector<lf_client_t *> clients{open_client(middle)};
  for (auto &leaf : leaves) clients.push_back(open_client(*leaf));
  const std::string schema = tensors_of(mesh.up, "policy");
  for (size_t i = 0; i < watches.size(); ++i) {
    CAPTURE(i);                         // 0: the middle node, 1 and 2: the leaves
    CHECK(watches[i]->last == 20);
    CHECK(watches[i]->torn == 0);       // every version seen held U's bytes for its number
    CHECK(watches[i]->backward == 0);   // and versions only went forward
    CHECK(last_version(clients[i], "policy") == 20);
    CHECK(tensors_of(clients[i], "policy") == schema);
  }

  // U rolls back: M follows it, and M's serve passes M's own rollback down to the leaves. One
  // version more first, so that every node holds 20 and 21 (a fast trainer lets nodes skip).
  REQUIRE(publish(mesh.up, "policy", 21) == 21);
  REQUIRE(wait_all(watches, "policy", 21) >= 0);
  REQUIRE(lf_client_rollback(mesh.up, "policy", 20) == LF_OK);
  CHECK_MESSAGE(wait_all(watches, "policy", 20) >= 0, "the rollback did not reach every node; see ",
                mesh.follow_log(0), ", ", middle.dir(), ".serve.log and ", leaf_log(0));
  for (size_t i = 0; i < watches.size(); ++i) {
    CAPTURE(i);
    CHECK(watches[i]->torn == 0);  // U's bytes of 20 again
    CHECK(last_version(clients[i], "policy") == 21);
  }
  CHECK(log_has(mesh.follow_log(0), "policy: rolled back to 20 as the upstream did"));
  for (int i = 0; i < 2; ++i) CHECK(log_has(leaf_log(i), "policy: rolled back to 20 as the upstream did"));

  // U drops the adapter. Only M's relay hears it from U; the leaves can only learn it from M's
  // serve, once M's copy is gone. Polled leaves first and M after: a leaf without its copy
  // while M still has one, looked at later, would be a drop that did not come through M.
  REQUIRE(lf_client_drop_adapter(mesh.up, "policy") == LF_OK);
  bool leaf_before_middle = false;
  const int64_t dropped = lftest::wait_until(
      [&] {
        bool leaves_gone = true, a_leaf_gone = false;
        for (size_t i = 1; i < clients.size(); ++i) {
          const bool gone = !has_adapter(clients[i], "policy");
          leaves_gone = leaves_gone && gone;
          a_leaf_gone = a_leaf_gone || gone;
        }
        const bool middle_gone = !has_adapter(clients[0], "policy");
        if (a_leaf_gone && !middle_gone) leaf_before_middle = true;
        return leaves_gone && middle_gone;
      },
      60000);
  CHECK_MESSAGE(dropped >= 0, "the drop did not reach every node; see ", mesh.follow_log(0),
                " and ", leaf_log(0));
  CHECK_FALSE(leaf_before_middle);
  CHECK(log_has(mesh.follow_log(0), "'policy' was dropped upstream"));
  for (int i = 0; i < 2; ++i) CHECK(log_has(leaf_log(i), "'policy' was dropped upstream"));

  for (lf_client_t *c : clients) lf_client_close(c);
  // Every relay stayed up all along: stopped cleanly by SIGTERM.
  for (auto &r : leaf_relays) CHECK(r->stop() == 0);
  CHECK(middle_serve.stop() == 0);
  CHECK(mesh.relays[0]->stop() == 0);
  CHECK(mesh.serve->stop() == 0);
}
