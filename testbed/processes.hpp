// Child processes for the multi-process tests and the benchmarks: forked workers, and a
// loraflipd of their own. Library code: failures come back as values, never as exceptions.
#pragma once

#include <functional>
#include <string>
#include <sys/types.h>
#include <vector>

namespace loraflip::testbed {

// Forks; the child runs `body` and leaves with _exit(body's return value), so it never returns
// into the parent's code (a test framework, a benchmark's cleanup, a ZeroMQ context or daemon
// handle the parent owns). An exception out of `body` is printed to stderr as
// "<label> child <pid>: <what>" and the child exits with `exit_on_exception`. The child gets
// the default SIGINT and SIGTERM back: the parent's handlers (doctest's crash report, a
// benchmark's cleanup) are the parent's alone. Returns the child's pid, or -1 with errno when
// fork fails.
pid_t spawn(const std::function<int()> &body, const char *label, int exit_on_exception);

// Waits for a child (retrying on EINTR): its exit code, or 128 + the signal that ended it,
// the way a shell reports it; -1 when `pid` is not a child of this process.
int wait_child(pid_t pid);

enum class DaemonLog {
  truncate,  // a fresh log per start
  append,    // one log across restarts of the same instance (a test reads the whole story)
};

// Starts `daemon_path --instance <instance> --runtime-dir <runtime_dir> <extra_args...>` with
// its stdout and stderr going to `log_path`. Returns at once, before the daemon is up (see
// wait_until_answering): its pid, or -1 with errno when fork fails.
pid_t start_daemon(const std::string &daemon_path, const std::string &instance,
                   const std::string &runtime_dir, const std::vector<std::string> &extra_args,
                   const std::string &log_path, DaemonLog log_mode);

enum class DaemonStart {
  answered,   // its control socket answered a hello
  exited,     // the process ended first (it has been reaped: do not wait for or kill it)
  timed_out,  // still running, still not answering
};

// Polls the daemon started as `pid` at `runtime_dir` until it answers a hello (a client open),
// it exits, or `timeout_ms` passes.
DaemonStart wait_until_answering(const std::string &runtime_dir, pid_t pid, int timeout_ms);

}  // namespace loraflip::testbed
