// Copying a tensor into a slot of shared memory without reading the slot first.
#pragma once

#include <cstddef>

namespace loraflip::ipc {

// Copies `bytes` from `src` to `dst` (which must not overlap) like memcpy, but for copies of
// kStreamCopyMinBytes or more writes the destination with non-temporal (streaming) stores where
// the CPU has them (x86-64). A slot is written once and read next by another process (the
// daemon's check, then readers), so an ordinary store's read of each destination line into the
// cache first is wasted memory traffic: bench/python/bench_publish.py's "writer's copies" of a
// 32 MiB adapter took 6.2 ms this way and 7.2 ms with kStreamCopyMinBytes raised above every
// tensor's size (back-to-back runs, that the only change). glibc's memcpy uses such stores
// only above a threshold tied to the last-level cache (hundreds of MiB on large servers),
// which per-tensor copies never reach. Ends with a store fence, so the bytes are ordered before
// whatever the caller does next (a commit message).
void stream_copy(void *dst, const void *src, size_t bytes);

inline constexpr size_t kStreamCopyMinBytes = 64 * 1024;

}  // namespace loraflip::ipc
