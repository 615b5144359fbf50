#include "observer.hpp"

#include <chrono>
#include <cstdio>
#include <thread>
#include <unistd.h>

#include "bench_support.hpp"

namespace lfbench {

namespace {

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

int observer_main(Observer &o, const std::string &dir, bool spin) {
  lf_reader_t *reader = nullptr;
  if (lf_reader_open(dir.c_str(), &reader) != LF_OK) {
    o.error.store(1);
    return 1;
  }
  lf_adapter_ref_t ref = 0;
  uint32_t gen = 0;
  uint64_t current = 0;  // the active version last seen
  auto seen = [&](uint64_t v) {
    o.seen_ns.store(now_ns(), std::memory_order_relaxed);
    o.seen_version.store(v, std::memory_order_release);
    current = v;
  };
  for (;;) {
    const uint32_t mode = o.mode.load(std::memory_order_acquire);
    if (mode == kQuit) break;
    const uint32_t g = o.name_gen.load(std::memory_order_acquire);
    if (g != gen) {
      gen = g;
      current = 0;
      if (lf_reader_find(reader, o.name, &ref) != LF_OK ||
          lf_reader_active_version(reader, ref, &current) != LF_OK)
        o.error.store(2);
      o.name_ack.store(g, std::memory_order_release);
    }
    if (mode == kIdle) {
      ::usleep(200);
      continue;
    }
    if (spin) {
      uint64_t v = 0;
      if (lf_reader_active_version(reader, ref, &v) == LF_OK && v > current) seen(v);
      else cpu_relax();
    } else {
      // A bounded wait, so that mode and adapter changes are noticed.
      uint64_t v = 0;
      if (lf_reader_wait(reader, ref, current, 20, &v) == LF_OK) seen(v);
    }
  }
  lf_reader_close(reader);
  return 0;
}

void observe(Observer &o, const std::string &adapter) {
  std::snprintf(o.name, sizeof o.name, "%s", adapter.c_str());
  o.seen_version.store(0);
  const uint32_t g = o.name_gen.fetch_add(1) + 1;
  const uint64_t deadline = now_ns() + 5'000'000'000ULL;
  while (o.name_ack.load(std::memory_order_acquire) != g) {
    if (now_ns() > deadline) fail("the observing reader does not answer");
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  if (o.error.load() != 0) fail("the observing reader cannot find adapter " + adapter);
}

uint64_t wait_seen(Observer &o, uint64_t version) {
  const uint64_t deadline = now_ns() + 10'000'000'000ULL;
  while (o.seen_version.load(std::memory_order_acquire) < version) {
    if (now_ns() > deadline) fail("the observing reader never saw version " + std::to_string(version));
    cpu_relax();
  }
  return o.seen_ns.load(std::memory_order_relaxed);
}

}  // namespace lfbench
