#include "daemon/allocator.hpp"

#include <algorithm>
#include <iterator>

namespace loraflip::daemon {

RangeAllocator::RangeAllocator(uint64_t size, uint64_t align) : size_(size & ~(align - 1)), align_(align) {
  if (size_ > 0) free_.emplace(0, size_);
}

std::optional<uint64_t> RangeAllocator::allocate(uint64_t bytes) {
  if (bytes == 0 || bytes > size_) return std::nullopt;
  const uint64_t need = round(bytes);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need) continue;
    const uint64_t offset = it->first;
    const uint64_t rest = it->second - need;
    free_.erase(it);
    if (rest > 0) free_.emplace(offset + need, rest);
    used_ += need;
    return offset;
  }
  return std::nullopt;
}

void RangeAllocator::release(uint64_t offset, uint64_t bytes) {
  uint64_t length = round(bytes);
  used_ -= std::min(used_, length);
  auto next = free_.lower_bound(offset);
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      offset = prev->first;
      length += prev->second;
      free_.erase(prev);
    }
  }
  if (next != free_.end() && offset + length == next->first) {
    length += next->second;
    free_.erase(next);
  }
  free_.emplace(offset, length);
}

bool RangeAllocator::reserve(uint64_t offset, uint64_t bytes) {
  const uint64_t need = round(bytes);
  if (offset % align_ != 0 || need == 0 || offset > size_ || need > size_ - offset) return false;
  auto it = free_.upper_bound(offset);
  if (it == free_.begin()) return false;
  --it;
  const uint64_t start = it->first, length = it->second;
  if (offset + need > start + length) return false;
  free_.erase(it);
  if (offset > start) free_.emplace(start, offset - start);
  if (start + length > offset + need) free_.emplace(offset + need, start + length - offset - need);
  used_ += need;
  return true;
}

uint64_t RangeAllocator::largest_free() const {
  uint64_t best = 0;
  for (const auto &[offset, length] : free_) best = std::max(best, length);
  return best;
}

}  // namespace loraflip::daemon
