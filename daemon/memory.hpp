// Keeps the daemon's heap near its baseline after a burst of work.
//
// Everything a burst takes is freed (2,000 connections at once, requests of megabytes), but
// glibc's malloc keeps freed memory in its arenas for reuse, one arena per thread that
// allocates (ZeroMQ's I/O thread has its own): measured, the daemon stayed 23 to 65 MiB above
// its ~1 MiB baseline for good (tests/process/daemon_test.cpp, "daemon memory stays flat").
// A sidecar on a GPU node must go back to its baseline, so the daemon caps the arenas at
// start and hands free memory back from its reaper pass.
#pragma once

#include <cstdint>

namespace loraflip::daemon {

// Caps glibc's malloc arenas at one, shared by the event loop and ZeroMQ's threads. Not only
// so that what one thread frees the other reuses: malloc_trim gives back the top of the main
// arena only (glibc 2.36's mtrim); another arena's top shrinks on free() alone, and only past
// a threshold that glibc raises to twice the largest block it has unmapped (6 MiB after a
// 3 MiB request). Measured with two arenas: up to 7 MiB stayed in the I/O thread's arena. One
// lock for two threads costs nothing at the daemon's request rates (one loop serves them all).
// Call once, before any thread starts (before Server::start, which starts ZeroMQ's threads).
// Does nothing where the C library is not glibc.
void limit_malloc_arenas();

// Gives free heap memory back to the kernel (malloc_trim) from the reaper pass, when either
// of two figures grew by kTrimStepBytes since the last trim:
//  - the memory glibc holds free (mallinfo2's fordblks): a burst ended and freed what it
//    took. After a trim the figure stays up (glibc keeps the chunks, only their pages go), so
//    its growth counts, not its size;
//  - the process's anonymous resident memory: pages were touched again, among them free
//    pages given back before and reused and freed between two passes, which the first
//    figure cannot see. Growth that is live data costs one useless trim per step.
// Each such trim is followed by one more kSettleNs later, for what the burst freed after it
// in parts smaller than a step (a connection's buffers, freed as ZeroMQ tears it down).
// One owner, one thread (the event loop).
class HeapTrimmer {
 public:
  // 2 MiB: twice the daemon's whole steady-state heap (~1 MiB), a tenth of a burst's growth
  // (over 20 MiB). A trim after a burst took 0.1 to 2.5 ms, so not on every pass.
  static constexpr uint64_t kTrimStepBytes = uint64_t{2} << 20;
  static constexpr uint64_t kSettleNs = 1000000000;  // ten reaper passes

  HeapTrimmer();
  // Reads /proc/self/statm and walks glibc's free lists (a few microseconds for the steady
  // daemon's heap, up to ~0.25 ms right after a burst): call on every reaper pass, with the
  // monotonic time. Returns the anonymous resident bytes given back, 0 when it did not trim.
  uint64_t maybe_trim(uint64_t now_ns);

 private:
  // Each figure right after the last trim (or at construction), lowered whenever it falls,
  // so that growth is measured from the lowest point since.
  uint64_t resident_floor_;
  uint64_t free_floor_;
  uint64_t settle_at_ns_ = 0;  // when the follow-up trim is due; 0: none
};

// Anonymous resident memory of this process in bytes (heap, stacks; not the shared-memory
// arena), or 0 when /proc cannot be read.
uint64_t anonymous_resident_bytes();
// Bytes glibc's malloc holds free in all its arenas, or 0 where the C library is not glibc.
uint64_t malloc_free_bytes();

}  // namespace loraflip::daemon
