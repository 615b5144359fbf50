// fp16 / bf16 <-> fp32 conversions for host code, bit-exact and rounding to nearest even, so the
// CPU path needs no CUDA header and no compiler extension type (_Float16, __bf16).
#pragma once

#include <bit>
#include <cstdint>

namespace loraflip::lora {

// Storage types: the bits of one IEEE binary16 / bfloat16 value.
struct f16 {
    uint16_t bits;
};
struct bf16 {
    uint16_t bits;
};

// Branch-free so loops over arrays vectorize; independent of the FTZ/DAZ mode because the
// subnormal case goes through an integer-to-float conversion rather than denormal arithmetic.
inline float f16_to_f32(f16 h) {
    const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
    const uint32_t em = h.bits & 0x7fffu; // exponent and mantissa
    // Normal numbers: move the 5-bit exponent into the 8-bit field and rebias by 127 - 15 = 112.
    const uint32_t normal = (em << 13) + (112u << 23);
    // Inf/NaN: exponent all ones; keep the payload (a quiet NaN stays quiet).
    const uint32_t special = (em << 13) | 0x7f800000u;
    // Subnormals (and zero): value = mantissa * 2^-24, exact in fp32.
    const uint32_t sub = std::bit_cast<uint32_t>(static_cast<float>(static_cast<int32_t>(em)) * 0x1p-24f);
    // Select with masks, not branches or ?:, which GCC at -O2 keeps as control flow in loops.
    const uint32_t is_sub = 0u - static_cast<uint32_t>(em < 0x0400u);
    const uint32_t is_special = 0u - static_cast<uint32_t>(em >= 0x7c00u);
    const uint32_t bits = (sub & is_sub) | (special & is_special) | (normal & ~(is_sub | is_special));
    return std::bit_cast<float>(bits | sign);
}

// Branch-free (mask selects) so that loops storing fp16 vectorize too.
inline f16 f32_to_f16(float f) {
    const uint32_t x = std::bit_cast<uint32_t>(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;

    // Normal results: rebias the exponent by 127 - 15 = 112 and drop 13 mantissa bits, adding
    // 0xfff plus the lowest kept bit so the shift rounds to nearest even. A carry out of the
    // mantissa correctly bumps the exponent (and 65520 and up reach 0x7c00, inf).
    const uint32_t r = ax - (112u << 23);
    const uint32_t normal = (r + 0x0fffu + ((r >> 13) & 1u)) >> 13;
    // Results below 2^-14 (fp16 subnormals and zero): 0.5f has an ulp of 2^-24, the fp16
    // subnormal spacing, so the FPU's own round-to-nearest-even of |f| + 0.5f leaves the
    // rounded count of 2^-24 steps in the low bits.
    const float sub_sum = std::bit_cast<float>(ax) + 0.5f;
    const uint32_t subnormal = std::bit_cast<uint32_t>(sub_sum) - std::bit_cast<uint32_t>(0.5f);
    // Inf stays inf; NaN becomes a quiet NaN keeping the top payload bits.
    const uint32_t special = 0x7c00u | (ax > 0x7f800000u ? 0x0200u | ((ax >> 13) & 0x3ffu) : 0u);

    const uint32_t is_special = 0u - static_cast<uint32_t>(ax >= 0x7f800000u);
    const uint32_t is_overflow = 0u - static_cast<uint32_t>(ax >= 0x477ff000u); // >= 65520
    const uint32_t is_sub = 0u - static_cast<uint32_t>(ax < 0x38800000u);       // < 2^-14
    uint32_t bits = (subnormal & is_sub) | (normal & ~is_sub);
    bits = (bits & ~is_overflow) | (0x7c00u & is_overflow);
    bits = (bits & ~is_special) | (special & is_special);
    return {static_cast<uint16_t>(bits | sign)};
}

inline float bf16_to_f32(bf16 h) { return std::bit_cast<float>(static_cast<uint32_t>(h.bits) << 16); }

inline bf16 f32_to_bf16(float f) {
    const uint32_t x = std::bit_cast<uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) { // NaN: truncating could give inf, so force quiet
        return {static_cast<uint16_t>((x >> 16) | 0x0040u)};
    }
    // Adding 0x7fff plus the lowest kept bit rounds to nearest, ties to even; overflow
    // correctly carries into inf.
    const uint32_t rounded = x + 0x7fffu + ((x >> 16) & 1u);
    return {static_cast<uint16_t>(rounded >> 16)};
}

// Uniform spelling for templates over the three element types.
inline float to_f32(float v) { return v; }
inline float to_f32(f16 v) { return f16_to_f32(v); }
inline float to_f32(bf16 v) { return bf16_to_f32(v); }

template <class T> T from_f32(float v);
template <> inline float from_f32<float>(float v) { return v; }
template <> inline f16 from_f32<f16>(float v) { return f32_to_f16(v); }
template <> inline bf16 from_f32<bf16>(float v) { return f32_to_bf16(v); }

} // namespace loraflip::lora
