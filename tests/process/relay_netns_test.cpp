// loraflip-relay across a real link that goes down and comes back: the upstream's relay and a
// follower's relay each in a network namespace of its own, joined by a veth pair, the link cut
// with `ip link set down` and restored with `up`. Needs root (ip netns); skipped, visibly,
// where it cannot make namespaces. The daemons stay in the root namespace: their sockets are
// pathnames and their arenas live in /dev/shm, the same files from any network namespace, so
// only the relays' TCP crosses the link.
#include <doctest/doctest.h>

#include <fstream>
#include <memory>
#include <string>
#include <unistd.h>
#include <vector>

#include "loraflip.h"
#include "relay_support.hpp"
#include "tests/skip.hpp"
#include "support.hpp"

using namespace lftest::relay;

namespace {

// iproute2's `ip`, by its full path: the PATH a test runs with may lack /usr/sbin.
std::string ip_binary() {
  for (const char *path : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"})
    if (::access(path, X_OK) == 0) return path;
  return "";
}

// Two network namespaces joined by a veth pair, the upstream's end 10.251.73.1/30 and the
// follower's 10.251.73.2/30. Both ends are made inside their namespaces, so nothing of the
// host's own network is touched, and the names carry the test's pid, so that two runs at
// once never meet. The namespaces (and with them the pair) are removed on destruction,
// whatever the test did; the relays in them must be gone by then (declared after this).
class Link {
 public:
  static constexpr const char *kUpAddress = "10.251.73.1";
  static constexpr const char *kFollowAddress = "10.251.73.2";
  const std::string up_ns, follow_ns, up_veth, follow_veth;

  Link(std::string ip, std::string log)
      : up_ns("lf-up-" + std::to_string(::getpid())),
        follow_ns("lf-follow-" + std::to_string(::getpid())),
        up_veth("lfu" + std::to_string(::getpid())),  // interface names: 15 characters at most
        follow_veth("lff" + std::to_string(::getpid())),
        ip_(std::move(ip)),
        log_(std::move(log)) {}
  ~Link() {
    for (const std::string &ns : made_) this->ip("netns del " + ns);
  }
  Link(const Link &) = delete;
  Link &operator=(const Link &) = delete;

  // Makes the namespaces and the pair: what needs privileges. "" when done, else why it
  // could not (the test then skips).
  std::string make() {
    for (const std::string &ns : {up_ns, follow_ns}) {
      if (!ip("netns add " + ns)) return "`ip netns add` is not permitted here: " + last_line();
      made_.push_back(ns);
    }
    if (!ip("link add " + up_veth + " netns " + up_ns + " type veth peer name " + follow_veth +
            " netns " + follow_ns))
      return "no veth pair could be made: " + last_line();
    return "";
  }
  // Addresses, and every interface up. Whether it all succeeded (see log()).
  bool configure() {
    return ip("-n " + up_ns + " link set lo up") && ip("-n " + follow_ns + " link set lo up") &&
           ip("-n " + up_ns + " addr add " + kUpAddress + "/30 dev " + up_veth) &&
           ip("-n " + follow_ns + " addr add " + kFollowAddress + "/30 dev " + follow_veth) &&
           ip("-n " + up_ns + " link set " + up_veth + " up") &&
           ip("-n " + follow_ns + " link set " + follow_veth + " up");
  }
  // The link at the follower's end, down or up, as `ip netns exec NS ip link set VETH ...`.
  bool set_follower_end(bool up) {
    return ip("netns exec " + follow_ns + " " + ip_ + " link set " + follow_veth +
              (up ? " up" : " down"));
  }
  // The command that runs a program inside namespace `ns` (it execs the program).
  std::vector<std::string> exec_in(const std::string &ns) const {
    return {ip_, "netns", "exec", ns};
  }
  std::string log() const { return read_file(log_); }

 private:
  // Runs `ip ARGS`, its output appended to the log; whether it succeeded.
  bool ip(const std::string &args) {
    std::ofstream(log_, std::ios::app) << "$ ip " << args << "\n";
    return run(ip_ + " " + args + " >>'" + log_ + "' 2>&1") == 0;
  }
  std::string last_line() const {
    std::string text = log();
    while (!text.empty() && text.back() == '\n') text.pop_back();
    return text.substr(text.rfind('\n') + 1);
  }

  std::string ip_, log_;
  std::vector<std::string> made_;
};

}  // namespace

// A test suite of its own, so that meson runs it as a test of its own ('relay-netns') whose
// skip shows in meson's results.
TEST_SUITE("netns") {

TEST_CASE("a follower in another network namespace stays put while the link is cut, says it is "
          "not connected, and catches up once the link is back") {
  if (::geteuid() != 0) LF_SKIP("needs root to make network namespaces (ip netns)");
  const std::string ip = ip_binary();
  if (ip.empty()) LF_SKIP("no `ip` command (iproute2) here");
  TempDir dir;
  Link link(ip, dir.path + "/ip.log");
  if (const std::string why = link.make(); !why.empty()) LF_SKIP(why);
  REQUIRE_MESSAGE(link.configure(), link.log());

  // CurveZMQ as between real nodes: --insecure is for loopback only.
  const Keys keys(dir, 1);

  Daemon upstream("relay-netns-up");
  upstream.start();
  Daemon follower("relay-netns-f");
  follower.start();
  lf_client_t *up = open_client(upstream);
  lf_client_t *fc = open_client(follower);
  create_adapter(up, "policy", 4, 20000);
  // Any port: the upstream's namespace is new, nothing else listens there.
  const std::string listen = std::string("tcp://") + Link::kUpAddress + ":7447";
  const std::string follow_log = follower.dir() + ".relay.log";
  Relay serve({"serve", "--runtime-dir", upstream.dir(), "--listen", listen, "--secret-key",
               keys.upstream + ".key", "--allow", keys.allow},
              upstream.dir() + ".relay.log", {}, link.exec_in(link.up_ns));
  Relay follow({"follow", "--runtime-dir", follower.dir(), "--upstream", listen,
                "--server-key", keys.upstream + ".pub", "--secret-key", keys.followers[0] + ".key",
                "--chunk-bytes", "65536", "--window", "4"},
               follow_log, {}, link.exec_in(link.follow_ns));

  std::vector<std::unique_ptr<Watch>> watches;
  watches.push_back(std::make_unique<Watch>(follower));
  const std::string status = follower.dir() + "/relay-follow.json";
  const auto status_says = [&](const std::string &text) { return log_has(status, text); };
  REQUIRE(publish(up, "policy", 1) == 1);
  REQUIRE_MESSAGE(wait_all(watches, "policy", 1) >= 0, "see ", follow_log, " and ",
                  upstream.dir(), ".relay.log");
  REQUIRE(lftest::wait_until([&] { return status_says("\"connected\":true"); }, 30000) >= 0);

  // Cut at the follower's end: its route goes, and whatever was in flight is lost. The
  // follower takes the link as lost when its long poll gets no answer (2 s + 5 s).
  REQUIRE_MESSAGE(link.set_follower_end(false), link.log());
  for (uint64_t g = 2; g <= 4; ++g) REQUIRE(publish(up, "policy", g) == g);
  CHECK_MESSAGE(lftest::wait_until([&] { return status_says("\"connected\":false"); }, 60000) >= 0,
                "see ", follow_log);
  // Kept down a little longer, so that the relay's new socket meets the cut link too (its
  // connects fail while the route is gone) before the link comes back.
  lftest::sleep_ms(2000);
  // Nothing crossed the cut link.
  watches[0]->poll("policy");
  CHECK(watches[0]->last == 1);
  CHECK(last_version(fc, "policy") == 1);

  // Back up: the follower finds the upstream again by itself and jumps to its newest.
  REQUIRE_MESSAGE(link.set_follower_end(true), link.log());
  CHECK_MESSAGE(wait_all(watches, "policy", 4) >= 0, "see ", follow_log);
  CHECK(watches[0]->torn == 0);
  CHECK(watches[0]->backward == 0);
  CHECK(last_version(fc, "policy") == 4);
  CHECK(tensors_of(fc, "policy") == tensors_of(up, "policy"));
  CHECK(lftest::wait_until(
            [&] {
              const std::string s = read_file(status);
              return lftest::json_number(s, "last_version") == 4 &&
                     s.find("\"connected\":true") != std::string::npos;
            },
            30000) >= 0);
  CHECK(log_has(follow_log, "no answer from"));
  CHECK(log_has(follow_log, "answers"));

  // Both relays stayed up all along: the same processes, stopped cleanly.
  CHECK(follow.stop() == 0);
  CHECK(serve.stop() == 0);
  lf_client_close(fc);
  lf_client_close(up);
}

}  // TEST_SUITE("netns")
