// kernels/validate: first_non_finite per dtype and the slot checksum.
#include <doctest/doctest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/validate.hpp"
#include "loraflip.h"

using loraflip::kernels::checksum;
using loraflip::kernels::first_non_finite;

namespace {

template <typename T>
std::vector<T> finite_samples(const std::vector<T> &specials, size_t n) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = specials[i % specials.size()];
  return v;
}

std::vector<unsigned char> random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<unsigned char> v(n);
  for (auto &b : v) b = static_cast<unsigned char>(rng());
  return v;
}

}  // namespace

TEST_CASE("first_non_finite finds NaN and infinities in f32 at the right index") {
  const std::vector<float> finite = {0.0f, -0.0f, 1.0f, -1.5f, FLT_MAX, -FLT_MAX, FLT_MIN,
                                     std::numeric_limits<float>::denorm_min()};
  std::vector<float> v = finite_samples(finite, 101);
  CHECK(first_non_finite(v.data(), v.size(), LF_DTYPE_F32) == -1);
  CHECK(first_non_finite(v.data(), 0, LF_DTYPE_F32) == -1);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    for (size_t at : {size_t{0}, size_t{37}, size_t{100}}) {
      std::vector<float> w = v;
      w[at] = bad;
      CHECK(first_non_finite(w.data(), w.size(), LF_DTYPE_F32) == static_cast<int64_t>(at));
      // Only elements before `count` are looked at.
      CHECK(first_non_finite(w.data(), at, LF_DTYPE_F32) == -1);
    }
  }
  std::vector<float> two = v;
  two[10] = NAN;
  two[5] = INFINITY;
  CHECK(first_non_finite(two.data(), two.size(), LF_DTYPE_F32) == 5);
}

TEST_CASE("first_non_finite finds NaN and infinities in f64 at the right index") {
  const std::vector<double> finite = {0.0, -0.0, 3.25, DBL_MAX, -DBL_MAX, DBL_MIN,
                                      std::numeric_limits<double>::denorm_min()};
  std::vector<double> v = finite_samples(finite, 64);
  CHECK(first_non_finite(v.data(), v.size(), LF_DTYPE_F64) == -1);
  for (double bad : {std::numeric_limits<double>::quiet_NaN(),
                     std::numeric_limits<double>::infinity(),
                     -std::numeric_limits<double>::infinity()}) {
    std::vector<double> w = v;
    w[42] = bad;
    CHECK(first_non_finite(w.data(), w.size(), LF_DTYPE_F64) == 42);
  }
}

TEST_CASE("first_non_finite finds NaN and infinities in f16 bit patterns") {
  // 0x7BFF is the largest finite half (65504), 0x0001 the smallest subnormal.
  std::vector<uint16_t> v = finite_samples<uint16_t>({0x0000, 0x8000, 0x3C00, 0x7BFF, 0xFBFF,
                                                      0x0001, 0x03FF}, 50);
  CHECK(first_non_finite(v.data(), v.size(), LF_DTYPE_F16) == -1);
  for (uint16_t bad : {uint16_t{0x7C00}, uint16_t{0xFC00}, uint16_t{0x7E00}, uint16_t{0x7C01},
                       uint16_t{0xFFFF}}) {
    std::vector<uint16_t> w = v;
    w[17] = bad;
    CHECK(first_non_finite(w.data(), w.size(), LF_DTYPE_F16) == 17);
  }
}

TEST_CASE("first_non_finite finds NaN and infinities in bf16 bit patterns") {
  // 0x7F7F is the largest finite bfloat16.
  std::vector<uint16_t> v = finite_samples<uint16_t>({0x0000, 0x8000, 0x3F80, 0x7F7F, 0xFF7F,
                                                      0x0001}, 50);
  CHECK(first_non_finite(v.data(), v.size(), LF_DTYPE_BF16) == -1);
  for (uint16_t bad : {uint16_t{0x7F80}, uint16_t{0xFF80}, uint16_t{0x7FC0}, uint16_t{0x7F81}}) {
    std::vector<uint16_t> w = v;
    w[49] = bad;
    CHECK(first_non_finite(w.data(), w.size(), LF_DTYPE_BF16) == 49);
    w[3] = bad;
    CHECK(first_non_finite(w.data(), w.size(), LF_DTYPE_BF16) == 3);
  }
  // An f16 infinity is an ordinary bf16 number, and the other way around.
  const uint16_t f16_inf = 0x7C00, bf16_inf = 0x7F80;
  CHECK(first_non_finite(&f16_inf, 1, LF_DTYPE_BF16) == -1);
  CHECK(first_non_finite(&bf16_inf, 1, LF_DTYPE_F16) == 0);  // 0x7F80 has all f16 exponent bits
}

TEST_CASE("first_non_finite treats integer dtypes as always finite") {
  std::vector<unsigned char> ones(64, 0xFF);
  for (int dtype : {LF_DTYPE_I8, LF_DTYPE_U8, LF_DTYPE_I32, LF_DTYPE_I64})
    CHECK(first_non_finite(ones.data(), 64 / 8, dtype) == -1);
}

TEST_CASE("first_non_finite reads unaligned data") {
  std::vector<unsigned char> buf(4 * 9 + 1, 0);
  const float inf = INFINITY;
  std::memcpy(buf.data() + 1 + 4 * 6, &inf, 4);
  CHECK(first_non_finite(buf.data() + 1, 9, LF_DTYPE_F32) == 6);
}

TEST_CASE("checksum is equal for equal data, wherever the data lies") {
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{1000}}) {
    const auto a = random_bytes(n, 1);
    std::vector<unsigned char> shifted(n + 3);
    std::copy(a.begin(), a.end(), shifted.begin() + 3);
    CHECK(checksum(a.data(), n) == checksum(shifted.data() + 3, n));
  }
}

TEST_CASE("checksum changes when any single byte changes") {
  const auto a = random_bytes(203, 2);  // not a multiple of 8: the tail counts too
  const uint64_t base = checksum(a.data(), a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    for (unsigned char delta : {0x01, 0x80, 0xFF}) {
      auto b = a;
      b[i] ^= delta;
      REQUIRE_MESSAGE(checksum(b.data(), b.size()) != base, "byte " << i << " xor " << int(delta));
    }
  }
}

TEST_CASE("checksum changes when bytes or words swap positions") {
  const auto a = random_bytes(256, 3);
  const uint64_t base = checksum(a.data(), a.size());
  std::mt19937_64 rng(4);
  for (int k = 0; k < 2000; ++k) {
    const size_t i = rng() % a.size(), j = rng() % a.size();
    if (a[i] == a[j]) continue;
    auto b = a;
    std::swap(b[i], b[j]);
    REQUIRE_MESSAGE(checksum(b.data(), b.size()) != base, "swap " << i << " and " << j);
  }
  // Two whole 8-byte words trading places: a plain sum of words would miss this.
  auto b = a;
  std::swap_ranges(b.begin(), b.begin() + 8, b.begin() + 64);
  CHECK(checksum(b.data(), b.size()) != base);
}

TEST_CASE("checksum depends on the length, not only on the bytes") {
  std::vector<unsigned char> z(17, 0);
  CHECK(checksum(z.data(), 16) != checksum(z.data(), 17));
  CHECK(checksum(z.data(), 0) != checksum(z.data(), 1));
}
