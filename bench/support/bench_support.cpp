#include "bench_support.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <thread>
#include <stdexcept>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

namespace lfbench {

uint64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ULL + uint64_t(ts.tv_nsec);
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

std::string loadavg() {
  std::ifstream in("/proc/loadavg");
  std::string line;
  std::getline(in, line);
  return line;
}

void fail(const std::string &what) { throw std::runtime_error(what); }

bool Args::next() {
  if (++i_ >= argc_) return false;
  option_ = argv_[i_];
  if (option_ == "-h" || option_ == "--help") {
    usage_();
    std::exit(0);
  }
  return true;
}

std::string Args::value() {
  if (i_ + 1 >= argc_) fail(option_ + " needs a value");
  return argv_[++i_];
}

void Args::unknown() const { fail("unknown option '" + option_ + "' (see --help)"); }

void check(int rc, const std::string &what, const lf_client_t *client) {
  if (rc == LF_OK) return;
  std::string msg = what + ": " + lf_strerror(rc);
  if (client != nullptr) msg += std::string(" (") + lf_client_last_error(client) + ")";
  fail(msg);
}

Stats stats_of(std::vector<double> v) {
  Stats s;
  s.n = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  s.p90 = v[std::min(n - 1, size_t(std::ceil(0.9 * double(n))) - 1)];
  s.p99 = v[std::min(n - 1, size_t(std::ceil(0.99 * double(n))) - 1)];
  return s;
}

void create_lora_adapter(lf_client_t *client, const std::string &name,
                         std::vector<loraflip::testbed::TensorShape> tensors, int rank,
                         const std::string &placement) {
  loraflip::testbed::AdapterSpec spec;
  spec.tensors = std::move(tensors);
  spec.lora_rank = rank;
  spec.lora_alpha = 2.0 * rank;
  spec.placement = placement;
  check(loraflip::testbed::create_adapter(client, name, spec),
        "create adapter " + name + (placement == "host" ? "" : " on " + placement), client);
}

void *shared_map(size_t bytes) {
  void *p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) fail(std::string("mmap: ") + std::strerror(errno));
  std::memset(p, 0, bytes);
  return p;
}

pid_t spawn(const std::function<int()> &body, const char *label) {
  const pid_t pid = loraflip::testbed::spawn(body, label, 1);
  if (pid < 0) fail(std::string("fork: ") + std::strerror(errno));
  return pid;
}

namespace {

// Prepared before any signal can arrive, so that the handler only calls kill, fork, execv and
// waitpid (all async-signal-safe).
pid_t g_daemon = -1;
std::vector<std::string> g_remove_args;
std::vector<char *> g_remove_argv;
const char *g_label = "lf-bench";

void remove_arena_now() {
  if (g_remove_argv.empty()) return;
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int devnull = ::open("/dev/null", O_WRONLY);
    if (devnull >= 0) {
      ::dup2(devnull, 1);
      ::dup2(devnull, 2);
    }
    ::execv(g_remove_argv[0], g_remove_argv.data());
    ::_exit(127);
  }
  if (pid > 0) ::waitpid(pid, nullptr, 0);
}

void on_signal(int sig) {
  for (pid_t p : g_children)
    if (p > 0) ::kill(p, SIGKILL);
  if (g_daemon > 0) {
    ::kill(g_daemon, SIGKILL);
    ::waitpid(g_daemon, nullptr, 0);
  }
  remove_arena_now();
  const char msg[] = ": interrupted; daemon killed and arena removed\n";
  [[maybe_unused]] ssize_t n = ::write(2, g_label, std::strlen(g_label));
  n = ::write(2, msg, sizeof msg - 1);
  ::_exit(128 + sig);
}

}  // namespace

void install_signal_cleanup(const char *label) {
  g_label = label;
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::signal(SIGPIPE, SIG_IGN);
}

BenchDaemon::BenchDaemon(std::string path, std::string instance, std::string dir,
                         std::vector<std::string> extra_args, int start_timeout_s)
    : path_(std::move(path)), instance_(std::move(instance)), dir_(std::move(dir)),
      extra_(std::move(extra_args)), start_timeout_s_(start_timeout_s) {}

void BenchDaemon::start() {
  if (::access(path_.c_str(), X_OK) != 0)
    fail("no executable loraflipd at " + path_ + " (pass --daemon PATH)");
  g_remove_args = {path_, "--instance", instance_, "--remove-arena"};
  g_remove_argv.clear();
  for (auto &a : g_remove_args) g_remove_argv.push_back(a.data());
  g_remove_argv.push_back(nullptr);
  remove_arena_now();  // a leftover of a killed run with the same pid, if any

  const std::string log = log_path();
  pid_ = loraflip::testbed::start_daemon(path_, instance_, dir_, extra_, log,
                                         loraflip::testbed::DaemonLog::truncate);
  if (pid_ < 0) fail(std::string("fork: ") + std::strerror(errno));
  g_daemon = pid_;
  switch (loraflip::testbed::wait_until_answering(dir_, pid_, start_timeout_s_ * 1000)) {
    case loraflip::testbed::DaemonStart::answered:
      return;
    case loraflip::testbed::DaemonStart::exited:
      pid_ = g_daemon = -1;  // reaped already
      fail("loraflipd exited at start; its log (" + log + "):\n" + read_log());
    case loraflip::testbed::DaemonStart::timed_out:
      fail("loraflipd did not answer within " + std::to_string(start_timeout_s_) + " s; log:\n" +
           read_log());
  }
}

BenchDaemon::~BenchDaemon() {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    const uint64_t deadline = now_ns() + 5'000'000'000ULL;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (now_ns() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  g_daemon = -1;
  remove_arena_now();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
  if (std::uncaught_exceptions() == 0) std::filesystem::remove(log_path(), ec);
  else std::fprintf(stderr, "%s: daemon log kept at %s\n", g_label, log_path().c_str());
}

std::string BenchDaemon::read_log() const {
  std::ifstream in(log_path());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace lfbench
