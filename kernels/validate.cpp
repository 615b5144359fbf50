#include "kernels/validate.hpp"

#include <cstring>

#include "loraflip.h"

namespace loraflip::kernels {
namespace {

// An IEEE value is NaN or infinite exactly when its exponent bits are all ones.
template <typename Bits, Bits kExponentMask>
int64_t scan_exponent(const void *data, uint64_t count) {
  const auto *p = static_cast<const unsigned char *>(data);
  for (uint64_t i = 0; i < count; ++i) {
    Bits v;
    std::memcpy(&v, p + i * sizeof(Bits), sizeof(Bits));
    if ((v & kExponentMask) == kExponentMask) return static_cast<int64_t>(i);
  }
  return -1;
}

}  // namespace

int64_t first_non_finite(const void *data, uint64_t count, int dtype) {
  switch (dtype) {
    case LF_DTYPE_F32: return scan_exponent<uint32_t, 0x7F800000u>(data, count);
    case LF_DTYPE_F64: return scan_exponent<uint64_t, 0x7FF0000000000000ull>(data, count);
    case LF_DTYPE_F16: return scan_exponent<uint16_t, 0x7C00u>(data, count);
    case LF_DTYPE_BF16: return scan_exponent<uint16_t, 0x7F80u>(data, count);
    default: return -1;
  }
}

uint64_t checksum(const void *data, uint64_t bytes) {
  const auto *p = static_cast<const unsigned char *>(data);
  const uint64_t words = bytes / 8;
  uint64_t sum = bytes;
  for (uint64_t i = 0; i < words; ++i) {
    uint64_t w;
    std::memcpy(&w, p + i * 8, 8);
    sum += checksum_mix(w, i);
  }
  if (const uint64_t tail = bytes % 8; tail != 0) {
    uint64_t w = 0;
    std::memcpy(&w, p + words * 8, tail);
    sum += checksum_mix(w, words);
  }
  return sum;
}

}  // namespace loraflip::kernels
