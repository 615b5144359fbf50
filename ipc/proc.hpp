// Process identity from /proc: a pid plus its start time names one process for good, because
// a pid that is reused belongs to a process with a later start time.
#pragma once

#include <cstdint>
#include <sys/types.h>

namespace loraflip::ipc {

// Start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat), or 0 when the
// process does not exist (or /proc cannot be read).
uint64_t process_start_time(pid_t pid);

// True while the process named by (pid, start) runs. start == 0 means "not yet recorded"
// (a claim in progress): then only the pid is checked. A zombie counts as gone: it runs no
// code and holds nothing.
bool process_alive(pid_t pid, uint64_t start);

uint64_t unix_now_ns();
uint64_t monotonic_now_ns();

}  // namespace loraflip::ipc
