// lf-bench-scaling's command line, the points of each figure, and the repetitions at each point
// (fewer points and repetitions with --quick).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#ifndef LF_BENCH_DAEMON_PATH
#define LF_BENCH_DAEMON_PATH "loraflipd"
#endif
#ifndef LF_BENCH_SCALING_OUT
#define LF_BENCH_SCALING_OUT "/tmp/lf-bench-scaling.json"
#endif

namespace lfbench::scaling {

struct Options {
  std::string daemon = LF_BENCH_DAEMON_PATH;
  std::string out = LF_BENCH_SCALING_OUT;  // the machine-readable figures (JSON)
  bool quick = false;
};

// Prints usage and exits 0 on --help; fails (throws) on anything it does not know.
Options parse(int argc, char **argv);

// What each figure is measured at, and how often.
struct Plan {
  std::vector<uint64_t> sizes_mib;     // figure 1
  std::vector<size_t> readers;         // figures 2 and 4b
  std::vector<size_t> adapters;        // figures 3a and 4a
  std::vector<size_t> subscribers;     // figure 3b
  size_t publish_reps(uint64_t mib) const;
  size_t acquire_chunks;    // per reader process
  uint64_t acquire_iters;   // per chunk
  size_t flip_reps;         // per point of figure 3
  bool quick;
};

Plan plan(const Options &opt);

}  // namespace lfbench::scaling
