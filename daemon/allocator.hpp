// First-fit allocator of byte ranges inside one region (the data segment, the descriptor pool).
// Lives in the daemon's own memory: after a restart it is rebuilt from the adapter records,
// which are the only truth about what is in use.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

namespace loraflip::daemon {

class RangeAllocator {
 public:
  // Manages [0, size); offsets handed out are multiples of `align` (a power of two).
  RangeAllocator(uint64_t size, uint64_t align);

  std::optional<uint64_t> allocate(uint64_t bytes);
  // Returns a range from allocate() (or reserve()); neighbours are merged.
  void release(uint64_t offset, uint64_t bytes);
  // Marks a range in use without choosing it: used to rebuild the state after a restart.
  // Returns false when the range is not wholly free (a corrupt or overlapping record).
  bool reserve(uint64_t offset, uint64_t bytes);

  uint64_t size() const { return size_; }
  uint64_t used() const { return used_; }
  uint64_t largest_free() const;

 private:
  uint64_t round(uint64_t bytes) const { return (bytes + align_ - 1) & ~(align_ - 1); }
  uint64_t size_;
  uint64_t align_;
  uint64_t used_ = 0;
  std::map<uint64_t, uint64_t> free_;  // offset -> length, disjoint and never adjacent
};

// Ranges taken from one or more allocators, given back when it goes out of scope unless kept:
// a caller that takes from several (Registry::create: the pool, the data segment, each device)
// and may fail between them returns early without unwinding by hand. The allocators outlive it.
class RangeReservation {
 public:
  RangeReservation() = default;
  RangeReservation(const RangeReservation &) = delete;
  RangeReservation &operator=(const RangeReservation &) = delete;
  ~RangeReservation() {
    if (!kept_)
      for (const Taken &t : taken_) t.from->release(t.offset, t.bytes);
  }

  // from.allocate(bytes), remembered for release.
  std::optional<uint64_t> take(RangeAllocator &from, uint64_t bytes) {
    std::optional<uint64_t> at = from.allocate(bytes);
    if (at) taken_.push_back({&from, *at, bytes});
    return at;
  }
  // Everything taken stays taken: its owner (an adapter record) names it now.
  void keep() { kept_ = true; }

 private:
  struct Taken {
    RangeAllocator *from;
    uint64_t offset;
    uint64_t bytes;
  };
  std::vector<Taken> taken_;
  bool kept_ = false;
};

}  // namespace loraflip::daemon
