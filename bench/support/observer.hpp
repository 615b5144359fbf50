// The observing reader: a separate process that watches the active version of one adapter and
// stamps the moment it sees each new one, so that "visible" in the figures means visible to
// another process, as a generation loop would see it.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "loraflip.h"

namespace lfbench {

// In shared memory (shared_map), written by the benchmark and the observer process.
struct alignas(64) Observer {
  std::atomic<uint32_t> mode;  // kIdle, kWatch or kQuit: set by the benchmark
  std::atomic<uint32_t> name_gen;  // bumped by observe() after it wrote `name`
  std::atomic<uint32_t> name_ack;  // the observer's answer: the name_gen it has taken up
  std::atomic<int32_t> error;      // set by the observer: its reader would not open or find
  char name[LF_MAX_ADAPTER_NAME + 1];
  // Its own cache line: the observer writes it while the benchmark polls it.
  alignas(64) std::atomic<uint64_t> seen_ns;
  std::atomic<uint64_t> seen_version;  // stored after seen_ns (release); every new version
};
enum : uint32_t {
  kIdle = 0,   // sleeps: nothing of the observer competes with the acquire runs
  kWatch = 1,  // waits on (or, with --spin, spins on) the watched adapter's version
  kQuit = 2,   // leaves
};

// The observer process's body. Two ways to watch. Waiting (the default) blocks in
// lf_reader_wait on the futex the daemon bumps at each flip, so the figure includes the
// reader's wake-up; it burns no CPU and, woken from a sleep, the reader is scheduled at once
// even when other work keeps both CPUs busy. Spinning (`spin`) polls lf_reader_active_version:
// the earliest moment a reader can see the flip, but on a machine with fewer idle CPUs than
// busy processes the spinner gets preempted for whole scheduler slices, and its stamps come late
// by milliseconds.
int observer_main(Observer &o, const std::string &dir, bool spin);

// Points the observer at `adapter` and waits until it has found it.
void observe(Observer &o, const std::string &adapter);

// Waits until the observer saw `version`; returns the moment it did.
uint64_t wait_seen(Observer &o, uint64_t version);

}  // namespace lfbench
