// What the tests of the host implementation share (tests/device/test_device_host*.cpp): unique
// instance names cleaned up after each test, the shared-memory objects an instance left, a
// forked child, and test data.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <dirent.h>
#include <functional>
#include <string>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "device/device.hpp"

namespace dev = loraflip::device;

namespace host_test {

// Every shared-memory object of an instance: "loraflip.<instance>.*" in /dev/shm.
inline std::vector<std::string> shm_objects(const std::string &instance) {
  std::vector<std::string> out;
  const std::string prefix = "loraflip." + instance + ".";
  if (DIR *d = ::opendir("/dev/shm")) {
    while (dirent *e = ::readdir(d))
      if (std::strncmp(e->d_name, prefix.c_str(), prefix.size()) == 0) out.emplace_back(e->d_name);
    ::closedir(d);
  }
  return out;
}

inline bool shm_exists(const std::string &name) {
  struct stat st;
  return ::stat(("/dev/shm/" + name).c_str(), &st) == 0;
}

// "dt-<pid>-<n>": unique across the processes of a parallel test run (one counter for all the
// files of the test). Removes whatever the instance left in /dev/shm (a SIGKILLed writer leaves
// its event) when the test ends.
struct ScopedInstance {
  std::string name;
  ScopedInstance() {
    static std::atomic<int> counter{0};
    name = "dt-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  }
  ~ScopedInstance() {
    for (const auto &object : shm_objects(name)) ::unlink(("/dev/shm/" + object).c_str());
  }
  ScopedInstance(const ScopedInstance &) = delete;
  ScopedInstance &operator=(const ScopedInstance &) = delete;
};

// Runs `body` in a forked child and returns its exit code (or 128 + the signal that ended it).
// The child makes its own backend: a parent's backend (and its stream threads) does not
// survive fork.
inline int in_child(const std::function<int()> &body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    int code = 99;
    try {
      code = body();
    } catch (...) {
    }
    ::_exit(code);
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
}

// A copy on the null stream, waited for: the default stream is asynchronous in the stand-in, as
// in CUDA, so a copy on it has not happened when copy() returns.
inline loraflip::Status copy_now(dev::Backend &backend, void *dst, const void *src, uint64_t bytes,
                                 dev::CopyKind kind, int device) {
  loraflip::Status copied = backend.copy(dst, src, bytes, kind, device, nullptr);
  if (!copied) return copied;
  return backend.synchronize(device, nullptr);
}

inline std::vector<unsigned char> pattern(size_t n, unsigned seed) {
  std::vector<unsigned char> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = static_cast<unsigned char>((i * 131 + seed * 7 + i / 251) & 0xff);
  return v;
}

template <typename R>
std::string why(const R &r) {
  return r.ok() ? std::string() : r.error().message;
}

inline constexpr uint64_t kBytes = uint64_t{1} << 20;

}  // namespace host_test
