// Helpers for tests that run a real loraflipd and real client processes.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <sys/types.h>
#include <vector>

#include "loraflip.h"
#include "testbed/processes.hpp"

namespace lftest {

// A loraflipd child process with its own instance name and runtime directory, so that tests
// running in parallel never meet. Killed (SIGKILL) and its arena removed on destruction.
class Daemon {
 public:
  explicit Daemon(std::string tag, std::vector<std::string> extra_args = {});
  ~Daemon();
  Daemon(const Daemon &) = delete;
  Daemon &operator=(const Daemon &) = delete;

  // Starts the process and waits until its control socket answers a hello.
  void start();
  void kill9();
  // SIGTERM, then waits; returns the exit status.
  int stop();
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  const std::string &dir() const { return dir_; }
  const std::string &instance() const { return instance_; }
  std::string log() const;

 private:
  std::string instance_;
  std::string dir_;
  std::vector<std::string> extra_;
  pid_t pid_ = -1;
};

// Path of the loraflipd binary under test ($LORAFLIPD, set by meson).
std::string daemon_path();

// Runs `body` in a forked child; returns its pid. The child exits with body's return value
// and never returns into the test framework; an exception out of `body` is printed and the
// child exits 99 (testbed::spawn).
pid_t spawn(const std::function<int()> &body);
// Waits for a child; returns its exit code, or 128 + signal.
using loraflip::testbed::wait_child;

// Creates an adapter of `tensors` f32 tensors of `elements` each, history `history`, placed
// on `placement` ("host" or "cuda:N[,M]").
int create_pattern_adapter(lf_client_t *client, const std::string &name, int tensors,
                           int64_t elements, int history, const std::string &placement = "host");

// The stress pattern: 64-bit word i of a version-v slot. Distinct per version and position,
// so a byte from any other version (or a half-written one) is caught.
inline uint64_t pattern_word(uint64_t version, uint64_t i) {
  return (version * 0x9E3779B97F4A7C15ULL) ^ (i * 0xC2B2AE3D27D4EB4FULL) ^ version;
}
// The writer does not know the version a commit will get, so it writes a "generation" g and
// the daemon's versions equal the commit count: g == version as long as every commit succeeds.
void fill_pattern(lf_writer_t *writer, uint64_t version);
// Counts the 64-bit words of every tensor of `pin` that do not match pin's version; in the
// copy on device `device` (a tensor-parallel replica) when it is >= 0.
uint64_t count_torn(const lf_pin_t *pin, int device = -1);

std::string unique_tag(const std::string &base);
void sleep_ms(int ms);
uint64_t now_ms();

// Polls `condition` every 10 ms until it holds or `timeout_ms` passes; returns elapsed ms or -1.
int64_t wait_until(const std::function<bool()> &condition, int timeout_ms);

// Parses `"key":<number>` out of flat JSON text (enough for the daemon's replies in tests).
int64_t json_number(const std::string &json, const std::string &key);

}  // namespace lftest
