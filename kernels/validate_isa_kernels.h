// The kernels of the commit checks (first_non_finite, the checksum's sum), written once and
// compiled once per instruction set: each validate_isa_*.cpp defines LF_VALIDATE_ISA_LEVEL
// (0 baseline, 1 AVX2, 2 AVX-512 F/BW/DQ), a namespace, an entry-point name and the variant's
// name, then includes this file; meson.build gives each unit its -m flags. Include nowhere else.
//
// Everything below has internal linkage (anonymous namespace) so that no copy compiled with
// wider instructions can stand in for another unit's (see validate_isa.hpp); only the unit's
// entry point is external. For the same reason no unit includes validate.hpp: the checksum's
// per-word mix is spelled again here, and tests/kernels holds every variant to checksum_mix.
//
// Why vectors by hand: the daemon reads a whole slot (tens of MiB, just written by another
// process with streaming stores, so from memory) between a writer's commit and the flip. The
// baseline's portable SWAR loop, compiled for x86-64's SSE2, does not keep up with memory; one
// 256- or 512-bit compare per vector does (bench/validate, 32 MiB of bf16 flushed from the
// caches, one core: baseline 4.8 ms, AVX2 4.4 ms, AVX-512 3.2 ms, one load per cache line
// 3.0 ms). The checksum's two 64-bit multiplies per word are its cost: AVX-512DQ has them
// (VPMULLQ), AVX2 builds each from three 32-bit ones (baseline 9.8 ms, AVX2 6.5 ms, AVX-512
// 5.4 ms; checksum_parallel splits it over cores).
#include <cstdint>
#include <cstring>

#include "kernels/validate_isa.hpp"
#include "loraflip.h"  // LF_DTYPE_* (a C header: no inline functions)

#if LF_VALIDATE_ISA_LEVEL >= 1
#include <immintrin.h>
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), spelled `__m512i __Y = __Y;`,
// which its own -Wuninitialized then reports wherever such an intrinsic is inlined (GCC bug
// 105593, fixed in GCC 13); see kernels/lora/lora_cpu_kernels.h.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

namespace loraflip::kernels::LF_VALIDATE_ISA_NS {
namespace {

// ---- shared scalar pieces -----------------------------------------------------------------

// An IEEE value is NaN or infinite exactly when its exponent bits are all ones.
template <typename Bits, Bits kExponentMask>
int64_t scan_scalar(const unsigned char *p, uint64_t begin, uint64_t end) {
  for (uint64_t i = begin; i < end; ++i) {
    Bits v;
    std::memcpy(&v, p + i * sizeof(Bits), sizeof(Bits));
    if ((v & kExponentMask) == kExponentMask) return static_cast<int64_t>(i);
  }
  return -1;
}

// checksum_mix of validate.hpp (splitmix64's finalizer over word + (index + 1) * golden).
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kMix1 = 0xBF58476D1CE4E5B9ULL;
constexpr uint64_t kMix2 = 0x94D049BB133111EBULL;

inline uint64_t mix_word(uint64_t word, uint64_t index) {
  uint64_t z = word + (index + 1) * kGolden;
  z = (z ^ (z >> 30)) * kMix1;
  z = (z ^ (z >> 27)) * kMix2;
  return z ^ (z >> 31);
}

inline uint64_t load_word(const unsigned char *p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

uint64_t checksum_words_scalar(const unsigned char *p, uint64_t first, uint64_t words) {
  uint64_t sum = 0;
  for (uint64_t k = 0; k < words; ++k) sum += mix_word(load_word(p + 8 * k), first + k);
  return sum;
}

#if LF_VALIDATE_ISA_LEVEL == 0
// ---- baseline: portable C++ ---------------------------------------------------------------

// `lane` repeated across a 64-bit word.
template <typename Bits>
constexpr uint64_t replicate(Bits lane) {
  uint64_t word = 0;
  for (size_t i = 0; i < 8 / sizeof(Bits); ++i) word |= uint64_t{lane} << (8 * sizeof(Bits) * i);
  return word;
}

// Checks 8 bytes at a time (SIMD within a register): after masking the exponent and XOR-ing
// with the mask, a lane is zero exactly where the value is not finite, and the classic
// "has a zero lane" test finds that. The sign bit, the top of each lane, is never in the mask,
// so the test is exact. The words of a block are OR-ed together without a branch, which the
// compiler turns into vector code; only a block with a non-finite lane is scanned again element
// by element. (A branch per word was a third slower, one compare per f16 element several times
// slower.)
template <typename Bits, Bits kExponentMask>
int64_t scan_exponent(const void *data, uint64_t count) {
  const auto *p = static_cast<const unsigned char *>(data);
  constexpr uint64_t kPerWord = 8 / sizeof(Bits);
  constexpr uint64_t kMask = replicate<Bits>(kExponentMask);
  constexpr uint64_t kOnes = replicate<Bits>(1);
  constexpr uint64_t kHighs = replicate<Bits>(static_cast<Bits>(Bits{1} << (8 * sizeof(Bits) - 1)));
  constexpr uint64_t kBlockWords = 64;  // 512 bytes: long enough to vectorize, short to rescan
  const uint64_t words = count / kPerWord;
  uint64_t w = 0;
  for (; w + kBlockWords <= words; w += kBlockWords) {
    uint64_t non_finite_lanes = 0;
    for (uint64_t k = 0; k < kBlockWords; ++k) {
      const uint64_t x = (load_word(p + (w + k) * 8) & kMask) ^ kMask;
      non_finite_lanes |= kPerWord == 1 ? uint64_t{x == 0} : (x - kOnes) & ~x & kHighs;
    }
    if (non_finite_lanes != 0)
      return scan_scalar<Bits, kExponentMask>(p, w * kPerWord, (w + kBlockWords) * kPerWord);
  }
  return scan_scalar<Bits, kExponentMask>(p, w * kPerWord, count);
}

uint64_t checksum_words(const void *data, uint64_t first, uint64_t words) {
  return checksum_words_scalar(static_cast<const unsigned char *>(data), first, words);
}

#else
// ---- AVX2 and AVX-512: one compare per vector ---------------------------------------------
//
// NonFinite marks the lanes of one vector whose exponent is all ones: all-ones lanes of a
// vector (AVX2), or a bit per lane (AVX-512's compare masks). The scan ORs the marks of a block
// of vectors and branches once per block; a block with a mark names its first marked lane
// directly, so nothing is read twice.

#if LF_VALIDATE_ISA_LEVEL >= 2
constexpr uint64_t kVectorBytes = 64;
using NonFinite = uint64_t;

template <typename Bits, Bits kExponentMask>
inline NonFinite non_finite_lanes(const unsigned char *p) {
  const __m512i v = _mm512_loadu_si512(p);
  if constexpr (sizeof(Bits) == 2) {
    const __m512i m = _mm512_set1_epi16(static_cast<short>(kExponentMask));
    return _mm512_cmpeq_epi16_mask(_mm512_and_si512(v, m), m);
  } else if constexpr (sizeof(Bits) == 4) {
    const __m512i m = _mm512_set1_epi32(static_cast<int>(kExponentMask));
    return _mm512_cmpeq_epi32_mask(_mm512_and_si512(v, m), m);
  } else {
    const __m512i m = _mm512_set1_epi64(static_cast<long long>(kExponentMask));
    return _mm512_cmpeq_epi64_mask(_mm512_and_si512(v, m), m);
  }
}
inline NonFinite either(NonFinite a, NonFinite b) { return a | b; }
inline bool none(NonFinite x) { return x == 0; }
template <typename Bits>
inline uint64_t first_lane(NonFinite x) {  // x not none
  return static_cast<uint64_t>(__builtin_ctzll(x));
}
#else
constexpr uint64_t kVectorBytes = 32;
using NonFinite = __m256i;

template <typename Bits, Bits kExponentMask>
inline NonFinite non_finite_lanes(const unsigned char *p) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p));
  if constexpr (sizeof(Bits) == 2) {
    const __m256i m = _mm256_set1_epi16(static_cast<short>(kExponentMask));
    return _mm256_cmpeq_epi16(_mm256_and_si256(v, m), m);
  } else if constexpr (sizeof(Bits) == 4) {
    const __m256i m = _mm256_set1_epi32(static_cast<int>(kExponentMask));
    return _mm256_cmpeq_epi32(_mm256_and_si256(v, m), m);
  } else {
    const __m256i m = _mm256_set1_epi64x(static_cast<long long>(kExponentMask));
    return _mm256_cmpeq_epi64(_mm256_and_si256(v, m), m);
  }
}
inline NonFinite either(NonFinite a, NonFinite b) { return _mm256_or_si256(a, b); }
inline bool none(NonFinite x) { return _mm256_testz_si256(x, x) != 0; }
template <typename Bits>
inline uint64_t first_lane(NonFinite x) {  // x not none: a bit per byte, sizeof(Bits) per lane
  const auto bytes = static_cast<uint32_t>(_mm256_movemask_epi8(x));
  return static_cast<uint64_t>(__builtin_ctz(bytes)) / sizeof(Bits);
}
#endif

template <typename Bits, Bits kExponentMask>
int64_t scan_exponent(const void *data, uint64_t count) {
  const auto *p = static_cast<const unsigned char *>(data);
  constexpr uint64_t kLanes = kVectorBytes / sizeof(Bits);
  // 4 vectors a block: enough loads in flight to keep up with memory, one branch per block.
  constexpr uint64_t kBlock = 4 * kLanes;
  auto at = [p](uint64_t i) { return non_finite_lanes<Bits, kExponentMask>(p + i * sizeof(Bits)); };
  uint64_t i = 0;
  for (; i + kBlock <= count; i += kBlock) {
    const NonFinite a = at(i), b = at(i + kLanes), c = at(i + 2 * kLanes), d = at(i + 3 * kLanes);
    if (none(either(either(a, b), either(c, d)))) continue;
    if (!none(a)) return static_cast<int64_t>(i + first_lane<Bits>(a));
    if (!none(b)) return static_cast<int64_t>(i + kLanes + first_lane<Bits>(b));
    if (!none(c)) return static_cast<int64_t>(i + 2 * kLanes + first_lane<Bits>(c));
    return static_cast<int64_t>(i + 3 * kLanes + first_lane<Bits>(d));
  }
  for (; i + kLanes <= count; i += kLanes) {
    const NonFinite a = at(i);
    if (!none(a)) return static_cast<int64_t>(i + first_lane<Bits>(a));
  }
  return scan_scalar<Bits, kExponentMask>(p, i, count);
}

#if LF_VALIDATE_ISA_LEVEL >= 2
constexpr uint64_t kWordsPerVector = 8;
using Words = __m512i;
inline Words load_words(const unsigned char *p) { return _mm512_loadu_si512(p); }
inline Words broadcast(uint64_t x) { return _mm512_set1_epi64(static_cast<long long>(x)); }
inline Words add(Words a, Words b) { return _mm512_add_epi64(a, b); }
template <unsigned kShift>
inline Words xor_shift_right(Words z) {
  return _mm512_xor_si512(z, _mm512_srli_epi64(z, kShift));
}
inline Words times(Words a, uint64_t b) { return _mm512_mullo_epi64(a, broadcast(b)); }
// Not _mm512_reduce_add_epi64: GCC's adds its last lanes as signed long long, and the wrapping
// sum overflows there (undefined behaviour, which UBSan reports).
inline uint64_t lane_sum(Words v) {
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, v);
  uint64_t sum = 0;
  for (uint64_t lane : lanes) sum += lane;
  return sum;
}
// Lane l: x + l * step.
inline Words ramp(uint64_t x, uint64_t step) {
  const auto at = [&](uint64_t l) { return static_cast<long long>(x + l * step); };
  return _mm512_set_epi64(at(7), at(6), at(5), at(4), at(3), at(2), at(1), at(0));
}
#else
constexpr uint64_t kWordsPerVector = 4;
using Words = __m256i;
inline Words load_words(const unsigned char *p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p));
}
inline Words broadcast(uint64_t x) { return _mm256_set1_epi64x(static_cast<long long>(x)); }
inline Words add(Words a, Words b) { return _mm256_add_epi64(a, b); }
template <int kShift>
inline Words xor_shift_right(Words z) {
  return _mm256_xor_si256(z, _mm256_srli_epi64(z, kShift));
}
// The low 64 bits of a * b per lane from AVX2's 32 x 32 -> 64 multiplies:
// a_lo * b_lo + ((a_hi * b_lo + a_lo * b_hi) << 32); a_hi * b_hi only reaches bits 64 and up.
inline Words times(Words a, uint64_t b) {
  const Words b_lo = broadcast(b & 0xFFFFFFFFu), b_hi = broadcast(b >> 32);
  const Words low = _mm256_mul_epu32(a, b_lo);
  const Words cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), b_lo),
                                       _mm256_mul_epu32(a, b_hi));
  return _mm256_add_epi64(low, _mm256_slli_epi64(cross, 32));
}
inline uint64_t lane_sum(Words v) {
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i *>(lanes), v);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
inline Words ramp(uint64_t x, uint64_t step) {
  const auto at = [&](uint64_t l) { return static_cast<long long>(x + l * step); };
  return _mm256_set_epi64x(at(3), at(2), at(1), at(0));
}
#endif

// mix_word on a vector of words; `offsets` holds each lane's (index + 1) * kGolden.
inline Words mix_words(Words words, Words offsets) {
  Words z = add(words, offsets);
  z = times(xor_shift_right<30>(z), kMix1);
  z = times(xor_shift_right<27>(z), kMix2);
  return xor_shift_right<31>(z);
}

// The offsets advance by kWordsPerVector * kGolden a vector (wrapping, as the scalar product
// does), so no lane multiplies its index. Two accumulators give two independent chains of
// multiplies per step.
uint64_t checksum_words(const void *data, uint64_t first, uint64_t words) {
  const auto *p = static_cast<const unsigned char *>(data);
  constexpr uint64_t kStep = kWordsPerVector * 8;  // bytes per vector
  const Words advance = broadcast(kWordsPerVector * kGolden);
  Words offsets = ramp((first + 1) * kGolden, kGolden);
  Words sum0 = broadcast(0), sum1 = broadcast(0);
  uint64_t k = 0;
  for (; k + 2 * kWordsPerVector <= words; k += 2 * kWordsPerVector) {
    const unsigned char *at = p + 8 * k;
    sum0 = add(sum0, mix_words(load_words(at), offsets));
    offsets = add(offsets, advance);
    sum1 = add(sum1, mix_words(load_words(at + kStep), offsets));
    offsets = add(offsets, advance);
  }
  if (k + kWordsPerVector <= words) {
    sum0 = add(sum0, mix_words(load_words(p + 8 * k), offsets));
    k += kWordsPerVector;
  }
  return lane_sum(add(sum0, sum1)) + checksum_words_scalar(p + 8 * k, first + k, words - k);
}
#endif

int64_t first_non_finite(const void *data, uint64_t count, int dtype) {
  switch (dtype) {
    case LF_DTYPE_F32: return scan_exponent<uint32_t, 0x7F800000u>(data, count);
    case LF_DTYPE_F64: return scan_exponent<uint64_t, 0x7FF0000000000000ull>(data, count);
    case LF_DTYPE_F16: return scan_exponent<uint16_t, 0x7C00u>(data, count);
    case LF_DTYPE_BF16: return scan_exponent<uint16_t, 0x7F80u>(data, count);
    default: return -1;
  }
}

constexpr ValidateKernels kKernels{LF_VALIDATE_ISA_NAME, first_non_finite, checksum_words};

}  // namespace
}  // namespace loraflip::kernels::LF_VALIDATE_ISA_NS

namespace loraflip::kernels {
const ValidateKernels &LF_VALIDATE_ISA_ENTRY() { return LF_VALIDATE_ISA_NS::kKernels; }
}  // namespace loraflip::kernels
