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
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
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

#include <zmq.h>

#include "bench_support.hpp"
#include "loraflip.h"

#ifndef LF_BENCH_DAEMON_PATH
#define LF_BENCH_DAEMON_PATH "loraflipd"
#endif

namespace {

using namespace lfbench;

// ---------------------------------------------------------------------------------------------
// Small helpers

uint64_t thread_cpu_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ULL + uint64_t(ts.tv_nsec);
}

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// ---------------------------------------------------------------------------------------------
// Adapters: PEFT-like tensor sets of an exact byte size.

struct TensorShape {
  std::string name;
  int64_t shape[2];
  uint64_t nbytes;
};

// `mib` MiB of f16 LoRA tensors: `layers` layers of q/k/v/o_proj, lora_A [r, 4096] and
// lora_B [4096, r] each, so bytes = layers * 8 * r * 4096 * 2 = layers * r * 64 KiB. Picks the
// most layers (up to 32, a 7-8B model) whose rank is a whole number of at least 8.
std::vector<TensorShape> peft_tensors(uint64_t mib) {
  constexpr int64_t kHidden = 4096;
  const uint64_t units = mib * 16;  // 64 KiB units
  uint64_t layers = 1;
  for (uint64_t l : {32, 16, 8, 4, 2, 1})
    if (units % l == 0 && (units / l >= 8 || l == 1)) {
      layers = l;
      break;
    }
  const int64_t rank = int64_t(units / layers);
  std::vector<TensorShape> out;
  for (uint64_t l = 0; l < layers; ++l)
    for (const char *m : {"q_proj", "k_proj", "v_proj", "o_proj"})
      for (const char *ab : {"A", "B"}) {
        TensorShape t;
        t.name = "base_model.model.model.layers." + std::to_string(l) + ".self_attn." + m +
                 ".lora_" + ab + ".weight";
        t.shape[0] = *ab == 'A' ? rank : kHidden;
        t.shape[1] = *ab == 'A' ? kHidden : rank;
        t.nbytes = uint64_t(rank) * kHidden * 2;
        out.push_back(t);
      }
  return out;
}

void create_adapter(lf_client_t *c, const std::string &name, const std::vector<TensorShape> &ts,
                    int rank) {
  lf_spec_t *spec = nullptr;
  check(lf_spec_new(&spec), "lf_spec_new");
  for (const auto &t : ts)
    check(lf_spec_add_tensor(spec, t.name.c_str(), LF_DTYPE_F16, 2, t.shape), "add tensor");
  check(lf_spec_set_lora(spec, rank, 2.0 * rank, "q_proj,k_proj,v_proj,o_proj", 0), "set lora");
  check(lf_spec_set_slots(spec, 0, -1), "set slots");  // history: the daemon's default (2)
  const int rc = lf_client_create_adapter(c, name.c_str(), spec);
  lf_spec_free(spec);
  check(rc, "create adapter " + name, c);
}

// ---------------------------------------------------------------------------------------------
// The observing reader: a separate process that spins on the active version and stamps the
// moment it sees the one the writer expects.

struct alignas(64) Observer {
  std::atomic<uint32_t> mode;  // kIdle: sleeps; kSpin: spins; kQuit: leaves
  std::atomic<uint32_t> name_gen;
  std::atomic<uint32_t> name_ack;
  std::atomic<int32_t> error;
  char name[LF_MAX_ADAPTER_NAME + 1];
  alignas(64) std::atomic<uint64_t> seen_ns;
  std::atomic<uint64_t> seen_version;  // stored after seen_ns (release); every new version
};
enum : uint32_t { kIdle = 0, kSpin = 1, kQuit = 2 };

// Two ways to watch. Waiting (the default) blocks in lf_reader_wait on the futex the daemon bumps
// at each flip, so the figure includes the reader's wake-up; it burns no CPU and, woken from a
// sleep, the reader is scheduled at once even when other work keeps both CPUs busy. Spinning
// (--spin) polls lf_reader_active_version: the earliest moment a reader can see the flip, but
// on a machine with fewer idle CPUs than busy processes the spinner gets preempted for whole
// scheduler slices, and its stamps come late by milliseconds.
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

// Waits until the observer saw `version`; returns the moment it did.
uint64_t wait_seen(Observer &o, uint64_t version) {
  const uint64_t deadline = now_ns() + 10'000'000'000ULL;
  while (o.seen_version.load(std::memory_order_acquire) < version) {
    if (now_ns() > deadline) fail("the observing reader never saw version " + std::to_string(version));
    cpu_relax();
  }
  return o.seen_ns.load(std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------------------------
// The ZeroMQ echo process: a ROUTER that sends every message back as it came.

int echo_main(const std::string &endpoint, std::atomic<uint32_t> &ready) {
  void *ctx = zmq_ctx_new();
  void *router = zmq_socket(ctx, ZMQ_ROUTER);
  int zero = 0;
  zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof zero);
  if (zmq_bind(router, endpoint.c_str()) != 0) return 1;
  ready.store(1);
  std::vector<zmq_msg_t> frames(8);
  for (;;) {
    size_t n = 0;
    int more = 1;
    while (more && n < frames.size()) {
      zmq_msg_init(&frames[n]);
      if (zmq_msg_recv(&frames[n], router, 0) < 0) return 2;
      more = zmq_msg_more(&frames[n]);
      ++n;
    }
    for (size_t i = 0; i < n; ++i)
      zmq_msg_send(&frames[i], router, i + 1 < n ? ZMQ_SNDMORE : 0);  // send takes ownership
  }
}

// ---------------------------------------------------------------------------------------------
// Acquire + release readers (processes).

struct ReaderSample {
  uint64_t cpu_ns;
  uint64_t wall_ns;
  uint64_t iters;
};

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

struct AcquireResult {
  Stats cpu_ns_per_op;   // per reader and chunk: thread CPU time / iterations
  Stats wall_ns_per_op;  // per reader and chunk: wall time / iterations
  double aggregate_mops = 0;  // all readers' operations / wall time of the whole run
  uint64_t total_ops = 0;
};

AcquireResult run_acquire_readers(const std::string &dir, const std::string &adapter,
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
  AcquireResult r;
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

// The floor: the same handshake on bare atomics, in shared memory, with no API around it.
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

// ---------------------------------------------------------------------------------------------
// Publishing

struct Publisher {
  lf_client_t *client;
  Observer &observer;
  std::string name;
  std::vector<uint64_t> offsets;  // of each tensor in the prepared source buffer
  std::vector<uint64_t> sizes;
  const std::byte *src;
  uint64_t last_version = 0;

  struct Timing {
    uint64_t total_ns;      // begin_write .. visible to the observer
    uint64_t begin_ns;      // begin_write request
    uint64_t copy_ns;       // lf_writer_copy_in of every tensor
    uint64_t visible_ns;    // commit request .. visible to the observer
    uint64_t commit_rtt_ns; // commit request .. its reply
  };

  Timing publish() {
    const uint64_t expect = last_version + 1;
      const uint64_t t0 = now_ns();
    lf_writer_t *w = nullptr;
    check(lf_client_begin_write(client, name.c_str(), 0, &w), "begin_write " + name, client);
    const uint64_t t1 = now_ns();
    for (size_t i = 0; i < sizes.size(); ++i)
      check(lf_writer_copy_in(w, i, src + offsets[i], sizes[i]), "copy_in");
    const uint64_t t2 = now_ns();
    uint64_t version = 0;
    check(lf_writer_commit(w, 0, &version), "commit " + name, client);
    const uint64_t t3 = now_ns();
    if (version != expect)
      fail("commit of " + name + " got version " + std::to_string(version) + ", expected " +
           std::to_string(expect));
    const uint64_t tv = wait_seen(observer, expect);
    last_version = version;
    return {tv - t0, t1 - t0, t2 - t1, tv - t2, t3 - t2};
  }
};

// ---------------------------------------------------------------------------------------------
// Options and output

struct Options {
  std::string daemon = LF_BENCH_DAEMON_PATH;
  bool quick = false;
  std::vector<uint64_t> sizes_mib = {1, 32, 256};
  size_t readers = 64;
  bool spin = false;
};

void usage() {
  std::printf(
      "usage: lf-bench-core [--daemon PATH] [--quick] [--sizes 1,32,256] [--readers 64] [--spin]\n"
      "  --daemon PATH   loraflipd to start (default: %s)\n"
      "  --quick         few repetitions: a smoke test, not figures to report\n"
      "  --sizes LIST    publish sizes in MiB, comma-separated (default: 1,32,256)\n"
      "  --readers N     reader processes of the contended acquire run (default: 64)\n"
      "  --spin          the observing reader spins on lf_reader_active_version instead of\n"
      "                  blocking in lf_reader_wait (use on a machine with idle CPUs)\n",
      LF_BENCH_DAEMON_PATH);
}

Options parse(int argc, char **argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage();
      std::exit(0);
    } else if (a == "--spin") {
      o.spin = true;
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--daemon") {
      o.daemon = value();
    } else if (a == "--sizes") {
      o.sizes_mib.clear();
      std::string list = value();
      size_t pos = 0;
      while (pos <= list.size()) {
        const size_t comma = std::min(list.find(',', pos), list.size());
        const std::string item = list.substr(pos, comma - pos);
        char *end = nullptr;
        const unsigned long long v = std::strtoull(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0' || v == 0 || v > 16384)
          fail("--sizes wants MiB counts from 1 to 16384, e.g. 1,32,256 (not '" + item + "')");
        o.sizes_mib.push_back(v);
        pos = comma + 1;
      }
    } else if (a == "--readers") {
      const long v = std::strtol(value().c_str(), nullptr, 10);
      if (v < 1 || v > 4096) fail("--readers wants 1 to 4096");
      o.readers = size_t(v);
    } else {
      fail("unknown option '" + a + "' (see --help)");
    }
  }
  return o;
}

std::string loadavg() {
  std::ifstream in("/proc/loadavg");
  std::string line;
  std::getline(in, line);
  return line;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  return "unknown";
}

const char *verdict(bool met) { return met ? "MET" : "MISSED"; }

int run(const Options &opt) {
  const size_t publish_reps_small = opt.quick ? 3 : 30;  // sizes up to 64 MiB
  const size_t publish_reps_large = opt.quick ? 3 : 15;
  const size_t flip_reps = opt.quick ? 30 : 1000;
  const size_t acquire_reps = opt.quick ? 3 : 5;
  const uint64_t acquire_iters = opt.quick ? 1'000'000 : 10'000'000;
  const size_t contended_chunks = opt.quick ? 2 : 3;
  const uint64_t contended_iters = opt.quick ? 100'000 : 1'000'000;

  const std::string instance = "lfbench-" + std::to_string(::getpid());
  const std::string dir = "/tmp/" + instance;
  // Four slots per adapter (the default history of 2, plus 2), plus room.
  uint64_t arena_mib = 64;
  for (uint64_t s : opt.sizes_mib) arena_mib += 4 * s;

  std::printf("lf-bench-core: loraflip core benchmark%s\n", opt.quick ? " (--quick: smoke test)" : "");
  std::printf("machine: %s, %u online CPUs\n", cpu_model().c_str(),
              unsigned(std::thread::hardware_concurrency()));
  std::printf("load average at start: %s\n", loadavg().c_str());
  std::printf("daemon: %s (instance %s, arena %" PRIu64 " MiB)\n\n", opt.daemon.c_str(),
              instance.c_str(), arena_mib);
  std::fflush(stdout);

  BenchDaemon daemon(opt.daemon, instance, dir,
                     {"--arena-size", std::to_string(arena_mib) + "M", "--max-readers",
                      std::to_string(opt.readers + 32)},
                     15);
  daemon.start();

  // Children first, before this process makes its own ZeroMQ context or big buffers.
  auto *observer = static_cast<Observer *>(shared_map(sizeof(Observer)));
  auto *echo_ready = static_cast<std::atomic<uint32_t> *>(shared_map(sizeof(std::atomic<uint32_t>)));
  const std::string echo_endpoint = "ipc://" + dir + "/bench-echo";
  const pid_t echo_pid = spawn([&] { return echo_main(echo_endpoint, *echo_ready); });
  g_children[0] = echo_pid;
  const pid_t observer_pid = spawn([&] { return observer_main(*observer, dir, opt.spin); });
  g_children[1] = observer_pid;
  struct ChildGuard {
    Observer *o;
    pid_t observer, echo;
    ~ChildGuard() {
      o->mode.store(kQuit);
      if (observer > 0) wait_child(observer);
      if (echo > 0) {
        ::kill(echo, SIGKILL);
        wait_child(echo);
      }
      g_children[0] = g_children[1] = -1;
    }
  } child_guard{observer, observer_pid, echo_pid};
  while (echo_ready->load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));

  lf_client_t *client = nullptr;
  check(lf_client_open(dir.c_str(), 10000, &client), "lf_client_open");
  struct ClientGuard {
    lf_client_t *c;
    ~ClientGuard() { lf_client_close(c); }
  } client_guard{client};

  // ---- 1. publish -------------------------------------------------------------------------
  struct PublishRow {
    uint64_t mib;
    size_t tensors;
    size_t reps;
    Stats total, memcpy_, chunked, begin, copy, visible;
  };
  std::vector<PublishRow> rows;
  {
    const uint64_t max_bytes = *std::max_element(opt.sizes_mib.begin(), opt.sizes_mib.end()) << 20;
    // Page-aligned and written once, so that neither copy pays for first-touch page faults.
    auto *src = static_cast<std::byte *>(std::aligned_alloc(4096, max_bytes));
    auto *dst = static_cast<std::byte *>(std::aligned_alloc(4096, max_bytes));
    if (src == nullptr || dst == nullptr) fail("cannot allocate the copy buffers");
    for (uint64_t i = 0; i < max_bytes / 2; ++i)  // f16 values in [0.5, 2)
      reinterpret_cast<uint16_t *>(src)[i] = uint16_t(0x3800 + (i * 2654435761u >> 7) % 0x800);
    std::memset(dst, 0, max_bytes);

    observer->mode.store(kSpin);
    for (uint64_t mib : opt.sizes_mib) {
      const auto tensors = peft_tensors(mib);
      const std::string name = "bench-publish-" + std::to_string(mib) + "m";
      create_adapter(client, name, tensors, int(tensors[0].shape[0]));
      observe(*observer, name);
      Publisher p{client, *observer, name, {}, {}, src};
      uint64_t off = 0;
      for (const auto &t : tensors) {
        p.offsets.push_back(off);
        p.sizes.push_back(t.nbytes);
        off += t.nbytes;
      }
      const uint64_t bytes = off;
      // Warm-up: every slot of the ring written at least once (first writes page-fault the
      // fresh shared memory), and the plain copy's buffers too.
      for (int i = 0; i < 8; ++i) p.publish();
      for (int i = 0; i < 2; ++i) std::memcpy(dst, src, bytes);

      const size_t reps = mib <= 64 ? publish_reps_small : publish_reps_large;
      std::vector<double> total, plain, chunked, begin, copy, visible;
      auto time_memcpy = [&] {
        uint64_t t0 = now_ns();
        std::memcpy(dst, src, bytes);
        std::atomic_signal_fence(std::memory_order_seq_cst);
        plain.push_back(double(now_ns() - t0));
        // The same bytes in one memcpy per tensor, as lf_writer_copy_in does: glibc picks its
        // copy strategy (non-temporal stores or not) by the size of each call.
        t0 = now_ns();
        for (size_t i = 0; i < p.sizes.size(); ++i)
          std::memcpy(dst + p.offsets[i], src + p.offsets[i], p.sizes[i]);
        std::atomic_signal_fence(std::memory_order_seq_cst);
        chunked.push_back(double(now_ns() - t0));
      };
      for (size_t r = 0; r < reps; ++r) {
        if (r % 2) time_memcpy();  // alternate the order: neither always runs second
        const Publisher::Timing t = p.publish();
        total.push_back(double(t.total_ns));
        begin.push_back(double(t.begin_ns));
        copy.push_back(double(t.copy_ns));
        visible.push_back(double(t.visible_ns));
        if (r % 2 == 0) time_memcpy();
      }
      rows.push_back({mib, tensors.size(), reps, stats_of(total), stats_of(plain),
                      stats_of(chunked), stats_of(begin), stats_of(copy), stats_of(visible)});
      std::printf("  publish %" PRIu64 " MiB: done\n", mib);
      std::fflush(stdout);
    }
    std::free(src);
    std::free(dst);
  }

  // ---- 2. flip ----------------------------------------------------------------------------
  Stats flip_visible, flip_rtt, zmq_rtt;
  {
    const std::string name = "bench-flip";
    std::vector<TensorShape> one = {
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", {1, 2048}, 4096}};
    create_adapter(client, name, one, 1);
    observe(*observer, name);
    std::vector<std::byte> src(4096, std::byte{0x3c});
    Publisher p{client, *observer, name, {0}, {4096}, src.data()};

    void *ctx = zmq_ctx_new();
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_connect(dealer, echo_endpoint.c_str()) != 0) fail("cannot connect to the echo process");
    // About the size of a commit request (op, id, lease, flags as msgpack).
    const std::string payload(48, 'x');
    char buf[256];
    auto round_trip = [&]() -> uint64_t {
      const uint64_t t0 = now_ns();
      // DEALER -> ROUTER with an empty delimiter first, as the client library does.
      if (zmq_send(dealer, "", 0, ZMQ_SNDMORE) < 0 ||
          zmq_send(dealer, payload.data(), payload.size(), 0) < 0)
        fail("zmq send to the echo process");
      if (zmq_recv(dealer, buf, sizeof buf, 0) < 0 || zmq_recv(dealer, buf, sizeof buf, 0) < 0)
        fail("zmq receive from the echo process");
      return now_ns() - t0;
    };
    for (int i = 0; i < 20; ++i) {
      p.publish();
      round_trip();
    }
    std::vector<double> vis, rtt, zrt;
    for (size_t r = 0; r < flip_reps; ++r) {
      if (r % 2) zrt.push_back(double(round_trip()));
      const Publisher::Timing t = p.publish();
      vis.push_back(double(t.visible_ns));
      rtt.push_back(double(t.commit_rtt_ns));
      if (r % 2 == 0) zrt.push_back(double(round_trip()));
    }
    zmq_close(dealer);
    zmq_ctx_term(ctx);
    flip_visible = stats_of(vis);
    flip_rtt = stats_of(rtt);
    zmq_rtt = stats_of(zrt);
    std::printf("  flip: done\n");
    std::fflush(stdout);
  }
  observer->mode.store(kIdle);  // nothing spins during the acquire runs
  std::this_thread::sleep_for(std::chrono::milliseconds(5));

  // ---- 3. acquire + release ---------------------------------------------------------------
  std::vector<double> floor_samples;
  for (size_t r = 0; r < acquire_reps; ++r) floor_samples.push_back(bare_handshake_ns(acquire_iters));
  const Stats floor = stats_of(floor_samples);
  const AcquireResult one = run_acquire_readers(dir, "bench-flip", 1, acquire_reps, acquire_iters);
  std::printf("  acquire, 1 reader: done\n");
  std::fflush(stdout);
  const AcquireResult many =
      run_acquire_readers(dir, "bench-flip", opt.readers, contended_chunks, contended_iters);
  std::printf("  acquire, %zu readers: done\n", opt.readers);
  std::printf("load average at end: %s\n\n", loadavg().c_str());

  // ---- report -----------------------------------------------------------------------------
  auto us = [](double ns) { return ns / 1e3; };
  const char *how = opt.spin ? "spinning on lf_reader_active_version" : "blocked in lf_reader_wait";
  std::printf("1. Publish: begin_write + lf_writer_copy_in of every tensor + commit + new version\n"
              "   seen by a reader process %s; against one\n"
              "   memcpy of the same bytes between two pre-touched buffers (interleaved).\n"
              "   Every slot of the ring was written before timing (8 warm-up publishes).\n"
              "   ratio and pub-memcpy: from the two medians.\n", how);
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

  std::printf("\n2. Flip: commit request -> new version seen by the reader process (%s;\n"
              "   one 4 KiB tensor), against a bare ZeroMQ DEALER->ROUTER round trip over ipc://\n"
              "   to an echo process (48-byte message), interleaved; %zu repetitions each.\n",
              how, flip_reps);
  std::printf("   %-40s %10s %10s\n", "", "median us", "p90 us");
  std::printf("   %-40s %10.1f %10.1f\n", "flip (commit request -> visible)", us(flip_visible.median),
              us(flip_visible.p90));
  std::printf("   %-40s %10.1f %10.1f\n", "commit round trip (request -> reply)", us(flip_rtt.median),
              us(flip_rtt.p90));
  std::printf("   %-40s %10.1f %10.1f\n", "bare ZeroMQ round trip", us(zmq_rtt.median), us(zmq_rtt.p90));
  std::printf("   %-40s %9.2fx\n", "flip / ZeroMQ round trip (medians)",
              flip_visible.median / zmq_rtt.median);

  std::printf("\n3. Acquire + release (lf_reader_acquire + lf_pin_release, one 4 KiB adapter).\n"
              "   ns per op = the reader's own thread CPU time / its iterations, per chunk;\n"
              "   median and p90 over readers x chunks.\n");
  std::printf("   %-44s %8s %9s %9s %11s\n", "", "samples", "median ns", "p90 ns", "wall med ns");
  std::printf("   %-44s %8zu %9.1f %9.1f %11s\n", "bare atomic handshake (floor, this process)",
              floor.n, floor.median, floor.p90, "-");
  std::printf("   %-44s %8zu %9.1f %9.1f %11.1f\n",
              ("1 reader process, " + std::to_string(acquire_iters / 1000000) + "M ops per chunk").c_str(),
              one.cpu_ns_per_op.n, one.cpu_ns_per_op.median, one.cpu_ns_per_op.p90,
              one.wall_ns_per_op.median);
  std::printf("   %-44s %8zu %9.1f %9.1f %11.1f\n",
              (std::to_string(opt.readers) + " reader processes, " +
               std::to_string(contended_iters / 1000) + "k ops per chunk")
                  .c_str(),
              many.cpu_ns_per_op.n, many.cpu_ns_per_op.median, many.cpu_ns_per_op.p90,
              many.wall_ns_per_op.median);
  std::printf("   %zu readers / 1 reader (medians): %.2fx; 1 reader / floor: %.2fx\n", opt.readers,
              many.cpu_ns_per_op.median / one.cpu_ns_per_op.median,
              one.cpu_ns_per_op.median / floor.median);
  std::printf("   aggregate: 1 reader %.1f Mops/s, %zu readers %.1f Mops/s (all CPUs, wall clock)\n",
              one.aggregate_mops, opt.readers, many.aggregate_mops);

  // ---- targets ----------------------------------------------------------------------------
  std::printf("\nTargets (design.md, \"Performance targets\"):\n");
  for (const auto &r : rows) {
    if (r.mib != 32) continue;
    const double bound = 1.2 * r.memcpy_.median + flip_visible.median;
    std::printf("  publish 32 MiB <= 1.2 x memcpy + flip: %.1f us vs %.1f us (1.2 x %.1f + %.1f): %s\n",
                us(r.total.median), us(bound), us(r.memcpy_.median), us(flip_visible.median),
                verdict(r.total.median <= bound));
  }
  if (std::find(opt.sizes_mib.begin(), opt.sizes_mib.end(), 32) == opt.sizes_mib.end())
    std::printf("  publish 32 MiB: not measured (32 not in --sizes)\n");
  const double flip_ratio = flip_visible.median / zmq_rtt.median;
  std::printf("  flip <= about one ZeroMQ round trip (ratio <= 1.2): %.2fx: %s\n", flip_ratio,
              verdict(flip_ratio <= 1.2));
  std::printf("  acquire + release < 50 ns uncontended: %.1f ns: %s\n", one.cpu_ns_per_op.median,
              verdict(one.cpu_ns_per_op.median < 50));
  const double flat = many.cpu_ns_per_op.median / one.cpu_ns_per_op.median;
  std::printf("  flat to %zu readers (median ratio <= 1.2): %.2fx: %s\n", opt.readers, flat,
              verdict(flat <= 1.2));
  std::printf("  bare handshake about 10 ns (reference, not a target): %.1f ns\n", floor.median);
  std::printf("  /dev/shm safetensors and GPU targets: not measured here (Python package; no GPU)\n");
  return 0;
}

}  // namespace

int main(int argc, char **argv) {
  install_signal_cleanup("lf-bench-core");
  try {
    return run(parse(argc, argv));
  } catch (const std::exception &e) {
    std::fprintf(stderr, "lf-bench-core: %s\n", e.what());
    return 1;
  }
}
