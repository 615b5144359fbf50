#include "kernels/cast.hpp"

#include <cstring>

#include "loraflip.h"

namespace loraflip::kernels {
namespace {

// memcpy per element, not a cast of the pointers: the slot is raw bytes with no alignment
// promise, and reading it through another type would break aliasing rules. Compilers turn each
// memcpy into one load or store.
template <uint16_t (*Convert)(uint32_t)>
void cast_to_16(const float *src, void *dst, uint64_t count) {
  auto *out = static_cast<unsigned char *>(dst);
  for (uint64_t i = 0; i < count; ++i) {
    uint32_t x;
    std::memcpy(&x, src + i, sizeof x);
    const uint16_t h = Convert(x);
    std::memcpy(out + i * sizeof h, &h, sizeof h);
  }
}

}  // namespace

int cast_f32(const float *src, void *dst, uint64_t count, int dst_dtype) {
  if (dst_dtype != LF_DTYPE_F32 && dst_dtype != LF_DTYPE_F16 && dst_dtype != LF_DTYPE_BF16) {
    return LF_E_INVALID_ARGUMENT;
  }
  if (count == 0) return LF_OK;
  if (src == nullptr || dst == nullptr) return LF_E_INVALID_ARGUMENT;
  if (count > UINT64_MAX / sizeof(float)) return LF_E_INVALID_ARGUMENT;  // bytes would wrap
  switch (dst_dtype) {
    case LF_DTYPE_F32:
      // memmove: a cast in place (dst == src) is allowed for F32.
      std::memmove(dst, src, count * sizeof(float));
      break;
    case LF_DTYPE_F16: cast_to_16<f32_to_f16_bits>(src, dst, count); break;
    case LF_DTYPE_BF16: cast_to_16<f32_to_bf16_bits>(src, dst, count); break;
  }
  return LF_OK;
}

}  // namespace loraflip::kernels
