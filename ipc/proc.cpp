#include "ipc/proc.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <unistd.h>

namespace loraflip::ipc {
namespace {

struct StatFields {
  char state = '?';
  uint64_t start = 0;
};

// Reads the state (field 3) and start time (field 22) of /proc/<pid>/stat. The command name
// (field 2) may hold spaces and parentheses, so parsing starts after its last ')'.
bool read_stat(pid_t pid, StatFields *out) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[1024];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  const char *p = std::strrchr(buf, ')');
  if (p == nullptr || p[1] != ' ') return false;
  p += 2;
  out->state = *p;
  // After ')' come field 3 (state) .. field 22 (starttime): skip 19 separators.
  for (int field = 3; field < 22; ++field) {
    p = std::strchr(p, ' ');
    if (p == nullptr) return false;
    ++p;
  }
  out->start = std::strtoull(p, nullptr, 10);
  return true;
}

}  // namespace

uint64_t process_start_time(pid_t pid) {
  StatFields f;
  return read_stat(pid, &f) ? f.start : 0;
}

bool process_alive(pid_t pid, uint64_t start) {
  if (pid <= 0) return false;
  StatFields f;
  if (!read_stat(pid, &f)) return false;  // no /proc entry: the process is gone
  if (f.state == 'Z' || f.state == 'X') return false;
  return start == 0 || f.start == start;
}

uint64_t unix_now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

uint64_t monotonic_now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace loraflip::ipc
