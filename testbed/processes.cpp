#include "testbed/processes.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>
#include <fcntl.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include "loraflip.h"

namespace loraflip::testbed {

pid_t spawn(const std::function<int()> &body, const char *label, int exit_on_exception) {
  // Whatever stdio holds now would otherwise be written twice, once by each process.
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  int rc = exit_on_exception;
  try {
    rc = body();
  } catch (const std::exception &e) {
    std::fprintf(stderr, "%s child %d: %s\n", label, int(::getpid()), e.what());
  } catch (...) {
    std::fprintf(stderr, "%s child %d: an exception that is not a std::exception\n", label,
                 int(::getpid()));
  }
  std::fflush(nullptr);
  ::_exit(rc);
}

int wait_child(pid_t pid) {
  int status = 0;
  int rc;
  while ((rc = ::waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
  }
  if (rc < 0) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

pid_t start_daemon(const std::string &daemon_path, const std::string &instance,
                   const std::string &runtime_dir, const std::vector<std::string> &extra_args,
                   const std::string &log_path, DaemonLog log_mode) {
  // The argument vector is built before fork: the child only opens, dup2s and execs.
  std::vector<std::string> args = {daemon_path, "--instance", instance, "--runtime-dir",
                                   runtime_dir};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  std::vector<char *> argv;
  for (auto &a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int flags = O_WRONLY | O_CREAT | (log_mode == DaemonLog::append ? O_APPEND : O_TRUNC);

  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  const int fd = ::open(log_path.c_str(), flags, 0644);
  if (fd >= 0) {
    ::dup2(fd, 1);
    ::dup2(fd, 2);
  }
  ::execv(daemon_path.c_str(), argv.data());
  ::_exit(127);  // the shell's "command not found"
}

DaemonStart wait_until_answering(const std::string &runtime_dir, pid_t pid, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    lf_client_t *c = nullptr;
    // 200 ms per try: long enough for a loaded machine to answer, short enough to notice an
    // exit soon after it happens.
    if (lf_client_open(runtime_dir.c_str(), 200, &c) == LF_OK) {
      lf_client_close(c);
      return DaemonStart::answered;
    }
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return DaemonStart::exited;
    if (std::chrono::steady_clock::now() > deadline) return DaemonStart::timed_out;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace loraflip::testbed
