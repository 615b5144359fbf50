// kernels/cast: fp32 -> bf16 / fp16 / fp32, against a reference that rounds with double
// arithmetic over a table of every representable value, exhaustively where the domain is small.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cast.hpp"
#include "kernels/lora/lora_convert.h"
#include "loraflip.h"

using namespace loraflip::kernels;

namespace {

float f32_of(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// A 16-bit format described by its field widths; values computed with ldexp, not bit tricks.
struct Format {
  int mant_bits;  // 10 for fp16, 7 for bf16
  int bias;       // 15, 127
  uint16_t inf;   // 0x7C00, 0x7F80: also the first pattern past the largest finite one
  uint16_t quiet; // the quiet-NaN bit: 0x0200, 0x0040
};
constexpr Format kF16{10, 15, 0x7C00, 0x0200};
constexpr Format kBf16{7, 127, 0x7F80, 0x0040};

// Value of a non-negative finite pattern. For `inf` it returns 2^(emax + 1), where the next
// pattern would sit with an unbounded exponent: IEEE rounds to inf exactly as if it were there.
double value_of(const Format &f, uint32_t k) {
  const uint32_t exp = k >> f.mant_bits;
  const uint32_t mant = k & ((1u << f.mant_bits) - 1u);
  if (exp == 0) return std::ldexp(static_cast<double>(mant), 1 - f.bias - f.mant_bits);
  return std::ldexp(static_cast<double>((1u << f.mant_bits) + mant),
                    static_cast<int>(exp) - f.bias - f.mant_bits);
}

std::vector<double> value_table(const Format &f) {
  std::vector<double> t(f.inf + 1u);
  for (uint32_t k = 0; k <= f.inf; ++k) t[k] = value_of(f, k);
  return t;
}

// Round to nearest, ties to the pattern with an even last bit; non-NaN input only.
uint16_t reference_round(const Format &f, const std::vector<double> &table, float x) {
  const uint16_t sign = std::signbit(x) ? 0x8000u : 0u;
  const double v = std::fabs(static_cast<double>(x));
  if (v >= table[f.inf]) return sign | f.inf;
  // First entry greater than v; entries are increasing with the pattern.
  const auto hi = static_cast<uint32_t>(std::upper_bound(table.begin(), table.end(), v) -
                                        table.begin());
  const uint32_t lo = hi - 1;
  // Both differences are exact in double: v and the table values are multiples of v's float ulp
  // and differ by less than one target ulp.
  const double dlo = v - table[lo];
  const double dhi = table[hi] - v;
  uint32_t k;
  if (dlo < dhi) {
    k = lo;
  } else if (dhi < dlo) {
    k = hi;
  } else {
    k = (lo % 2 == 0) ? lo : hi;
  }
  return static_cast<uint16_t>(sign | k);
}

uint16_t convert(const Format &f, uint32_t x) {
  return &f == &kF16 ? f32_to_f16_bits(x) : f32_to_bf16_bits(x);
}
uint32_t widen(const Format &f, uint16_t h) {
  return &f == &kF16 ? f16_to_f32_bits(h) : bf16_to_f32_bits(h);
}
int dtype_of(const Format &f) { return &f == &kF16 ? LF_DTYPE_F16 : LF_DTYPE_BF16; }

bool is_nan16(const Format &f, uint16_t h) {
  return (h & f.inf) == f.inf && (h & (f.inf ^ 0x7FFFu)) != 0;
}

}  // namespace

TEST_CASE("every fp16 and bf16 pattern widens exactly and narrows back to itself") {
  for (const Format *f : {&kF16, &kBf16}) {
    CAPTURE(f->mant_bits);
    const std::vector<double> table = value_table(*f);
    for (uint32_t h = 0; h <= 0xFFFFu; ++h) {
      const auto p = static_cast<uint16_t>(h);
      const uint32_t wide = widen(*f, p);
      const float w = f32_of(wide);
      CAPTURE(h);
      if (is_nan16(*f, p)) {
        REQUIRE(std::isnan(w));
        CHECK((wide >> 31) == (h >> 15));
        // NaN stays NaN, made quiet, payload kept.
        CHECK(convert(*f, wide) == (p | f->quiet));
      } else {
        const double expected = (h & 0x8000u) ? -table[h & 0x7FFFu] : table[h & 0x7FFFu];
        if ((h & 0x7FFFu) == f->inf) {
          REQUIRE(std::isinf(w));
          CHECK((w < 0) == ((h & 0x8000u) != 0));
        } else {
          REQUIRE(static_cast<double>(w) == expected);
        }
        CHECK(std::signbit(w) == ((h & 0x8000u) != 0));
        REQUIRE(convert(*f, wide) == p);
      }
    }
  }
}

TEST_CASE("every halfway point between neighbours rounds to the even one") {
  for (const Format *f : {&kF16, &kBf16}) {
    CAPTURE(f->mant_bits);
    const std::vector<double> table = value_table(*f);
    for (uint32_t k = 0; k < f->inf; ++k) {
      CAPTURE(k);
      const double mid_d = (table[k] + table[k + 1]) / 2;
      const auto mid = static_cast<float>(mid_d);
      REQUIRE(static_cast<double>(mid) == mid_d);  // representable: needs one more bit only
      const uint16_t even = static_cast<uint16_t>(k % 2 == 0 ? k : k + 1);
      CHECK(convert(*f, bits_of(mid)) == even);
      CHECK(convert(*f, bits_of(-mid)) == (even | 0x8000u));
      // One fp32 ulp either side decides it.
      CHECK(convert(*f, bits_of(mid) - 1) == k);
      CHECK(convert(*f, bits_of(mid) + 1) == k + 1);
    }
  }
}

TEST_CASE("random fp32 values round like the double-arithmetic reference") {
  std::mt19937_64 rng(20240611);
  const std::vector<double> t16 = value_table(kF16);
  const std::vector<double> tbf = value_table(kBf16);
  const std::vector<double> *tables[] = {&t16, &tbf};
  const Format *formats[] = {&kF16, &kBf16};
  for (int i = 0; i < 2'000'000; ++i) {
    uint32_t x = static_cast<uint32_t>(rng());
    // Half of them with exponents around fp16's range (2^-27 .. 2^17), where uniform bits
    // rarely land.
    if (i % 2 == 0) x = (x & 0x807FFFFFu) | ((100u + static_cast<uint32_t>(rng() % 45)) << 23);
    const float v = f32_of(x);
    if (std::isnan(v)) continue;
    for (int j = 0; j < 2; ++j) {
      const uint16_t got = convert(*formats[j], x);
      const uint16_t want = reference_round(*formats[j], *tables[j], v);
      if (got != want) {
        CAPTURE(x);
        CAPTURE(j);
        REQUIRE(got == want);
      }
    }
  }
}

TEST_CASE("the conversions agree with kernels/lora/lora_convert.h on random fp32") {
  namespace lc = loraflip::lora;
  std::mt19937 rng(7);
  for (int i = 0; i < 1'000'000; ++i) {
    const uint32_t x = rng();
    const float v = f32_of(x);
    if (std::isnan(v)) continue;
    REQUIRE(f32_to_f16_bits(x) == lc::f32_to_f16(v).bits);
    REQUIRE(f32_to_bf16_bits(x) == lc::f32_to_bf16(v).bits);
  }
}

TEST_CASE("NaN, infinities, subnormals and overflow convert per IEEE") {
  const uint32_t qnan = 0x7FC00000u, snan = 0x7F800001u, neg_nan = 0xFFC00001u;
  // A signaling NaN with only low payload bits must not truncate to inf.
  CHECK(f32_to_bf16_bits(snan) == 0x7FC0u);
  CHECK(f32_to_f16_bits(snan) == 0x7E00u);
  CHECK(f32_to_bf16_bits(qnan) == 0x7FC0u);
  CHECK(f32_to_f16_bits(qnan) == 0x7E00u);
  CHECK(f32_to_bf16_bits(neg_nan) == 0xFFC0u);
  CHECK(f32_to_f16_bits(neg_nan) == 0xFE00u);
  CHECK(f32_to_bf16_bits(0x7FFFFFFFu) == 0x7FFFu);

  CHECK(f32_to_bf16_bits(bits_of(INFINITY)) == 0x7F80u);
  CHECK(f32_to_bf16_bits(bits_of(-INFINITY)) == 0xFF80u);
  CHECK(f32_to_f16_bits(bits_of(INFINITY)) == 0x7C00u);
  CHECK(f32_to_f16_bits(bits_of(-INFINITY)) == 0xFC00u);

  // Overflow: FLT_MAX is past bf16's largest finite plus half an ulp, so inf.
  CHECK(f32_to_bf16_bits(bits_of(FLT_MAX)) == 0x7F80u);
  CHECK(f32_to_bf16_bits(bits_of(-FLT_MAX)) == 0xFF80u);
  CHECK(f32_to_f16_bits(bits_of(65504.0f)) == 0x7BFFu);
  CHECK(f32_to_f16_bits(bits_of(65519.996f)) == 0x7BFFu);
  CHECK(f32_to_f16_bits(bits_of(65520.0f)) == 0x7C00u);
  CHECK(f32_to_f16_bits(bits_of(-65520.0f)) == 0xFC00u);
  CHECK(f32_to_f16_bits(bits_of(1e10f)) == 0x7C00u);

  // Zeros keep their sign.
  CHECK(f32_to_f16_bits(bits_of(-0.0f)) == 0x8000u);
  CHECK(f32_to_bf16_bits(bits_of(-0.0f)) == 0x8000u);

  // fp16 subnormals: steps of 2^-24, never flushed.
  CHECK(f32_to_f16_bits(bits_of(std::ldexp(1.0f, -24))) == 0x0001u);
  CHECK(f32_to_f16_bits(bits_of(std::ldexp(1.0f, -25))) == 0x0000u);  // tie, to even 0
  CHECK(f32_to_f16_bits(bits_of(std::ldexp(1.0f, -25)) + 1) == 0x0001u);
  CHECK(f32_to_f16_bits(bits_of(std::ldexp(3.0f, -25))) == 0x0002u);  // tie, to even 2
  CHECK(f32_to_f16_bits(bits_of(std::ldexp(1023.0f, -24))) == 0x03FFu);
  CHECK(f32_to_f16_bits(bits_of(std::ldexp(1.0f, -14))) == 0x0400u);
  CHECK(f32_to_f16_bits(bits_of(std::ldexp(2047.0f, -25))) == 0x0400u);  // carries into normal
  CHECK(f32_to_f16_bits(bits_of(-std::ldexp(5.0f, -24))) == 0x8005u);
  // fp32 subnormals are far below fp16's range.
  CHECK(f32_to_f16_bits(0x00000001u) == 0x0000u);
  CHECK(f32_to_f16_bits(0x807FFFFFu) == 0x8000u);

  // bf16 shares fp32's exponent, so fp32 subnormals round to bf16 subnormals.
  CHECK(f32_to_bf16_bits(0x00000001u) == 0x0000u);
  CHECK(f32_to_bf16_bits(0x00008000u) == 0x0000u);  // tie, to even 0
  CHECK(f32_to_bf16_bits(0x00008001u) == 0x0001u);
  CHECK(f32_to_bf16_bits(0x00018000u) == 0x0002u);  // tie, to even 2
  CHECK(f32_to_bf16_bits(0x007FFFFFu) == 0x0080u);  // rounds up to the smallest normal

  CHECK(f16_to_f32_bits(0x0001u) == bits_of(std::ldexp(1.0f, -24)));
  CHECK(f16_to_f32_bits(0x7E00u) == 0x7FC00000u);
}

TEST_CASE("cast_f32 converts arrays into any dtype it supports, at any alignment") {
  std::mt19937 rng(3);
  std::vector<float> src(1001);
  for (auto &v : src) v = f32_of(rng());
  src[5] = NAN;
  src[6] = -INFINITY;
  src[7] = 1e-42f;

  for (const Format *f : {&kF16, &kBf16}) {
    // Offset by one byte: the slot promises no alignment.
    std::vector<unsigned char> dst(src.size() * 2 + 1, 0xAB);
    REQUIRE(cast_f32(src.data(), dst.data() + 1, src.size(), dtype_of(*f)) == LF_OK);
    CHECK(dst[0] == 0xAB);
    for (size_t i = 0; i < src.size(); ++i) {
      uint16_t h;
      std::memcpy(&h, dst.data() + 1 + 2 * i, 2);
      REQUIRE(h == convert(*f, bits_of(src[i])));
    }
  }

  std::vector<float> copy(src.size(), 0.0f);
  REQUIRE(cast_f32(src.data(), copy.data(), src.size(), LF_DTYPE_F32) == LF_OK);
  CHECK(std::memcmp(copy.data(), src.data(), src.size() * 4) == 0);
  // In place is allowed for F32 and changes nothing.
  REQUIRE(cast_f32(copy.data(), copy.data(), copy.size(), LF_DTYPE_F32) == LF_OK);
  CHECK(std::memcmp(copy.data(), src.data(), src.size() * 4) == 0);
}

TEST_CASE("cast_f32 refuses other dtypes and null pointers and leaves dst untouched") {
  const float src[4] = {1.0f, 2.0f, 3.0f, 4.0f};
  unsigned char dst[32];
  std::memset(dst, 0xCD, sizeof dst);
  for (int dtype : {0, LF_DTYPE_F64, LF_DTYPE_I8, LF_DTYPE_U8, LF_DTYPE_I32, LF_DTYPE_I64, 99,
                    -1}) {
    CAPTURE(dtype);
    CHECK(cast_f32(src, dst, 4, dtype) == LF_E_INVALID_ARGUMENT);
  }
  CHECK(cast_f32(nullptr, dst, 4, LF_DTYPE_BF16) == LF_E_INVALID_ARGUMENT);
  CHECK(cast_f32(src, nullptr, 4, LF_DTYPE_F16) == LF_E_INVALID_ARGUMENT);
  for (unsigned char b : dst) REQUIRE(b == 0xCD);
  // Nothing to do is fine, with or without pointers.
  CHECK(cast_f32(nullptr, nullptr, 0, LF_DTYPE_F16) == LF_OK);
  CHECK(cast_f32(src, dst, 0, LF_DTYPE_BF16) == LF_OK);
  for (unsigned char b : dst) REQUIRE(b == 0xCD);
}
