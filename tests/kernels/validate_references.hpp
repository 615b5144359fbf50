// References for kernels/validate, written another way than the library: the checksum's words
// assembled byte by byte, finiteness decided by std::isfinite on decoded values. Shared by
// test_checks.cpp and test_validate_isa.cpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cast.hpp"
#include "kernels/validate.hpp"
#include "loraflip.h"

namespace lftest {

// Words assembled byte by byte (explicitly little-endian), where the library uses memcpy.
inline uint64_t reference_checksum(const unsigned char *p, uint64_t bytes) {
  std::vector<uint64_t> words((bytes + 7) / 8, 0);
  for (uint64_t b = 0; b < bytes; ++b) words[b / 8] |= static_cast<uint64_t>(p[b]) << (8 * (b % 8));
  uint64_t sum = bytes;
  for (uint64_t i = 0; i < words.size(); ++i) sum += loraflip::kernels::checksum_mix(words[i], i);
  return sum;
}

// Elements decoded to double and tested with std::isfinite. Not inlined: inlined where a single
// 2-byte value is passed, GCC 12 reports the f32 and f64 branches as reading past it.
[[gnu::noinline]] inline int64_t reference_first_non_finite(const void *data, uint64_t count, int dtype) {
  using namespace loraflip::kernels;
  const auto *p = static_cast<const unsigned char *>(data);
  for (uint64_t i = 0; i < count; ++i) {
    double v = 0;
    if (dtype == LF_DTYPE_F32) {
      float f;
      std::memcpy(&f, p + 4 * i, 4);
      v = f;
    } else if (dtype == LF_DTYPE_F64) {
      std::memcpy(&v, p + 8 * i, 8);
    } else if (dtype == LF_DTYPE_F16 || dtype == LF_DTYPE_BF16) {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      const uint32_t w = dtype == LF_DTYPE_F16 ? f16_to_f32_bits(h) : bf16_to_f32_bits(h);
      float f;
      std::memcpy(&f, &w, 4);
      v = f;
    }
    if (!std::isfinite(v)) return static_cast<int64_t>(i);
  }
  return -1;
}

inline size_t elem_size(int dtype) {
  switch (dtype) {
    case LF_DTYPE_F32: case LF_DTYPE_I32: return 4;
    case LF_DTYPE_F64: case LF_DTYPE_I64: return 8;
    case LF_DTYPE_F16: case LF_DTYPE_BF16: return 2;
    default: return 1;
  }
}

}  // namespace lftest
