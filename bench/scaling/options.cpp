#include "options.hpp"

#include <cstdio>
#include <cstdlib>

#include "bench_support.hpp"

namespace lfbench::scaling {

namespace {

void usage() {
  std::printf(
      "usage: lf-bench-scaling [--quick] [--out FILE] [--daemon PATH]\n"
      "  --quick        sizes up to 64 MiB, up to 16 readers, adapters and subscribers, few\n"
      "                 repetitions: a smoke test (under 30 s), not figures to report\n"
      "  --out FILE     where the figures go as JSON, for plot.py (default: %s)\n"
      "  --daemon PATH  loraflipd to start (default: %s)\n",
      LF_BENCH_SCALING_OUT, LF_BENCH_DAEMON_PATH);
}

}  // namespace

Options parse(int argc, char **argv) {
  Options o;
  Args args(argc, argv, usage);
  while (args.next()) {
    if (args.is("--quick")) o.quick = true;
    else if (args.is("--out")) o.out = args.value();
    else if (args.is("--daemon")) o.daemon = args.value();
    else args.unknown();
  }
  return o;
}

size_t Plan::publish_reps(uint64_t mib) const {
  if (quick) return 3;
  // A 1 GiB publish and its memcpy take about 0.3 s each on a 2-CPU VM: fewer at large sizes
  // keep the run under a minute, and their spread is small next to their size anyway.
  return mib <= 16 ? 21 : mib <= 64 ? 15 : mib <= 256 ? 9 : 5;
}

Plan plan(const Options &opt) {
  Plan p;
  p.quick = opt.quick;
  if (opt.quick) {
    p.sizes_mib = {1, 4, 16, 64};
    p.readers = {1, 4, 16};
    p.adapters = {1, 4, 16};
    p.subscribers = {1, 4, 16};
    p.acquire_chunks = 5;
    p.acquire_iters = 20'000;
    p.flip_reps = 30;
  } else {
    p.sizes_mib = {1, 4, 16, 64, 256, 1024};
    p.readers = {1, 4, 16, 64, 256};
    p.adapters = {1, 4, 16, 64};
    p.subscribers = {1, 4, 16, 64};
    // 2 M operations per reader process (20 chunks of 100 k, about 1 ms of CPU each): at 256
    // readers, 5120 samples for the p99 and about 3 s of wall time on 2 CPUs.
    p.acquire_chunks = 20;
    p.acquire_iters = 100'000;
    p.flip_reps = 500;
  }
  return p;
}

}  // namespace lfbench::scaling
