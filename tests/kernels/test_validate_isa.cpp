// Every instruction-set variant of the commit checks (kernels/validate_isa_*.cpp) against the
// references of validate_references.hpp: the first non-finite element planted at every position
// of every length up to a few blocks (so at both edges of every vector and block, and in every
// tail), at unaligned starts, for each float dtype and for infinities and NaNs of either sign
// and any payload; and the checksum at every length and alignment, for runs that start at any
// word index, and split over threads. A variant this build lacks or this CPU cannot run is
// skipped, visibly: meson runs each variant's case as a test of its own
// (tests/kernels/meson.build).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/validate.hpp"
#include "loraflip.h"
#include "tests/kernels/validate_references.hpp"
#include "tests/skip.hpp"

using namespace loraflip::kernels;
using lftest::elem_size;
using lftest::reference_checksum;
using lftest::reference_first_non_finite;

namespace {

// Why `name` cannot run here, or "" when it can.
std::string why_not_runnable(const std::string &name) {
  for (const ValidateIsaVariant &v : validate_isa_variants()) {
    if (name != v.name) continue;
    return v.supported ? "" : "this CPU cannot run the " + name + " variant";
  }
  return "this build has no " + name + " variant (not x86-64, or the compiler lacks its flags)";
}

// The variant in use for one test case; the one chosen at start again afterwards.
struct UseVariant {
  explicit UseVariant(const std::string &name) {
    REQUIRE(force_validate_isa(name.c_str()));
    REQUIRE(std::string(validate_isa()) == name);
  }
  ~UseVariant() { force_validate_isa(nullptr); }
  UseVariant(const UseVariant &) = delete;
  UseVariant &operator=(const UseVariant &) = delete;
};

// A buffer whose data starts `offset` bytes past a 64-byte boundary.
struct Buffer {
  Buffer(size_t bytes, size_t offset) : storage(bytes + offset + 64) {
    const auto base = reinterpret_cast<uintptr_t>(storage.data());
    data = storage.data() + ((64 - base % 64) % 64) + offset;
  }
  std::vector<unsigned char> storage;
  unsigned char *data;
};

// One float dtype as its bits: the exponent mask, and non-finite patterns (both infinities,
// quiet and signalling NaNs, NaNs with the sign bit and with payloads).
template <typename Bits>
struct FloatBits {
  int dtype;
  Bits exponent;
  std::vector<Bits> non_finite;
};

const FloatBits<uint16_t> kBf16{LF_DTYPE_BF16, 0x7F80, {0x7F80, 0xFF80, 0x7FC0, 0x7F81, 0xFFFF,
                                                        0x7FA5}};
const FloatBits<uint16_t> kF16{LF_DTYPE_F16, 0x7C00, {0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFFFF,
                                                      0x7D5A}};
const FloatBits<uint32_t> kF32{LF_DTYPE_F32, 0x7F800000u,
                               {0x7F800000u, 0xFF800000u, 0x7FC00000u, 0x7F800001u, 0xFFFFFFFFu,
                                0x7FA5A5A5u}};
const FloatBits<uint64_t> kF64{LF_DTYPE_F64, 0x7FF0000000000000ull,
                               {0x7FF0000000000000ull, 0xFFF0000000000000ull,
                                0x7FF8000000000000ull, 0x7FF0000000000001ull,
                                0xFFFFFFFFFFFFFFFFull, 0x7FF5A5A5A5A5A5A5ull}};

// Random finite bits of either sign, one in four with the largest finite exponent (all ones
// but the lowest bit: a near miss for a mask that is one bit short).
template <typename Bits>
Bits random_finite(const FloatBits<Bits> &f, std::mt19937_64 &rng) {
  auto v = static_cast<Bits>(rng());
  const Bits low_exponent_bit = static_cast<Bits>(f.exponent & (~f.exponent + 1));
  if (rng() % 4 == 0) v |= static_cast<Bits>(f.exponent & ~low_exponent_bit);
  if ((v & f.exponent) == f.exponent) v = static_cast<Bits>(v & ~low_exponent_bit);
  return v;
}

template <typename Bits>
void put(unsigned char *p, uint64_t i, Bits v) {
  std::memcpy(p + i * sizeof(Bits), &v, sizeof(Bits));
}

// Every count up to two of the widest block (512 bytes: the baseline's) and a vector more, at
// starts aligned to 64 bytes, to the element only, and to no even address: all finite, then a
// non-finite value planted at each position in turn, sometimes with a second one after it.
template <typename Bits>
void check_planted_everywhere(const FloatBits<Bits> &f) {
  CAPTURE(f.dtype);
  std::mt19937_64 rng(f.dtype);
  const uint64_t max_count = (2 * 512 + 64 + 24) / sizeof(Bits);
  for (size_t offset : {size_t{0}, sizeof(Bits), size_t{1}, size_t{62}}) {
    CAPTURE(offset);
    Buffer buf(max_count * sizeof(Bits), offset);
    for (uint64_t count = 0; count <= max_count; ++count) {
      CAPTURE(count);
      for (uint64_t i = 0; i < count; ++i) put(buf.data, i, random_finite(f, rng));
      REQUIRE(first_non_finite(buf.data, count, f.dtype) == -1);
      for (uint64_t at = 0; at < count; ++at) {
        CAPTURE(at);
        Bits saved = 0, saved_later = 0;
        std::memcpy(&saved, buf.data + at * sizeof(Bits), sizeof(Bits));
        put(buf.data, at, f.non_finite[(at + count) % f.non_finite.size()]);
        const uint64_t later = at + 1 + rng() % (count - at);  // == count: none
        if (later < count) {
          std::memcpy(&saved_later, buf.data + later * sizeof(Bits), sizeof(Bits));
          put(buf.data, later, f.non_finite[rng() % f.non_finite.size()]);
        }
        REQUIRE(first_non_finite(buf.data, count, f.dtype) == static_cast<int64_t>(at));
        if (later < count) put(buf.data, later, saved_later);
        put(buf.data, at, saved);
      }
    }
  }
}

// Random bytes (non-finite values where they fall) at random lengths and starts.
void check_random_bytes(int dtype) {
  CAPTURE(dtype);
  std::mt19937_64 rng(100 + dtype);
  const size_t es = elem_size(dtype);
  for (int round = 0; round < 400; ++round) {
    const uint64_t count = rng() % (3000 / es);
    Buffer buf(count * es, rng() % 64);
    for (uint64_t b = 0; b < count * es; ++b) buf.data[b] = static_cast<unsigned char>(rng());
    // Clear the exponent's top bit of most elements, to vary where the first non-finite is.
    for (uint64_t i = 0; i < count; ++i)
      if (rng() % 16 != 0) buf.data[i * es + es - 1] &= 0xBF;
    REQUIRE(first_non_finite(buf.data, count, dtype) ==
            reference_first_non_finite(buf.data, count, dtype));
  }
}

// Every f16 and bf16 pattern, each at a lane that moves through the vectors and the tail of a
// buffer otherwise finite.
void check_every_16_bit_pattern() {
  constexpr uint64_t kCount = 263;  // a few blocks of every variant, and a 7-element tail
  for (const FloatBits<uint16_t> *f : {&kF16, &kBf16}) {
    CAPTURE(f->dtype);
    std::vector<uint16_t> buf(kCount, 0x3C00);  // finite in both: 1.0 in f16, 2^-7 in bf16
    for (uint32_t h = 0; h <= 0xFFFFu; ++h) {
      const uint64_t at = h % kCount;
      buf[at] = static_cast<uint16_t>(h);
      REQUIRE(first_non_finite(buf.data(), kCount, f->dtype) ==
              reference_first_non_finite(buf.data(), kCount, f->dtype));
      buf[at] = 0x3C00;
    }
  }
}

// Every f32 and f64 exponent with either sign and mantissas at both ends, at moving lanes.
template <typename Bits>
void check_every_exponent(const FloatBits<Bits> &f, int mantissa_bits) {
  CAPTURE(f.dtype);
  const uint64_t count = 512 / sizeof(Bits) + 3;
  const Bits one_bits = static_cast<Bits>((f.exponent >> 1) & f.exponent);  // 1.0
  std::vector<Bits> buf(count, one_bits);
  const Bits top = static_cast<Bits>(Bits{1} << (mantissa_bits - 1));
  const Bits mantissas[] = {0, 1, top, static_cast<Bits>((Bits{1} << mantissa_bits) - 1)};
  const uint64_t exponents = uint64_t{f.exponent >> mantissa_bits} + 1;
  uint64_t n = 0;
  for (uint64_t e = 0; e < exponents; ++e)
    for (Bits sign : {Bits{0}, static_cast<Bits>(Bits{1} << (8 * sizeof(Bits) - 1))})
      for (Bits mantissa : mantissas) {
        const uint64_t at = n++ % count;
        buf[at] = static_cast<Bits>(sign | static_cast<Bits>(e << mantissa_bits) | mantissa);
        REQUIRE(first_non_finite(buf.data(), count, f.dtype) ==
                reference_first_non_finite(buf.data(), count, f.dtype));
        buf[at] = one_bits;
      }
}

void check_checksums() {
  std::mt19937_64 rng(7);
  std::vector<unsigned char> bytes(1300 + 64);
  for (auto &b : bytes) b = static_cast<unsigned char>(rng());
  // Every length past two of the widest unrolled step (2 x 64 bytes) several times, every start.
  for (uint64_t offset = 0; offset < 9; ++offset) {
    CAPTURE(offset);
    for (uint64_t len = 0; len <= 1300; ++len) {
      CAPTURE(len);
      REQUIRE(checksum(bytes.data() + offset, len) ==
              reference_checksum(bytes.data() + offset, len));
    }
  }
  // Runs of words that start at any index, as checksum_parallel's later runs do.
  for (uint64_t first : {uint64_t{0}, uint64_t{1}, uint64_t{7}, uint64_t{12345},
                         (uint64_t{1} << 33) + 5, ~uint64_t{0} - 20}) {
    CAPTURE(first);
    for (uint64_t words = 0; words <= 40; ++words) {
      CAPTURE(words);
      uint64_t want = 0;
      for (uint64_t k = 0; k < words; ++k) {
        uint64_t w;
        std::memcpy(&w, bytes.data() + 3 + 8 * k, 8);
        want += checksum_mix(w, first + k);
      }
      REQUIRE(checksum_words(bytes.data() + 3, first, words) == want);
    }
  }
}

// Above ipc::kParallelBytes (8 MiB) the sum is split over threads where the machine has more
// than one core; the same value either way.
void check_parallel_checksum() {
  std::mt19937_64 rng(9);
  Buffer buf((uint64_t{9} << 20) + 64, 0);
  for (uint64_t b = 0; b < (uint64_t{9} << 20) + 64; b += 8) {
    const uint64_t w = rng();
    std::memcpy(buf.data + b, &w, 8);
  }
  for (uint64_t bytes : {uint64_t{1000}, (uint64_t{8} << 20), (uint64_t{8} << 20) + 13,
                         (uint64_t{9} << 20) + 5}) {
    for (uint64_t offset : {uint64_t{0}, uint64_t{3}}) {
      CAPTURE(bytes);
      CAPTURE(offset);
      const uint64_t want = reference_checksum(buf.data + offset, bytes);
      CHECK(checksum(buf.data + offset, bytes) == want);
      CHECK(checksum_parallel(buf.data + offset, bytes) == want);
    }
  }
}

void check_variant(const std::string &name) {
  UseVariant use(name);
  check_planted_everywhere(kBf16);
  check_planted_everywhere(kF16);
  check_planted_everywhere(kF32);
  check_planted_everywhere(kF64);
  for (int dtype : {LF_DTYPE_F32, LF_DTYPE_F64, LF_DTYPE_F16, LF_DTYPE_BF16})
    check_random_bytes(dtype);
  check_every_16_bit_pattern();
  check_every_exponent(kF32, 23);
  check_every_exponent(kF64, 52);
  std::vector<unsigned char> ones(64, 0xFF);
  for (int dtype : {LF_DTYPE_I8, LF_DTYPE_U8, LF_DTYPE_I32, LF_DTYPE_I64})
    CHECK(first_non_finite(ones.data(), ones.size() / elem_size(dtype), dtype) == -1);
  check_checksums();
  check_parallel_checksum();
}

}  // namespace

// One case per variant, best first; tests/kernels/meson.build runs each as a test of its own.
TEST_CASE("the avx512 variant of the checks agrees with the references") {
  if (const std::string why = why_not_runnable("avx512"); !why.empty()) LF_SKIP(why);
  check_variant("avx512");
}

TEST_CASE("the avx2 variant of the checks agrees with the references") {
  if (const std::string why = why_not_runnable("avx2"); !why.empty()) LF_SKIP(why);
  check_variant("avx2");
}

TEST_CASE("the baseline variant of the checks agrees with the references") {
  if (const std::string why = why_not_runnable("baseline"); !why.empty()) LF_SKIP(why);
  check_variant("baseline");
}

TEST_CASE("the baseline variant is built and runs everywhere; forcing an unknown one changes "
          "nothing") {
  const std::vector<ValidateIsaVariant> variants = validate_isa_variants();
  REQUIRE(!variants.empty());
  CHECK(std::string(variants.back().name) == "baseline");
  CHECK(variants.back().supported);
  const std::string before = validate_isa();
  CHECK_FALSE(force_validate_isa("no-such-isa"));
  CHECK(std::string(validate_isa()) == before);
}

TEST_CASE("the checks use the variant LORAFLIP_VALIDATE_ISA names, else the best one") {
  // meson runs this case in processes of its own (the choice is made once, at the first call),
  // with LORAFLIP_VALIDATE_ISA=baseline and with it empty (as good as unset).
  const char *want = std::getenv("LORAFLIP_VALIDATE_ISA");
  if (want != nullptr && *want == '\0') want = nullptr;
  const std::string in_use = validate_isa();
  MESSAGE("checks variant in use: " << in_use);
  const std::vector<ValidateIsaVariant> variants = validate_isa_variants();
  if (want == nullptr) {
    const auto best = std::find_if(variants.begin(), variants.end(),
                                   [](const ValidateIsaVariant &v) { return v.supported; });
    REQUIRE(best != variants.end());
    CHECK(in_use == best->name);
    return;
  }
  if (const std::string why = why_not_runnable(want); !why.empty()) LF_SKIP(why);
  CHECK(in_use == want);
}
