// Helpers the benchmarks share: clocks, statistics, forking reader processes, error checks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <sys/types.h>
#include <vector>

#include "loraflip.h"

namespace lfbench {

// CLOCK_MONOTONIC: one clock for every process of the machine, so stamps taken in a reader
// process compare with the writer's.
uint64_t now_ns();

[[noreturn]] void fail(const std::string &what);
// Fails with the status's name and, given a client, its last error.
void check(int rc, const std::string &what, const lf_client_t *client = nullptr);

struct Stats {
  double median = 0, p90 = 0;
  size_t n = 0;
};
// Median (mean of the two middle values for an even count) and p90 (nearest rank).
Stats stats_of(std::vector<double> v);

// Maps `bytes` of zeroed memory shared with every process forked afterwards.
void *shared_map(size_t bytes);

// Forks; the child runs `body` and leaves with _exit, never returning into the parent's
// cleanup (it must not touch the parent's ZeroMQ context, daemon handle, buffers or GPU
// context). Ctrl-C reaches the whole process group, so children restore the default handlers
// and only the parent cleans up. `label` prefixes a child's error message.
pid_t spawn(const std::function<int()> &body, const char *label = "lf-bench");
// Waits for a child: its exit code, or 128 + the signal that ended it.
int wait_child(pid_t pid);

}  // namespace lfbench
