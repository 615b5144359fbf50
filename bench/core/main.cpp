// lf-bench-core: the core figures of design.md ("Performance targets"), all measured in one run
// against baselines taken in the same run, so that ratios compare like with like.
//
//   1. publish: begin_write + copy the bytes into the slot + commit + the new version visible to
//      a reader process, for adapters of --sizes MiB, against one plain memcpy of the same bytes
//      between two pre-touched buffers of this process (interleaved with the publishes);
//   2. flip: commit request to the new version visible to a reader process (one 4 KiB tensor),
//      against a bare ZeroMQ DEALER -> ROUTER round trip over ipc:// to an echo process;
//   3. acquire + release: one reader process in a tight loop, then --readers processes at once,
//      against the bare atomic handshake (load, seq_cst store, load, release store).
//
// The benchmark starts its own loraflipd (unique instance and runtime directory under /tmp),
// and kills it and removes its arena at the end. It is not a test: it prints numbers and
// judges them against the targets, and exits 0 whether the targets are met or not.
//
// Figure 1 is measure_publish and figure 3 measure_acquire_release, both of bench/support
// (publisher.cpp, acquire.cpp), which lf-bench-scaling uses too, as it does the observing reader
// (observer.cpp); figure 2 is in publish.cpp, the echo process in echo.cpp, report.cpp prints.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "acquire.hpp"
#include "bench_support.hpp"
#include "echo.hpp"
#include "loraflip.h"
#include "observer.hpp"
#include "options.hpp"
#include "publish.hpp"
#include "report.hpp"

namespace lfbench::core {

namespace {

// The observing reader and the ZeroMQ echo process. Started before this process makes its own
// ZeroMQ context or big buffers, so that neither is copied into them by fork; stopped on every
// way out of run(), before the daemon.
class HelperProcesses {
 public:
  HelperProcesses(const std::string &dir, bool spin)
      : observer_(static_cast<Observer *>(shared_map(sizeof(Observer)))),
        echo_endpoint_("ipc://" + dir + "/bench-echo") {
    auto *echo_ready =
        static_cast<std::atomic<uint32_t> *>(shared_map(sizeof(std::atomic<uint32_t>)));
    echo_ = spawn([&] { return echo_main(echo_endpoint_, *echo_ready); });
    g_children[0] = echo_;
    observer_pid_ = spawn([&] { return observer_main(*observer_, dir, spin); });
    g_children[1] = observer_pid_;
    while (echo_ready->load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~HelperProcesses() {
    observer_->mode.store(kQuit);
    if (observer_pid_ > 0) wait_child(observer_pid_);
    if (echo_ > 0) {
      ::kill(echo_, SIGKILL);
      wait_child(echo_);
    }
    g_children[0] = g_children[1] = -1;
  }
  HelperProcesses(const HelperProcesses &) = delete;
  HelperProcesses &operator=(const HelperProcesses &) = delete;

  Observer &observer() { return *observer_; }
  const std::string &echo_endpoint() const { return echo_endpoint_; }

 private:
  Observer *observer_;  // in shared memory; left mapped until exit
  std::string echo_endpoint_;
  pid_t echo_ = -1;
  pid_t observer_pid_ = -1;
};

struct ClientGuard {
  lf_client_t *c;
  ~ClientGuard() { lf_client_close(c); }
};

// Four slots per adapter (the default history of 2, plus 2), plus room.
uint64_t arena_mib_for(const std::vector<uint64_t> &sizes_mib) {
  uint64_t mib = 64;
  for (uint64_t s : sizes_mib) mib += 4 * s;
  return mib;
}

void done(const std::string &what) {
  std::printf("  %s: done\n", what.c_str());
  std::fflush(stdout);
}

int run(const Options &opt) {
  const Repetitions reps = repetitions(opt);
  const std::string instance = "lfbench-" + std::to_string(::getpid());
  const std::string dir = "/tmp/" + instance;
  const uint64_t arena_mib = arena_mib_for(opt.sizes_mib);
  print_run_header(opt, instance, arena_mib);

  BenchDaemon daemon(opt.daemon, instance, dir,
                     {"--arena-size", std::to_string(arena_mib) + "M", "--max-readers",
                      std::to_string(opt.readers + 32)},
                     15);
  daemon.start();
  HelperProcesses helpers(dir, opt.spin);
  Observer &observer = helpers.observer();
  lf_client_t *client = nullptr;
  check(lf_client_open(dir.c_str(), 10000, &client), "lf_client_open");
  const ClientGuard client_guard{client};

  // 1. publish, every size from one pair of buffers as big as the largest.
  std::vector<PublishFigures> publish;
  {
    const CopyBuffers buffers(*std::max_element(opt.sizes_mib.begin(), opt.sizes_mib.end()) << 20);
    observer.mode.store(kWatch);
    for (uint64_t mib : opt.sizes_mib) {
      publish.push_back(measure_publish(client, observer, mib, reps.publish_for(mib), buffers));
      done("publish " + std::to_string(mib) + " MiB");
    }
  }

  // 2. flip
  const FlipFigures flip = measure_flip(client, observer, helpers.echo_endpoint(), reps.flip);
  done("flip");
  observer.mode.store(kIdle);  // nothing watches during the acquire runs
  std::this_thread::sleep_for(std::chrono::milliseconds(5));

  // 3. acquire + release, on the flip's adapter
  const Stats floor = measure_bare_handshake(reps.acquire, reps.acquire_iters);
  const AcquireFigures one =
      measure_acquire_release(dir, kFlipAdapter, 1, reps.acquire, reps.acquire_iters);
  done("acquire, 1 reader");
  const AcquireFigures many = measure_acquire_release(dir, kFlipAdapter, opt.readers,
                                                      reps.contended_chunks, reps.contended_iters);
  std::printf("  acquire, %zu readers: done\n", opt.readers);
  std::printf("load average at end: %s\n\n", loadavg().c_str());

  print_publish_table(opt, publish);
  print_flip_table(opt, flip);
  print_acquire_table(opt, reps, floor, one, many);
  print_targets(opt, publish, flip, floor, one, many);
  return 0;
}

}  // namespace

}  // namespace lfbench::core

int main(int argc, char **argv) {
  lfbench::install_signal_cleanup("lf-bench-core");
  try {
    return lfbench::core::run(lfbench::core::parse(argc, argv));
  } catch (const std::exception &e) {
    std::fprintf(stderr, "lf-bench-core: %s\n", e.what());
    return 1;
  }
}
