#include "bench_support.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

namespace lfbench {

uint64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ULL + uint64_t(ts.tv_nsec);
}

void fail(const std::string &what) { throw std::runtime_error(what); }

void check(int rc, const std::string &what, const lf_client_t *client) {
  if (rc == LF_OK) return;
  std::string msg = what + ": " + lf_strerror(rc);
  if (client != nullptr) msg += std::string(" (") + lf_client_last_error(client) + ")";
  fail(msg);
}

Stats stats_of(std::vector<double> v) {
  Stats s;
  s.n = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  s.p90 = v[std::min(n - 1, size_t(std::ceil(0.9 * double(n))) - 1)];
  return s;
}

void *shared_map(size_t bytes) {
  void *p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) fail(std::string("mmap: ") + std::strerror(errno));
  std::memset(p, 0, bytes);
  return p;
}

pid_t spawn(const std::function<int()> &body, const char *label) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) fail(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    int rc = 1;
    try {
      rc = body();
    } catch (const std::exception &e) {
      std::fprintf(stderr, "%s child %d: %s\n", label, int(::getpid()), e.what());
    }
    std::fflush(nullptr);
    ::_exit(rc);
  }
  return pid;
}

int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace lfbench
