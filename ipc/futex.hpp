// Shared (not process-private) futex wait and wake on a 32-bit word in shared memory. The
// kernel keys shared futexes by the mapped page, so processes that map the arena at different
// addresses still meet on the same word.
#pragma once

#include <atomic>
#include <cstdint>

namespace loraflip::ipc {

// Sleeps while *word == expected, at most timeout_ns (< 0: no limit). Returns false on timeout.
// Spurious wake-ups are possible: callers re-check their condition.
bool futex_wait(std::atomic<uint32_t> *word, uint32_t expected, int64_t timeout_ns);
void futex_wake_all(std::atomic<uint32_t> *word);

}  // namespace loraflip::ipc
