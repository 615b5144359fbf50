// lf-bench-core's command line, and the repetitions each figure takes (fewer with --quick).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#ifndef LF_BENCH_DAEMON_PATH
#define LF_BENCH_DAEMON_PATH "loraflipd"
#endif

namespace lfbench::core {

struct Options {
  std::string daemon = LF_BENCH_DAEMON_PATH;
  bool quick = false;
  std::vector<uint64_t> sizes_mib = {1, 32, 256};
  size_t readers = 64;
  bool spin = false;
};

// Prints usage and exits 0 on --help; fails (throws) on anything it does not know.
Options parse(int argc, char **argv);

struct Repetitions {
  size_t publish_small;  // sizes up to 64 MiB
  size_t publish_large;
  size_t flip;
  size_t acquire;            // chunks of the one-reader run, and samples of the floor
  uint64_t acquire_iters;    // per chunk
  size_t contended_chunks;   // per reader of the many-reader run
  uint64_t contended_iters;  // per chunk

  size_t publish_for(uint64_t mib) const { return mib <= 64 ? publish_small : publish_large; }
};

Repetitions repetitions(const Options &opt);

}  // namespace lfbench::core
