// The daemon's access control over its real sockets and arena: modes for the owning user and
// group only, another user kept out, and the access lists (--allow-user, --allow-group). The
// cases that become another user need root; they are meson tests of their own.
#include <doctest/doctest.h>

#include <cstdio>
#include <functional>
#include <grp.h>
#include <pwd.h>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include "support.hpp"
#include "tests/process/daemon_fixture.hpp"
#include "tests/skip.hpp"

using namespace lftest;
using namespace daemon_fixture;
namespace ipc = loraflip::ipc;

TEST_CASE("the sockets and the arena have modes for the owning user and group only") {
  Daemon daemon("perm");
  daemon.start();
  struct stat st{};
  REQUIRE(stat(daemon.dir().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0770);
  for (const char *f : {"/control", "/events"}) {
    REQUIRE(stat((daemon.dir() + f).c_str(), &st) == 0);
    CHECK((st.st_mode & 0007) == 0);  // nothing for others, even for an instant (umask at bind)
  }
  for (const char *seg : {".control", ".data"}) {
    REQUIRE(stat(("/dev/shm/loraflip." + daemon.instance() + seg).c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0660);
  }
}

TEST_CASE("another user reaches neither the sockets nor the arena") {
  if (geteuid() != 0) LF_SKIP("needs root to become another user");
  Daemon daemon("other");
  daemon.start();
  const passwd *nobody = getpwnam("nobody");
  REQUIRE(nobody != nullptr);
  const pid_t other = spawn([&] {
    if (setgroups(0, nullptr) != 0 || setgid(nobody->pw_gid) != 0 || setuid(nobody->pw_uid) != 0)
      return 10;
    lf_client_t *c = nullptr;
    if (lf_client_open(daemon.dir().c_str(), 500, &c) == LF_OK) return 11;
    lf_reader_t *r = nullptr;
    if (lf_reader_open(daemon.dir().c_str(), &r) == LF_OK) return 12;
    // Straight at the shared memory, bypassing the socket: refused too.
    const std::string shm = "/dev/shm/loraflip." + daemon.instance() + ".control";
    if (fopen(shm.c_str(), "r") != nullptr) return 13;
    return 0;
  });
  CHECK(wait_child(other) == 0);
}

TEST_CASE("--allow-user and --allow-group refuse other users' requests and change nothing") {
  if (geteuid() != 0) LF_SKIP("needs root to become another user");
  const passwd *nobody = getpwnam("nobody");
  const group *nogroup = getgrnam("nogroup");
  REQUIRE(nobody != nullptr);
  REQUIRE(nogroup != nullptr);
  // The socket's group lets 'nobody' open it; only the access list can keep it out.
  constexpr gid_t kTrainers = 42424;  // a group id nobody belongs to unless given it below
  Daemon daemon("allow", {"--group", "nogroup", "--allow-group", std::to_string(kTrainers)});
  daemon.start();
  auto as_nobody = [&](std::vector<gid_t> groups, const std::function<int()> &body) {
    return wait_child(spawn([&] {
      if (setgroups(groups.size(), groups.data()) != 0 || setgid(nogroup->gr_gid) != 0 ||
          setuid(nobody->pw_uid) != 0)
        return 10;
      return body();
    }));
  };
  // Outside the list: hello is refused with a clear error, and so is a create sent raw.
  CHECK(as_nobody({}, [&] {
          lf_client_t *c = nullptr;
          if (lf_client_open(daemon.dir().c_str(), 2000, &c) != LF_E_PERMISSION) return 20;
          const std::string why = lf_last_error_message();
          if (why.find("uid " + std::to_string(nobody->pw_uid)) == std::string::npos) return 21;
          RawPeer raw(daemon.dir());
          ipc::Encoder args;
          args.map(1).key("name").str("intruder");
          if (reply_code(raw.exchange(request("create_adapter", args))) != LF_E_PERMISSION)
            return 22;
          return 0;
        }) == 0);
  // A supplementary group on the list is enough.
  CHECK(as_nobody({kTrainers}, [&] {
          lf_client_t *c = nullptr;
          if (lf_client_open(daemon.dir().c_str(), 2000, &c) != LF_OK) return 30;
          char *json = nullptr;
          const int rc = lf_client_list(c, &json);
          lf_free(json);
          lf_client_close(c);
          return rc == LF_OK ? 0 : 31;
        }) == 0);
  // Root (and the daemon's own user) always get through; the refused create left no trace.
  lf_client_t *c = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 2000, &c) == LF_OK);
  char *json = nullptr;
  REQUIRE(lf_client_list(c, &json) == LF_OK);
  CHECK(std::string(json).find("intruder") == std::string::npos);
  lf_free(json);
  lf_client_close(c);
  CHECK(daemon.log().find("request refused") != std::string::npos);
}
