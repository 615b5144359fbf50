// lf-bench-scaling: how loraflip's costs grow with the work (issue 16, "Cost grows as it
// should"), all measured in one run, each figure against a fresh daemon of its own:
//
//   1. publish time against adapter size (1 to 1024 MiB): a fixed cost of a few round trips,
//      then time proportional to size (a line, not a step);
//   2. acquire + release against reader processes in a tight loop at once (1 to 256): the cost
//      of one operation flat, the throughput of each process falling as they share the CPUs;
//   3. flip latency against the adapters that exist (1 to 64) and against event subscribers
//      (1 to 64);
//   4. the daemon's memory against adapters (1 to 64) and open readers (1 to 256).
//
// It prints tables and writes the same figures as JSON (--out) for plot.py. Not a test: it
// judges nothing and exits 0 once it has measured. It reuses bench/support: the daemon per run,
// the observing reader process, measure_publish, measure_acquire_release.
//
// measure.cpp measures, report.cpp prints and writes; see docs/benchmarks.md ("Scaling").
#include <cstdio>
#include <exception>

#include "bench_support.hpp"
#include "measure.hpp"
#include "options.hpp"
#include "report.hpp"

namespace lfbench::scaling {

namespace {

int run(const Options &opt) {
  const Plan p = plan(opt);
  const uint64_t t0 = now_ns();
  Figures f;
  f.load_start = loadavg();
  print_header(opt);
  f.publish = run_publish(opt, p);
  f.readers = run_readers(opt, p);
  f.adapters = run_adapters(opt, p);
  f.subscribers = run_subscribers(opt, p);
  f.load_end = loadavg();
  f.run_s = double(now_ns() - t0) / 1e9;
  print_tables(f);
  write_json(opt, f, opt.out);
  std::printf("figures written to %s (plot: bench/scaling/plot.py %s docs/scaling.png)\n",
              opt.out.c_str(), opt.out.c_str());
  return 0;
}

}  // namespace

}  // namespace lfbench::scaling

int main(int argc, char **argv) {
  lfbench::install_signal_cleanup("lf-bench-scaling");
  try {
    return lfbench::scaling::run(lfbench::scaling::parse(argc, argv));
  } catch (const std::exception &e) {
    std::fprintf(stderr, "lf-bench-scaling: %s\n", e.what());
    return 1;
  }
}
