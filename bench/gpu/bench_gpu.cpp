// lf-bench-gpu: publishing a device-placed adapter, against the bare device-to-device copy of
// the same bytes, measured in one run (interleaved, so that both see the same GPU state).
//
//   publish  = begin_write + lf_writer_copy_in_async of every tensor from a device buffer on
//              one stream + lf_writer_commit (the daemon waits on the commit's interprocess
//              event, then flips) + the new version visible to a reader in another process
//              (lf_reader_wait);
//   baseline = one cudaMemcpyAsync device to device of the same bytes + cudaStreamSynchronize.
//
// The adapter: 32 MiB of f16 under PEFT's names (32 layers of q/k/v/o_proj, r = 16, hidden
// 4096), placed on "cuda:0"; with two GPUs or more, also on "cuda:0,1" (the daemon copies each
// version to device 1 before the flip).
//
// It starts its own loraflipd (--devices 0[,1] --device-arena-size 512M) under /tmp and
// removes it at the end. Without a usable CUDA device it prints one "skipped" line and exits 0.
// It is not a test: it prints numbers, and exits 0 whatever they are.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <sys/mman.h>
#include <sys/wait.h>
#include <thread>
#include <time.h>
#include <unistd.h>
#include <vector>

#include <cuda_runtime.h>

#include "bench_support.hpp"
#include "loraflip.h"

#ifndef LF_BENCH_DAEMON_PATH
#define LF_BENCH_DAEMON_PATH "loraflipd"
#endif

namespace {

using namespace lfbench;

void cuda_check(cudaError_t e, const char *what) {
  if (e != cudaSuccess) fail(std::string(what) + ": " + cudaGetErrorString(e));
}

// How many CUDA devices there are, asked in a child process so that this one forks its reader
// before it initializes CUDA. `why` receives the runtime's message when there are none.
int probe_devices(std::string &why) {
  struct Probe {
    int count;
    char message[256];
  };
  auto *probe = static_cast<Probe *>(shared_map(sizeof(Probe)));
  const pid_t pid = spawn([&] {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    probe->count = e == cudaSuccess ? n : 0;
    std::snprintf(probe->message, sizeof probe->message, "%s",
                  e == cudaSuccess ? "no CUDA device" : cudaGetErrorString(e));
    return 0;
  });
  const int rc = wait_child(pid);
  const int count = rc == 0 ? probe->count : 0;
  why = rc == 0 ? probe->message : "the CUDA probe process died (exit " + std::to_string(rc) + ")";
  ::munmap(probe, sizeof(Probe));
  return count;
}

// ---------------------------------------------------------------------------------------------
// The adapter (testbed::peft_attention_lora): 32 layers x q/k/v/o_proj x lora_A [16, 4096] and
// lora_B [4096, 16], f16.

constexpr int kLayers = 32;
constexpr int kRank = 16;
constexpr int64_t kHidden = 4096;

using loraflip::testbed::TensorShape;

// ---------------------------------------------------------------------------------------------
// The observing reader: another process, blocked in lf_reader_wait on the adapter it is told
// to watch, stamping the moment each new version becomes visible. It never touches CUDA.

constexpr int kAdapters = 2;

struct alignas(64) Observer {
  std::atomic<uint32_t> quit;
  std::atomic<uint32_t> watch;  // index of the adapter watched
  std::atomic<int32_t> error;
  alignas(64) std::atomic<uint64_t> seen_ns[kAdapters];
  std::atomic<uint64_t> seen_version[kAdapters];  // stored after seen_ns (release)
};

int observer_main(Observer &o, const std::string &dir, const std::vector<std::string> &names) {
  lf_reader_t *reader = nullptr;
  if (lf_reader_open(dir.c_str(), &reader) != LF_OK) {
    o.error.store(1);
    return 1;
  }
  lf_adapter_ref_t refs[kAdapters] = {};
  uint64_t current[kAdapters] = {};
  for (size_t i = 0; i < names.size(); ++i)
    if (lf_reader_find(reader, names[i].c_str(), &refs[i]) != LF_OK ||
        lf_reader_active_version(reader, refs[i], &current[i]) != LF_OK)
      o.error.store(2);
  while (o.quit.load(std::memory_order_acquire) == 0) {
    const uint32_t i = o.watch.load(std::memory_order_acquire);
    if (i >= names.size()) {
      ::usleep(200);
      continue;
    }
    uint64_t v = 0;
    // Bounded, so that a change of the watched adapter and quit are noticed.
    if (lf_reader_wait(reader, refs[i], current[i], 20, &v) == LF_OK) {
      o.seen_ns[i].store(now_ns(), std::memory_order_relaxed);
      o.seen_version[i].store(v, std::memory_order_release);
      current[i] = v;
    }
  }
  lf_reader_close(reader);
  return 0;
}

uint64_t wait_seen(Observer &o, uint32_t i, uint64_t version) {
  const uint64_t deadline = now_ns() + 10'000'000'000ULL;
  while (o.seen_version[i].load(std::memory_order_acquire) < version) {
    if (now_ns() > deadline)
      fail("the observing reader never saw version " + std::to_string(version));
    if (o.error.load() != 0) fail("the observing reader failed to open or find the adapters");
  }
  return o.seen_ns[i].load(std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------------------------

struct Options {
  std::string daemon = LF_BENCH_DAEMON_PATH;
  int iterations = 50;
  int warmup = 5;
};

void usage() {
  std::printf("usage: lf-bench-gpu [--daemon PATH] [--iterations N (50)] [--warmup N (5)]\n");
}

Options parse(int argc, char **argv) {
  Options o;
  Args args(argc, argv, usage);
  while (args.next()) {
    if (args.is("--daemon")) o.daemon = args.value();
    else if (args.is("--iterations")) o.iterations = std::max(1, std::atoi(args.value().c_str()));
    else if (args.is("--warmup")) o.warmup = std::max(0, std::atoi(args.value().c_str()));
    else args.unknown();
  }
  return o;
}

struct Row {
  std::string placement;
  Stats publish, copy;
};

int run(const Options &opt) {
  std::string why;
  const int gpus = probe_devices(why);
  if (gpus < 1) {
    std::printf("lf-bench-gpu: skipped: no usable CUDA device (%s)\n", why.c_str());
    return 0;
  }
  const bool replicate = gpus >= 2;
  const std::vector<TensorShape> tensors =
      loraflip::testbed::peft_attention_lora(kLayers, kRank, kHidden);
  uint64_t total = 0;
  for (const auto &t : tensors) total += t.nbytes;

  const std::string instance = "lfbenchgpu-" + std::to_string(::getpid());
  // Device arenas take a while to allocate: a longer start timeout.
  BenchDaemon daemon(opt.daemon, instance, "/tmp/" + instance,
                     {"--arena-size", "64M", "--devices", replicate ? "0,1" : "0",
                      "--device-arena-size", "512M"},
                     30);
  daemon.start();
  lf_client_t *client = nullptr;
  check(lf_client_open(daemon.dir().c_str(), 30000, &client), "lf_client_open");
  std::vector<std::pair<std::string, std::string>> adapters = {{"gpu-single", "cuda:0"}};
  if (replicate) adapters.push_back({"gpu-replicated", "cuda:0,1"});
  std::vector<std::string> names;
  for (const auto &[name, placement] : adapters) {
    create_lora_adapter(client, name, tensors, kRank, placement);
    names.push_back(name);
  }

  auto *observer = static_cast<Observer *>(shared_map(sizeof(Observer)));
  observer->watch.store(kAdapters);  // none yet
  const pid_t observer_pid = spawn([&] { return observer_main(*observer, daemon.dir(), names); });
  g_children[0] = observer_pid;

  // From here on this process uses CUDA (after every fork).
  cuda_check(cudaSetDevice(0), "cudaSetDevice(0)");
  cudaDeviceProp prop{};
  cuda_check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  void *src = nullptr, *dst = nullptr;
  cuda_check(cudaMalloc(&src, total), "cudaMalloc (source)");
  cuda_check(cudaMalloc(&dst, total), "cudaMalloc (baseline destination)");
  cuda_check(cudaMemset(src, 0x3c, total), "cudaMemset");  // f16 0x3c3c: 1.06, finite
  cuda_check(cudaMemset(dst, 0, total), "cudaMemset");
  cudaStream_t stream = nullptr;
  cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");

  std::printf("lf-bench-gpu: %s (%d GPU%s), adapter of %zu f16 tensors, %.1f MiB, %d iterations "
              "(+%d warm-up)\n",
              prop.name, gpus, gpus == 1 ? "" : "s", tensors.size(), double(total) / (1 << 20),
              opt.iterations, opt.warmup);

  std::vector<Row> rows;
  for (uint32_t a = 0; a < adapters.size(); ++a) {
    const std::string &name = adapters[a].first;
    observer->watch.store(a, std::memory_order_release);
    std::vector<double> publish_ms, copy_ms;
    for (int it = 0; it < opt.warmup + opt.iterations; ++it) {
      // publish: begin_write, the copies on `stream`, commit (the daemon waits on the event),
      // then visible to the reader process.
      const uint64_t t0 = now_ns();
      lf_writer_t *w = nullptr;
      check(lf_client_begin_write(client, name.c_str(), 0, &w), "begin_write", client);
      uint64_t offset = 0;
      for (size_t i = 0; i < tensors.size(); ++i) {
        const int rc = lf_writer_copy_in_async(w, i, static_cast<const char *>(src) + offset,
                                               tensors[i].nbytes, 0, stream);
        if (rc != LF_OK) {
          lf_writer_abort(w);
          check(rc, "lf_writer_copy_in_async", client);
        }
        offset += tensors[i].nbytes;
      }
      uint64_t version = 0;
      check(lf_writer_commit(w, 0, &version), "commit", client);
      const uint64_t t1 = wait_seen(*observer, a, version);

      // baseline: the same bytes, one device-to-device copy on the same stream.
      const uint64_t c0 = now_ns();
      cuda_check(cudaMemcpyAsync(dst, src, total, cudaMemcpyDeviceToDevice, stream),
                 "cudaMemcpyAsync");
      cuda_check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      const uint64_t c1 = now_ns();
      if (it >= opt.warmup) {
        publish_ms.push_back(double(t1 - t0) / 1e6);
        copy_ms.push_back(double(c1 - c0) / 1e6);
      }
    }
    rows.push_back({adapters[a].second, stats_of(publish_ms), stats_of(copy_ms)});
  }
  observer->watch.store(kAdapters);
  observer->quit.store(1, std::memory_order_release);
  wait_child(observer_pid);
  g_children[0] = -1;

  // One check that the bytes arrived: the last version's first and last tensors on every
  // device of every adapter, against the source.
  lf_reader_t *reader = nullptr;
  check(lf_reader_open(daemon.dir().c_str(), &reader), "lf_reader_open");
  std::vector<char> want(tensors[0].nbytes), got(tensors[0].nbytes);
  cuda_check(cudaMemcpy(want.data(), src, want.size(), cudaMemcpyDeviceToHost), "cudaMemcpy");
  for (const auto &[name, placement] : adapters) {
    lf_adapter_ref_t ref = 0;
    check(lf_reader_find(reader, name.c_str(), &ref), "lf_reader_find");
    lf_pin_t *pin = nullptr;
    check(lf_reader_acquire(reader, ref, 0, &pin), "lf_reader_acquire");
    for (int device = 0; device < (placement == "cuda:0" ? 1 : 2); ++device)
      for (size_t i : {size_t(0), tensors.size() - 1}) {
        lf_tensor_view_t view;
        check(lf_pin_tensor_on_device(pin, i, device, &view), "lf_pin_tensor_on_device");
        cuda_check(cudaMemcpy(got.data(), view.data, got.size(), cudaMemcpyDeviceToHost),
                   "cudaMemcpy (check)");
        if (got != want)
          fail(name + ": tensor " + std::to_string(i) + " on cuda:" + std::to_string(device) +
               " differs from the source");
      }
    lf_pin_release(pin);
  }
  lf_reader_close(reader);

  std::printf("\n%-12s %10s %10s %10s %10s %8s\n", "placement", "publish", "p90", "d2d copy",
              "p90", "ratio");
  for (const Row &r : rows)
    std::printf("%-12s %8.3fms %8.3fms %8.3fms %8.3fms %7.1fx\n", r.placement.c_str(),
                r.publish.median, r.publish.p90, r.copy.median, r.copy.p90,
                r.copy.median > 0 ? r.publish.median / r.copy.median : 0.0);
  std::printf("\npublish: begin_write + %zu lf_writer_copy_in_async (device 0 to the slot) + "
              "commit (event wait, flip) + visible to a reader process;\nd2d copy: one "
              "cudaMemcpyAsync of the same %.1f MiB + cudaStreamSynchronize; ratio of medians.%s\n",
              tensors.size(), double(total) / (1 << 20),
              replicate ? "" : "\ncuda:0,1 (replication) skipped: one GPU only.");

  cudaStreamDestroy(stream);
  cudaFree(src);
  cudaFree(dst);
  lf_client_close(client);
  return 0;
}

}  // namespace

int main(int argc, char **argv) {
  install_signal_cleanup("lf-bench-gpu");
  try {
    return run(parse(argc, argv));
  } catch (const std::exception &e) {
    std::fprintf(stderr, "lf-bench-gpu: %s\n", e.what());
    return 1;
  }
}
