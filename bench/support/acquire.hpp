// Acquire + release from reader processes in a tight loop, and the bare atomic handshake that
// every acquire is built on (lf-bench-core's figure 3, lf-bench-scaling's figure 2).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "bench_support.hpp"

namespace lfbench {

struct AcquireFigures {
  Stats cpu_ns_per_op;   // per reader and chunk: thread CPU time / iterations
  Stats wall_ns_per_op;  // per reader and chunk: wall time / iterations
  double aggregate_mops = 0;  // all readers' operations / wall time of the whole run
  uint64_t total_ops = 0;
};

// `readers` reader processes at once, each acquiring and releasing `adapter` in a tight loop,
// `chunks` x `iters` times, timed per chunk.
AcquireFigures measure_acquire_release(const std::string &dir, const std::string &adapter,
                                       size_t readers, size_t chunks, uint64_t iters);

// The floor: the same handshake on bare atomics in shared memory, with no API around it (load,
// seq_cst store, load, release store), in this process; `samples` runs of `iters` each, in
// thread CPU ns per handshake.
Stats measure_bare_handshake(size_t samples, uint64_t iters);

}  // namespace lfbench
