#include "report.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <thread>

namespace lfbench::core {

namespace {

const char *verdict(bool met) { return met ? "MET" : "MISSED"; }

double us(double ns) { return ns / 1e3; }

// How the observing reader watched (observer.hpp): the "visible" figures depend on it.
const char *how_observed(const Options &opt) {
  return opt.spin ? "spinning on lf_reader_active_version" : "blocked in lf_reader_wait";
}

}  // namespace

void print_run_header(const Options &opt, const std::string &instance, uint64_t arena_mib) {
  std::printf("lf-bench-core: loraflip core benchmark%s\n", opt.quick ? " (--quick: smoke test)" : "");
  std::printf("machine: %s, %u online CPUs\n", cpu_model().c_str(),
              unsigned(std::thread::hardware_concurrency()));
  std::printf("load average at start: %s\n", loadavg().c_str());
  std::printf("daemon: %s (instance %s, arena %" PRIu64 " MiB)\n\n", opt.daemon.c_str(),
              instance.c_str(), arena_mib);
  std::fflush(stdout);
}

void print_publish_table(const Options &opt, const std::vector<PublishFigures> &rows) {
  std::printf("1. Publish: begin_write + lf_writer_copy_in of every tensor + commit + new version\n"
              "   seen by a reader process %s; against one\n"
              "   memcpy of the same bytes between two pre-touched buffers (interleaved).\n"
              "   Every slot of the ring was written before timing (8 warm-up publishes).\n"
              "   ratio and pub-memcpy: from the two medians.\n", how_observed(opt));
  std::printf("   %-8s %7s %4s | %9s %9s | %9s %9s | %6s %10s || %9s | %9s %9s %11s\n", "size",
              "tensors", "reps", "publish", "p90", "memcpy", "p90", "ratio", "pub-memcpy",
              "memcpy/t", "begin", "copy_in", "commit->vis");
  std::printf("   %-8s %7s %4s | %9s %9s | %9s %9s | %6s %10s || %9s | %9s %9s %11s\n", "", "", "",
              "med us", "us", "med us", "us", "", "med us", "med us", "med us", "med us", "med us");
  for (const auto &r : rows)
    std::printf("   %-8s %7zu %4zu | %9.1f %9.1f | %9.1f %9.1f | %5.2fx %10.1f || %9.1f | %9.1f %9.1f %11.1f\n",
                (std::to_string(r.mib) + " MiB").c_str(), r.tensors, r.reps, us(r.total.median),
                us(r.total.p90), us(r.memcpy_.median), us(r.memcpy_.p90),
                r.total.median / r.memcpy_.median, us(r.total.median - r.memcpy_.median),
                us(r.chunked.median), us(r.begin.median), us(r.copy.median), us(r.visible.median));
  std::printf("   memcpy/t: the same bytes heap to heap in one memcpy per tensor (not a target;\n"
              "   it tells the cost of the shared-memory slot from that of per-tensor copies).\n"
              "   begin, copy_in, commit->vis: the parts of the publish (medians of each part).\n");
}

void print_flip_table(const Options &opt, const FlipFigures &flip) {
  std::printf("\n2. Flip: commit request -> new version seen by the reader process (%s;\n"
              "   one 4 KiB tensor), against a bare ZeroMQ DEALER->ROUTER round trip over ipc://\n"
              "   to an echo process (48-byte message), interleaved; %zu repetitions each.\n",
              how_observed(opt), flip.reps);
  std::printf("   %-40s %10s %10s\n", "", "median us", "p90 us");
  std::printf("   %-40s %10.1f %10.1f\n", "flip (commit request -> visible)", us(flip.visible.median),
              us(flip.visible.p90));
  std::printf("   %-40s %10.1f %10.1f\n", "commit round trip (request -> reply)",
              us(flip.commit_rtt.median), us(flip.commit_rtt.p90));
  std::printf("   %-40s %10.1f %10.1f\n", "bare ZeroMQ round trip", us(flip.zmq_rtt.median),
              us(flip.zmq_rtt.p90));
  std::printf("   %-40s %9.2fx\n", "flip / ZeroMQ round trip (medians)",
              flip.visible.median / flip.zmq_rtt.median);
}

void print_acquire_table(const Options &opt, const Repetitions &reps, const Stats &floor,
                         const AcquireFigures &one, const AcquireFigures &many) {
  std::printf("\n3. Acquire + release (lf_reader_acquire + lf_pin_release, one 4 KiB adapter).\n"
              "   ns per op = the reader's own thread CPU time / its iterations, per chunk;\n"
              "   median and p90 over readers x chunks.\n");
  std::printf("   %-44s %8s %9s %9s %11s\n", "", "samples", "median ns", "p90 ns", "wall med ns");
  std::printf("   %-44s %8zu %9.1f %9.1f %11s\n", "bare atomic handshake (floor, this process)",
              floor.n, floor.median, floor.p90, "-");
  std::printf("   %-44s %8zu %9.1f %9.1f %11.1f\n",
              ("1 reader process, " + std::to_string(reps.acquire_iters / 1000000) + "M ops per chunk")
                  .c_str(),
              one.cpu_ns_per_op.n, one.cpu_ns_per_op.median, one.cpu_ns_per_op.p90,
              one.wall_ns_per_op.median);
  std::printf("   %-44s %8zu %9.1f %9.1f %11.1f\n",
              (std::to_string(opt.readers) + " reader processes, " +
               std::to_string(reps.contended_iters / 1000) + "k ops per chunk")
                  .c_str(),
              many.cpu_ns_per_op.n, many.cpu_ns_per_op.median, many.cpu_ns_per_op.p90,
              many.wall_ns_per_op.median);
  std::printf("   %zu readers / 1 reader (medians): %.2fx; 1 reader / floor: %.2fx\n", opt.readers,
              many.cpu_ns_per_op.median / one.cpu_ns_per_op.median,
              one.cpu_ns_per_op.median / floor.median);
  std::printf("   aggregate: 1 reader %.1f Mops/s, %zu readers %.1f Mops/s (all CPUs, wall clock)\n",
              one.aggregate_mops, opt.readers, many.aggregate_mops);
}

void print_targets(const Options &opt, const std::vector<PublishFigures> &rows,
                   const FlipFigures &flip, const Stats &floor, const AcquireFigures &one,
                   const AcquireFigures &many) {
  std::printf("\nTargets (design.md, \"Performance targets\"):\n");
  for (const auto &r : rows) {
    if (r.mib != 32) continue;
    const double bound = 1.2 * r.memcpy_.median + flip.visible.median;
    std::printf("  publish 32 MiB <= 1.2 x memcpy + flip: %.1f us vs %.1f us (1.2 x %.1f + %.1f): %s\n",
                us(r.total.median), us(bound), us(r.memcpy_.median), us(flip.visible.median),
                verdict(r.total.median <= bound));
  }
  if (std::find(opt.sizes_mib.begin(), opt.sizes_mib.end(), 32) == opt.sizes_mib.end())
    std::printf("  publish 32 MiB: not measured (32 not in --sizes)\n");
  const double flip_ratio = flip.visible.median / flip.zmq_rtt.median;
  std::printf("  flip <= about one ZeroMQ round trip (ratio <= 1.2): %.2fx: %s\n", flip_ratio,
              verdict(flip_ratio <= 1.2));
  std::printf("  acquire + release < 50 ns uncontended: %.1f ns: %s\n", one.cpu_ns_per_op.median,
              verdict(one.cpu_ns_per_op.median < 50));
  const double flat = many.cpu_ns_per_op.median / one.cpu_ns_per_op.median;
  std::printf("  flat to %zu readers (median ratio <= 1.2): %.2fx: %s\n", opt.readers, flat,
              verdict(flat <= 1.2));
  std::printf("  bare handshake about 10 ns (reference, not a target): %.1f ns\n", floor.median);
  std::printf("  /dev/shm safetensors and GPU targets: not measured here (Python package; no GPU)\n");
}

}  // namespace lfbench::core
