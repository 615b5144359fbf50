// The four figures of lf-bench-scaling, each measured against a daemon of its own (started
// fresh, so that one figure's adapters, readers and heap do not weigh on the next).
#pragma once

#include <cstddef>
#include <cstdint>
#include <sys/types.h>
#include <vector>

#include "acquire.hpp"
#include "bench_support.hpp"
#include "options.hpp"
#include "publisher.hpp"

namespace lfbench::scaling {

// Figure 2: acquire + release with `readers` processes in a tight loop at once.
struct AcquireRow {
  size_t readers;
  AcquireFigures figures;
};

// Figure 3: one point of a flip curve (times in ns). `event*` only for subscribers.
struct FlipRow {
  size_t count;  // adapters that exist, or event subscribers
  size_t reps;
  Stats visible;     // commit request .. the new version seen by the observing reader
  Stats event;       // commit request .. an event received, pooled over subscribers and reps
  Stats event_last;  // commit request .. the last subscriber's event, per rep (n = 0: none)
};

// The daemon's memory from /proc/<pid>/status, in KiB, and what its stats said it held.
struct DaemonMemory {
  uint64_t rss_kib = 0;    // VmRSS
  uint64_t anon_kib = 0;   // RssAnon: heap, stacks, ZeroMQ's buffers
  uint64_t shmem_kib = 0;  // RssShmem: the pages of the arena it has touched
  uint64_t held = 0;       // the daemon's own count: adapters, or readers (lf_client_stats)
};

// Figure 4: one point of a memory curve.
struct MemoryRow {
  size_t count;  // adapters, or open readers
  DaemonMemory memory;
};

// Figure 1: publish against the size (bench/support's measure_publish at each size).
std::vector<PublishFigures> run_publish(const Options &opt, const Plan &plan);

// Figures 2 and 4b: for each reader count, the daemon's memory with that many reader processes
// idle (each holding one pin), then acquire + release with that many processes in a loop.
struct ReaderFigures {
  std::vector<AcquireRow> acquire;
  std::vector<MemoryRow> memory;  // from 0 readers
};
ReaderFigures run_readers(const Options &opt, const Plan &plan);

// Figures 3a and 4a: for each adapter count, the daemon's memory once that many 4 KiB adapters
// exist (each with one version), then the flip of the newest one.
struct AdapterFigures {
  std::vector<FlipRow> flip;
  std::vector<MemoryRow> memory;  // from 0 adapters
};
AdapterFigures run_adapters(const Options &opt, const Plan &plan);

// Figure 3b: the flip of one 4 KiB adapter with that many event subscriber processes, from 0
// (nobody subscribed) on.
std::vector<FlipRow> run_subscribers(const Options &opt, const Plan &plan);

}  // namespace lfbench::scaling
