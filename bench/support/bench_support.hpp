// Helpers the benchmarks share: clocks, statistics, LoRA adapters, child processes and a daemon
// that Ctrl-C cleans up after, error checks; built on testbed/, which the tests use too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <sys/types.h>
#include <vector>

#include "loraflip.h"
#include "testbed/adapters.hpp"
#include "testbed/processes.hpp"

namespace lfbench {

// CLOCK_MONOTONIC: one clock for every process of the machine, so stamps taken in a reader
// process compare with the writer's.
uint64_t now_ns();

// The machine, as benchmarks name it in their output: /proc/cpuinfo's first "model name".
std::string cpu_model();
// /proc/loadavg as it reads: other work on the machine skews every figure.
std::string loadavg();

[[noreturn]] void fail(const std::string &what);

// Walks a benchmark's command line: next() moves to the next option (printing `usage` and
// exiting 0 on -h or --help), value() takes the word after it (fail()s when there is none),
// unknown() fails naming the option. So each benchmark's parser is only its own options:
//   Args args(argc, argv, usage);
//   while (args.next())
//     if (args.is("--quick")) o.quick = true;
//     else if (args.is("--out")) o.out = args.value();
//     else args.unknown();
class Args {
 public:
  Args(int argc, char **argv, void (*usage)()) : argc_(argc), argv_(argv), usage_(usage) {}
  bool next();
  bool is(const char *option) const { return option_ == option; }
  std::string value();
  [[noreturn]] void unknown() const;

 private:
  int argc_;
  char **argv_;
  void (*usage_)();
  int i_ = 0;
  std::string option_;
};
// Fails with the status's name and, given a client, its last error.
void check(int rc, const std::string &what, const lf_client_t *client = nullptr);

struct Stats {
  double median = 0, p90 = 0, p99 = 0;
  size_t n = 0;
};
// Median (mean of the two middle values for an even count), p90 and p99 (nearest rank: with
// fewer than 100 values p99 is the largest).
Stats stats_of(std::vector<double> v);

// Creates an f16 LoRA adapter of `tensors` with the config PEFT would write for them (alpha =
// 2 x rank on q/k/v/o_proj) and the daemon's default history (2, so four slots in its ring), on
// `placement`; fails (throws) with the client's message.
void create_lora_adapter(lf_client_t *client, const std::string &name,
                         std::vector<loraflip::testbed::TensorShape> tensors, int rank,
                         const std::string &placement = "host");

// Maps `bytes` of zeroed memory shared with every process forked afterwards.
void *shared_map(size_t bytes);

// testbed::spawn that fails (throws) when fork does; a child that throws exits 1. The child
// must not touch the parent's ZeroMQ context, daemon handle, buffers or GPU context. Ctrl-C
// reaches the whole process group, and the child has the default handlers back, so only the
// parent cleans up. `label` prefixes a child's error message.
pid_t spawn(const std::function<int()> &body, const char *label = "lf-bench");
// Waits for a child: its exit code, or 128 + the signal that ended it.
using loraflip::testbed::wait_child;

// Child processes (readers, echo servers) that Ctrl-C must kill too; -1 for an empty place.
inline pid_t g_children[4] = {-1, -1, -1, -1};
// Makes SIGINT and SIGTERM kill the children and the daemon and remove its arena, and ignores
// SIGPIPE. `label` names the benchmark in the message.
void install_signal_cleanup(const char *label);

// A loraflipd child with its own instance and runtime directory, for one benchmark run: it
// waits for the daemon to answer a hello, and on destruction (or Ctrl-C) stops it and removes
// its arena and directory. The log is kept when the benchmark fails, for the error message.
class BenchDaemon {
 public:
  BenchDaemon(std::string path, std::string instance, std::string dir,
              std::vector<std::string> extra_args, int start_timeout_s);
  ~BenchDaemon();
  BenchDaemon(const BenchDaemon &) = delete;
  BenchDaemon &operator=(const BenchDaemon &) = delete;

  // Separate from the constructor so that the destructor cleans up after a failed start.
  void start();
  const std::string &dir() const { return dir_; }
  // The daemon's process (its /proc entry tells its memory); -1 before start.
  pid_t pid() const { return pid_; }
  std::string log_path() const { return dir_ + ".log"; }
  std::string read_log() const;

 private:
  std::string path_, instance_, dir_;
  std::vector<std::string> extra_;
  int start_timeout_s_;
  pid_t pid_ = -1;
};

}  // namespace lfbench
