// Daemon-side dtype cast: fp32 written by the trainer, stored into bf16, fp16 or fp32 slots.
// The per-element conversions are integer-only `__host__ __device__` functions shared by the CPU
// loop (cast.cpp) and the CUDA kernel (validate_cuda.cu), so the two give the same bits.
//
// kernels/lora/lora_convert.h has conversions too, but they are host-only (std::bit_cast, no
// __device__) and round fp16 subnormals with float arithmetic, whose result on a GPU depends on
// flush-to-zero; these work on the bits alone and need C++17 only (nvcc's default dialect).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LF_KERNELS_HD __host__ __device__
#else
#define LF_KERNELS_HD
#endif

namespace loraflip::kernels {

// Converts `count` fp32 values at `src` into `dst` in dtype `dst_dtype`: LF_DTYPE_BF16 or
// LF_DTYPE_F16 (round to nearest, ties to even; overflow to a signed infinity; NaN stays a NaN,
// made quiet; subnormal results kept, never flushed) or LF_DTYPE_F32 (a plain copy).
// `dst` holds count * element size bytes and must not overlap `src` (except dst == src for
// F32). Neither pointer needs any alignment. Returns LF_OK, or LF_E_INVALID_ARGUMENT for
// another dtype or a null pointer with count > 0 (then `dst` is untouched). Thread-safe.
int cast_f32(const float *src, void *dst, uint64_t count, int dst_dtype);

// fp32 bits -> bfloat16 bits.
LF_KERNELS_HD inline uint16_t f32_to_bf16_bits(uint32_t x) {
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) {
    // NaN: truncating could clear every kept mantissa bit (giving inf), so set the quiet bit.
    return static_cast<uint16_t>((x >> 16) | 0x0040u);
  }
  // Adding 0x7FFF plus the lowest kept bit rounds to nearest, ties to even. A carry out of the
  // mantissa bumps the exponent, which is right, and FLT_MAX-sized values carry into inf.
  return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

// fp32 bits -> IEEE binary16 bits.
LF_KERNELS_HD inline uint16_t f32_to_f16_bits(uint32_t x) {
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) {
    // NaN: quiet bit set, the top 9 payload bits kept.
    return static_cast<uint16_t>(sign | 0x7E00u | ((ax >> 13) & 0x03FFu));
  }
  // 65520 = 65504 (fp16 max) + half its ulp of 32: from there on the nearest-even result is inf.
  if (ax >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);
  if (ax >= 0x38800000u) {
    // At least 2^-14, the smallest normal fp16: rebias the exponent by 127 - 15 = 112 and drop
    // 13 mantissa bits, rounding to nearest even as in f32_to_bf16_bits.
    const uint32_t r = ax - (112u << 23);
    return static_cast<uint16_t>(sign | ((r + 0x0FFFu + ((r >> 13) & 1u)) >> 13));
  }
  // fp16 subnormal or zero: the result counts steps of 2^-24. Below 2^-25 (biased fp32 exponent
  // under 102) even the first step is more than half a step away, so it rounds to zero; this
  // also covers fp32 zeros and subnormals.
  const uint32_t e = ax >> 23;
  if (e < 102u) return static_cast<uint16_t>(sign);
  // Value = m * 2^(e - 150) = m * 2^(e - 126) steps, and 14 <= 126 - e <= 24.
  const uint32_t m = (ax & 0x007FFFFFu) | 0x00800000u;
  const uint32_t shift = 126u - e;
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  // A carry to 0x400 is the encoding of 2^-14, the smallest normal: also right.
  q += (rem > half || (rem == half && (q & 1u))) ? 1u : 0u;
  return static_cast<uint16_t>(sign | q);
}

// bfloat16 bits -> fp32 bits (exact).
LF_KERNELS_HD inline uint32_t bf16_to_f32_bits(uint16_t h) {
  return static_cast<uint32_t>(h) << 16;
}

// IEEE binary16 bits -> fp32 bits (exact; NaN payloads kept).
LF_KERNELS_HD inline uint32_t f16_to_f32_bits(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x03FFu;
  if (exp == 0x1Fu) return sign | 0x7F800000u | (mant << 13);  // inf, NaN
  if (exp != 0) return sign | ((exp + 112u) << 23) | (mant << 13);
  if (mant == 0) return sign;
  // Subnormal: mant * 2^-24. Normalize so the leading one sits at bit 10 (at most 10 steps).
  uint32_t e = 113u;  // biased fp32 exponent of 2^-14
  while ((mant & 0x0400u) == 0) {
    mant <<= 1;
    --e;
  }
  return sign | (e << 23) | ((mant & 0x03FFu) << 13);
}

}  // namespace loraflip::kernels
