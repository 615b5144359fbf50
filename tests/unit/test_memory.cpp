// daemon/memory: the heap trimmer gives back what a burst freed, in this process's own heap.
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "daemon/memory.hpp"
#include "tests/skip.hpp"

using namespace loraflip::daemon;

namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

// `bytes` in 1 KiB blocks, every page written (so resident).
std::vector<char *> allocate(uint64_t bytes) {
  std::vector<char *> blocks;
  blocks.reserve(bytes / 1024);
  for (uint64_t i = 0; i < bytes / 1024; ++i) {
    blocks.push_back(static_cast<char *>(std::malloc(1024)));
    std::memset(blocks.back(), 1, 1024);
  }
  return blocks;
}

void release(const std::vector<char *> &blocks) {
  for (char *b : blocks) std::free(b);
}

}  // namespace

TEST_CASE("the heap trimmer gives back what a burst freed, and trims once more a second later") {
#if defined(__SANITIZE_ADDRESS__)
  LF_SKIP("AddressSanitizer's allocator replaces glibc's malloc, the one malloc_trim trims");
#endif
  HeapTrimmer trimmer;
  const uint64_t start = anonymous_resident_bytes();
  REQUIRE(start > 0);
  CHECK(trimmer.maybe_trim(1) == 0);  // nothing grew: nothing to do

  // A burst: 32 MiB in use, then a small block after it, so that once freed the burst's
  // memory is not the top of the heap (which free() itself gives back past a threshold).
  const std::vector<char *> burst = allocate(32 * kMiB);
  void *pin = std::malloc(64);
  REQUIRE(anonymous_resident_bytes() >= start + 30 * kMiB);
  // Resident memory grew by more than a step: a trim, with nothing to give back yet.
  CHECK(trimmer.maybe_trim(2) < kMiB);
  // Freed after that trim: resident memory did not grow since, the memory glibc holds free did.
  release(burst);
  CHECK(trimmer.maybe_trim(3) >= 28 * kMiB);
  CHECK(anonymous_resident_bytes() < start + 4 * kMiB);

  // Less than a step, used and freed between two passes: no figure grew by a step, but the
  // follow-up trim a second after the last one gives it back.
  release(allocate(kMiB));
  CHECK(trimmer.maybe_trim(3 + HeapTrimmer::kSettleNs - 1) == 0);
  CHECK(trimmer.maybe_trim(3 + HeapTrimmer::kSettleNs) >= kMiB / 2);
  release(allocate(kMiB));
  CHECK(trimmer.maybe_trim(3 + 5 * HeapTrimmer::kSettleNs) == 0);  // one follow-up, no more
  std::free(pin);
}
