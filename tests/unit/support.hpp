// Helpers shared by the unit tests: unique arena instances that are always removed, small
// arena configurations, and child processes whose pids are known to be dead.
#pragma once

#include <atomic>
#include <string>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include "daemon/registry.hpp"
#include "ipc/arena.hpp"
#include "ipc/proc.hpp"

namespace loraflip::test {

// "ut-<pid>-<n>": unique across the processes of a parallel `meson test` run.
inline std::string unique_instance() {
  static std::atomic<int> counter{0};
  return "ut-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

// Owns an instance name; removes both of its segments when the test ends, however it ends.
struct ScopedInstance {
  std::string name = unique_instance();
  ScopedInstance() { ipc::Arena::remove(name); }
  ~ScopedInstance() { ipc::Arena::remove(name); }
  ScopedInstance(const ScopedInstance &) = delete;
  ScopedInstance &operator=(const ScopedInstance &) = delete;
};

// A few MiB of data, so that parallel test processes stay small.
inline ipc::ArenaConfig small_config(const std::string &instance) {
  ipc::ArenaConfig c;
  c.instance = instance;
  c.data_bytes = uint64_t{4} << 20;
  c.pool_bytes = uint64_t{64} << 10;
  c.max_adapters = 8;
  c.max_readers = 8;
  c.default_history = 2;
  return c;
}

template <typename R>
std::string why(const R &r) {
  return r.ok() ? std::string() : r.error().message;
}

// A child that exited and was waited for: its pid names no process (until the kernel reuses
// it, which takes a full turn of the pid space). *start receives its start time, read while it
// still ran.
inline pid_t dead_child(uint64_t *start = nullptr) {
  int fds[2];
  if (::pipe(fds) != 0) return -1;
  const pid_t pid = ::fork();
  if (pid == 0) {
    char c;
    ::close(fds[1]);
    (void)!::read(fds[0], &c, 1);  // until the parent closes its end
    ::_exit(0);
  }
  ::close(fds[0]);
  if (start != nullptr) *start = ipc::process_start_time(pid);
  ::close(fds[1]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

// A child that exited but was not waited for yet (a zombie). Reap it with waitpid when done.
inline pid_t zombie_child(uint64_t *start) {
  int fds[2];
  if (::pipe(fds) != 0) return -1;
  const pid_t pid = ::fork();
  if (pid == 0) {
    char c;
    ::close(fds[1]);
    (void)!::read(fds[0], &c, 1);
    ::_exit(0);
  }
  ::close(fds[0]);
  *start = ipc::process_start_time(pid);
  ::close(fds[1]);
  // Wait until /proc shows it as a zombie, without reaping it.
  siginfo_t info{};
  ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT);
  return pid;
}

// A Registry over a new arena made from `config` (fails the test case when either fails).
inline daemon::Registry open_registry(const ipc::ArenaConfig &config) {
  bool created = false;
  Result<ipc::Arena> arena = ipc::Arena::open_or_create(config, &created);
  REQUIRE_MESSAGE(arena.ok(), why(arena));
  Result<daemon::Registry> r = daemon::Registry::open(std::move(arena).value());
  REQUIRE_MESSAGE(r.ok(), why(r));
  return std::move(r).value();
}

}  // namespace loraflip::test
