#include "acquire.hpp"

#include <atomic>
#include <chrono>
#include <sys/mman.h>
#include <thread>
#include <time.h>
#include <unistd.h>
#include <vector>

#include "loraflip.h"

namespace lfbench {

namespace {

// The reader's own CPU time: with more readers than CPUs, wall time would count the time each
// one waits for a CPU, not what an acquire costs.
uint64_t thread_cpu_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ULL + uint64_t(ts.tv_nsec);
}

struct ReaderSample {
  uint64_t cpu_ns;
  uint64_t wall_ns;
  uint64_t iters;
};

// In shared memory: the benchmark starts the readers together and collects their samples.
struct AcquireShared {
  std::atomic<uint32_t> ready;
  std::atomic<uint32_t> go;
  std::atomic<uint32_t> errors;
  alignas(64) ReaderSample samples[1];  // readers * chunks, allocated past the struct
};

int acquire_reader_main(AcquireShared &s, const std::string &dir, const std::string &adapter,
                        size_t index, size_t chunks, uint64_t iters) {
  lf_reader_t *reader = nullptr;
  lf_adapter_ref_t ref = 0;
  if (lf_reader_open(dir.c_str(), &reader) != LF_OK ||
      lf_reader_find(reader, adapter.c_str(), &ref) != LF_OK) {
    s.errors.fetch_add(1);
    s.ready.fetch_add(1);
    return 1;
  }
  s.ready.fetch_add(1);
  while (s.go.load(std::memory_order_acquire) == 0) ::usleep(100);
  uint64_t check = 0;
  for (size_t c = 0; c < chunks; ++c) {
    const uint64_t w0 = now_ns(), c0 = thread_cpu_ns();
    for (uint64_t i = 0; i < iters; ++i) {
      lf_pin_t *pin = nullptr;
      if (lf_reader_acquire(reader, ref, 0, &pin) != LF_OK) {
        s.errors.fetch_add(1);
        lf_reader_close(reader);
        return 1;
      }
      check += lf_pin_version(pin);
      lf_pin_release(pin);
    }
    const uint64_t c1 = thread_cpu_ns(), w1 = now_ns();
    s.samples[index * chunks + c] = {c1 - c0, w1 - w0, iters};
  }
  lf_reader_close(reader);
  return check == 0 ? 3 : 0;  // every pin names a version >= 1
}

// One sample of the floor: thread CPU ns per handshake over `iters`.
double bare_handshake_ns(uint64_t iters) {
  struct alignas(64) Line {
    std::atomic<uint64_t> word;
  };
  auto *lines = static_cast<Line *>(shared_map(2 * sizeof(Line)));
  std::atomic<uint64_t> &active = lines[0].word;
  std::atomic<uint64_t> &pin = lines[1].word;
  active.store(uint64_t{1} << 8 | 3);
  uint64_t check = 0;
  const uint64_t c0 = thread_cpu_ns();
  for (uint64_t i = 0; i < iters; ++i) {
    uint64_t a;
    do {
      a = active.load(std::memory_order_seq_cst);
      pin.store(a << 16 | 1, std::memory_order_seq_cst);
    } while (active.load(std::memory_order_seq_cst) != a);
    check += a;
    pin.store(0, std::memory_order_release);
  }
  const uint64_t c1 = thread_cpu_ns();
  ::munmap(lines, 2 * sizeof(Line));
  if (check == 0) fail("bare handshake: impossible");
  return double(c1 - c0) / double(iters);
}

}  // namespace

AcquireFigures measure_acquire_release(const std::string &dir, const std::string &adapter,
                                       size_t readers, size_t chunks, uint64_t iters) {
  const size_t bytes = sizeof(AcquireShared) + readers * chunks * sizeof(ReaderSample);
  auto *s = static_cast<AcquireShared *>(shared_map(bytes));
  std::vector<pid_t> pids;
  for (size_t i = 0; i < readers; ++i)
    pids.push_back(spawn([&, i] { return acquire_reader_main(*s, dir, adapter, i, chunks, iters); }));
  while (s->ready.load() < readers) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const uint64_t t0 = now_ns();
  s->go.store(1, std::memory_order_release);
  int bad = 0;
  for (pid_t p : pids) bad += wait_child(p) != 0;
  const uint64_t t1 = now_ns();
  if (bad != 0 || s->errors.load() != 0) {
    ::munmap(s, bytes);
    fail(std::to_string(bad) + " acquire reader(s) failed");
  }
  std::vector<double> cpu, wall;
  AcquireFigures r;
  for (size_t i = 0; i < readers * chunks; ++i) {
    const ReaderSample &x = s->samples[i];
    cpu.push_back(double(x.cpu_ns) / double(x.iters));
    wall.push_back(double(x.wall_ns) / double(x.iters));
    r.total_ops += x.iters;
  }
  ::munmap(s, bytes);
  r.cpu_ns_per_op = stats_of(cpu);
  r.wall_ns_per_op = stats_of(wall);
  // The wall time includes the readers' wake-up from their 100 us poll: negligible against runs
  // of seconds, and this figure is only a cross-check of the per-reader ones.
  r.aggregate_mops = double(r.total_ops) / (double(t1 - t0) / 1e3);
  return r;
}

Stats measure_bare_handshake(size_t samples, uint64_t iters) {
  std::vector<double> ns;
  for (size_t r = 0; r < samples; ++r) ns.push_back(bare_handshake_ns(iters));
  return stats_of(ns);
}

}  // namespace lfbench
