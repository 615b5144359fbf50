#include "support.hpp"

#include "testbed/adapters.hpp"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace lftest {

std::string daemon_path() {
  const char *p = std::getenv("LORAFLIPD");
  if (p == nullptr) throw std::runtime_error("set LORAFLIPD to the loraflipd binary");
  return p;
}

std::string unique_tag(const std::string &base) {
  static int counter = 0;
  return base + "-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

uint64_t now_ms() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

int64_t wait_until(const std::function<bool()> &condition, int timeout_ms) {
  const uint64_t start = now_ms();
  while (true) {
    if (condition()) return static_cast<int64_t>(now_ms() - start);
    if (now_ms() - start > static_cast<uint64_t>(timeout_ms)) return -1;
    sleep_ms(10);
  }
}

Daemon::Daemon(std::string tag, std::vector<std::string> extra_args)
    : instance_(unique_tag(tag)), extra_(std::move(extra_args)) {
  dir_ = "/tmp/lftest-" + instance_;
}

Daemon::~Daemon() {
  kill9();
  // Remove the arena and runtime directory the daemon left for its next start.
  std::string cmd = daemon_path() + " --instance " + instance_ + " --remove-arena >/dev/null 2>&1";
  [[maybe_unused]] int rc = std::system(cmd.c_str());
  cmd = "rm -rf " + dir_;
  rc = std::system(cmd.c_str());
}

std::string Daemon::log() const {
  std::ifstream in(dir_ + ".log");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void Daemon::start() {
  namespace tb = loraflip::testbed;
  std::vector<std::string> args = {"--arena-size", "256M", "--log-level", "info"};
  args.insert(args.end(), extra_.begin(), extra_.end());
  pid_ = tb::start_daemon(daemon_path(), instance_, dir_, args, dir_ + ".log",
                          tb::DaemonLog::append);
  if (pid_ < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  switch (tb::wait_until_answering(dir_, pid_, 10000)) {
    case tb::DaemonStart::answered:
      return;
    case tb::DaemonStart::exited:
      pid_ = -1;  // reaped already
      throw std::runtime_error("loraflipd did not start (it exited): " + log());
    case tb::DaemonStart::timed_out:
      break;
  }
  throw std::runtime_error("loraflipd did not start: " + log());
}

void Daemon::kill9() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

int Daemon::stop() {
  if (pid_ <= 0) return -1;
  ::kill(pid_, SIGTERM);
  const int status = wait_child(pid_);
  pid_ = -1;
  return status;
}

pid_t spawn(const std::function<int()> &body) {
  // 99: out of the way of the small codes the test bodies return, so that a child that threw
  // is told from one that failed a check.
  return loraflip::testbed::spawn(body, "lftest", 99);
}

int create_pattern_adapter(lf_client_t *client, const std::string &name, int tensors,
                           int64_t elements, int history, const std::string &placement) {
  loraflip::testbed::AdapterSpec spec;
  for (int t = 0; t < tensors; ++t) {
    // PEFT's names, so that the daemon sees what a trainer would send; the shapes are whatever
    // holds `elements` f32 values.
    loraflip::testbed::TensorShape shape;
    shape.name = loraflip::testbed::peft_lora_name(t, "q_proj", t % 2 != 0);
    shape.shape[0] = elements / 16;
    shape.shape[1] = 16;
    shape.nbytes = uint64_t(elements / 16) * 16 * 4;
    shape.dtype = LF_DTYPE_F32;
    spec.tensors.push_back(shape);
  }
  spec.history = history;
  spec.placement = placement;
  return loraflip::testbed::create_adapter(client, name, spec);
}

void fill_pattern(lf_writer_t *writer, uint64_t version) {
  const size_t count = lf_writer_tensor_count(writer);
  uint64_t word = 0;
  for (size_t t = 0; t < count; ++t) {
    lf_tensor_view_t v;
    lf_writer_tensor(writer, t, &v);
    auto *p = static_cast<uint64_t *>(v.data);
    for (uint64_t i = 0; i < v.nbytes / 8; ++i) p[i] = pattern_word(version, word++);
  }
}

uint64_t count_torn(const lf_pin_t *pin, int device) {
  const uint64_t version = lf_pin_version(pin);
  uint64_t torn = 0, word = 0;
  for (size_t t = 0; t < lf_pin_tensor_count(pin); ++t) {
    lf_tensor_view_t v;
    if (device < 0) {
      lf_pin_tensor(pin, t, &v);
    } else if (lf_pin_tensor_on_device(pin, t, device, &v) != LF_OK) {
      return torn + 1;  // no copy there at all: counted as a torn read
    }
    const auto *p = static_cast<const volatile uint64_t *>(v.data);
    for (uint64_t i = 0; i < v.nbytes / 8; ++i)
      if (p[i] != pattern_word(version, word++)) ++torn;
  }
  return torn;
}

int64_t json_number(const std::string &json, const std::string &key) {
  const std::string needle = "\"" + key + "\":";
  const size_t at = json.find(needle);
  if (at == std::string::npos) return -1;
  return std::strtoll(json.c_str() + at + needle.size(), nullptr, 10);
}

}  // namespace lftest
