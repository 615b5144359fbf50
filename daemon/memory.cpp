#include "daemon/memory.hpp"

#include <algorithm>
#include <cstdio>
#include <unistd.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace loraflip::daemon {

void limit_malloc_arenas() {
#if defined(__GLIBC__)
  // glibc's default is 8 arenas per core: each thread that allocates gets its own.
  ::mallopt(M_ARENA_MAX, 1);
#endif
}

uint64_t anonymous_resident_bytes() {
  // statm (in pages): size resident shared ...; resident - shared is RssAnon of
  // /proc/self/status, without formatting the whole status file ten times a second.
  std::FILE *f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long long size = 0, resident = 0, shared = 0;
  const int n = std::fscanf(f, "%llu %llu %llu", &size, &resident, &shared);
  std::fclose(f);
  if (n != 3 || shared > resident) return 0;
  return (resident - shared) * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

uint64_t malloc_free_bytes() {
#if defined(__GLIBC__)
  return ::mallinfo2().fordblks;
#else
  return 0;
#endif
}

HeapTrimmer::HeapTrimmer()
    : resident_floor_(anonymous_resident_bytes()), free_floor_(malloc_free_bytes()) {}

uint64_t HeapTrimmer::maybe_trim(uint64_t now_ns) {
  const uint64_t resident = anonymous_resident_bytes();
  const uint64_t held = malloc_free_bytes();
  resident_floor_ = std::min(resident_floor_, resident);
  free_floor_ = std::min(free_floor_, held);
  const bool grew =
      resident - resident_floor_ >= kTrimStepBytes || held - free_floor_ >= kTrimStepBytes;
  const bool settle = settle_at_ns_ != 0 && now_ns >= settle_at_ns_;
  if (!grew && !settle) return 0;
#if defined(__GLIBC__)
  // Gives back the whole pages inside free chunks (madvise) and the top of the main arena,
  // the only one (limit_malloc_arenas): where a burst's freed memory sits.
  ::malloc_trim(0);
#endif
  resident_floor_ = anonymous_resident_bytes();
  free_floor_ = malloc_free_bytes();
  settle_at_ns_ = grew ? now_ns + kSettleNs : 0;
  return resident > resident_floor_ ? resident - resident_floor_ : 0;
}

}  // namespace loraflip::daemon
