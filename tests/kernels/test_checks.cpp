// kernels/validate against references written another way, the checksum pinned to fixed values
// (it is part of what the daemon compares; changing it must be deliberate), and what the CUDA
// launchers answer on a machine without a GPU (or in a build without CUDA). These run the
// variant chosen for this CPU; test_validate_isa.cpp holds every variant to the references.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cast.hpp"
#include "kernels/device_kernels.hpp"
#include "kernels/validate.hpp"
#include "loraflip.h"
#include "tests/kernels/validate_references.hpp"

using namespace loraflip::kernels;

using lftest::elem_size;
using lftest::reference_checksum;
using lftest::reference_first_non_finite;

TEST_CASE("checksum_mix is splitmix64's finalizer") {
  // splitmix64 seeded with 0 (Vigna's reference splitmix64.c) first outputs
  // 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4: mix(k * golden) for k = 1, 2.
  CHECK(checksum_mix(0, 0) == 0xE220A8397B1DCDAFull);
  CHECK(checksum_mix(0, 1) == 0x6E789E6AA1B965F4ull);
}

TEST_CASE("checksum of fixed bytes has a fixed value") {
  // Values computed by an independent Python implementation of the definition in validate.hpp.
  const char *text = "loraflip checksum v1";  // 20 bytes: two full words and a 4-byte tail
  CHECK(checksum(text, 20) == 0xD3EB96753397DE45ull);
  CHECK(checksum(text, 0) == 0);
  CHECK(checksum(text, 1) == 0xCD19F198025CE715ull);
}

TEST_CASE("checksum agrees with a byte-by-byte reference at every length and alignment") {
  std::mt19937_64 rng(11);
  std::vector<unsigned char> buf(5000);
  for (auto &b : buf) b = static_cast<unsigned char>(rng());
  for (uint64_t offset = 0; offset < 8; ++offset) {
    for (uint64_t len = 0; len <= 80; ++len) {
      REQUIRE(checksum(buf.data() + offset, len) == reference_checksum(buf.data() + offset, len));
    }
    REQUIRE(checksum(buf.data() + offset, 4000 + offset) ==
            reference_checksum(buf.data() + offset, 4000 + offset));
  }
}

TEST_CASE("checksum changes when any single bit or the length changes") {
  std::vector<unsigned char> buf(64, 0);
  const uint64_t base = checksum(buf.data(), buf.size());
  for (size_t bit = 0; bit < buf.size() * 8; ++bit) {
    buf[bit / 8] ^= static_cast<unsigned char>(1u << (bit % 8));
    REQUIRE(checksum(buf.data(), buf.size()) != base);
    buf[bit / 8] ^= static_cast<unsigned char>(1u << (bit % 8));
  }
  // The zero-padded tail does not make a trailing zero byte invisible.
  CHECK(checksum(buf.data(), 63) != base);
  // Swapping two different words changes it: the index matters.
  buf[0] = 1;
  const uint64_t a = checksum(buf.data(), 16);
  buf[0] = 0;
  buf[8] = 1;
  CHECK(checksum(buf.data(), 16) != a);
}

TEST_CASE("first_non_finite agrees with std::isfinite on random data of every float dtype") {
  std::mt19937_64 rng(5);
  for (int dtype : {LF_DTYPE_F32, LF_DTYPE_F64, LF_DTYPE_F16, LF_DTYPE_BF16}) {
    CAPTURE(dtype);
    const size_t es = elem_size(dtype);
    for (int round = 0; round < 200; ++round) {
      const uint64_t count = rng() % 300;
      std::vector<unsigned char> buf(count * es);
      for (auto &b : buf) b = static_cast<unsigned char>(rng());
      // Random bytes are non-finite at about 1/256 (fp32, bf16), 1/32 (fp16) or 1/2048 (fp64)
      // per element: clear the exponent's top bit of most elements to vary where the first is.
      for (uint64_t i = 0; i < count; ++i) {
        if (rng() % 8 != 0) buf[i * es + es - 1] &= 0xBF;
      }
      REQUIRE(first_non_finite(buf.data(), count, dtype) ==
              reference_first_non_finite(buf.data(), count, dtype));
    }
  }
}

TEST_CASE("first_non_finite finds the first of a few values planted anywhere in long buffers") {
  // The scan reads blocks of 512 bytes and rescans a block that holds a non-finite lane: one or
  // two planted values, in any block, at either edge of a block, or in the tail after the last
  // whole block, must come out exactly where they are.
  std::mt19937_64 rng(11);
  for (int dtype : {LF_DTYPE_F32, LF_DTYPE_F64, LF_DTYPE_F16, LF_DTYPE_BF16}) {
    CAPTURE(dtype);
    const size_t es = elem_size(dtype);
    const uint64_t per_block = 512 / es;
    for (int round = 0; round < 300; ++round) {
      const uint64_t count = 1 + rng() % (5 * per_block + 7);
      std::vector<unsigned char> buf(count * es);
      // Finite everywhere: random mantissas and signs, exponent top bit cleared.
      for (auto &b : buf) b = static_cast<unsigned char>(rng());
      for (uint64_t i = 0; i < count; ++i) buf[i * es + es - 1] &= 0xBF;
      const uint64_t edge = (rng() % 5) * per_block + (rng() % 2 ? 0 : per_block - 1);
      const uint64_t planted[] = {round % 3 == 0 ? edge % count : rng() % count, rng() % count};
      for (uint64_t at : planted) {
        if (round % 2 == 0 && at == planted[1]) continue;  // half the rounds plant one value
        buf[at * es + es - 1] |= 0x7F;  // exponent all ones (with the next line): inf or NaN
        buf[at * es + es - 2] |= static_cast<unsigned char>(dtype == LF_DTYPE_F16 ? 0x00 : 0xF0);
        if (dtype == LF_DTYPE_F16) buf[at * es + 1] |= 0x7C;
      }
      REQUIRE(first_non_finite(buf.data(), count, dtype) ==
              reference_first_non_finite(buf.data(), count, dtype));
    }
  }
}

TEST_CASE("first_non_finite classifies every fp16 and bf16 pattern like std::isfinite") {
  for (int dtype : {LF_DTYPE_F16, LF_DTYPE_BF16}) {
    for (uint32_t h = 0; h <= 0xFFFFu; ++h) {
      const auto p = static_cast<uint16_t>(h);
      REQUIRE(first_non_finite(&p, 1, dtype) == reference_first_non_finite(&p, 1, dtype));
    }
  }
}

TEST_CASE("integer dtypes are always finite") {
  std::vector<unsigned char> ones(64, 0xFF);
  for (int dtype : {LF_DTYPE_I8, LF_DTYPE_U8, LF_DTYPE_I32, LF_DTYPE_I64}) {
    CHECK(first_non_finite(ones.data(), ones.size() / elem_size(dtype), dtype) == -1);
  }
}

#if defined(LF_KERNELS_TEST_WITH_CUDA)
TEST_CASE("CUDA launchers answer the workspace size without a GPU") {
  size_t prev = 0;
  for (uint64_t count : {0ull, 1ull, 2047ull, 2048ull, 2049ull, 1ull << 20, 1ull << 40}) {
    size_t bytes = 0;
    REQUIRE(lf_cuda_first_non_finite(nullptr, count, LF_DTYPE_BF16, nullptr, nullptr, &bytes,
                                     nullptr) == LF_OK);
    CHECK(bytes >= 8);
    CHECK(bytes <= kCudaWorkspaceMaxBytes);
    CHECK(bytes >= prev);  // never grows with a smaller count
    prev = bytes;
    size_t cbytes = 0;
    REQUIRE(lf_cuda_checksum(nullptr, count, nullptr, nullptr, &cbytes, nullptr) == LF_OK);
    CHECK(cbytes >= 8);
    CHECK(cbytes <= kCudaWorkspaceMaxBytes);
  }
  CHECK(prev == kCudaWorkspaceMaxBytes);
  size_t untouched = 12345;
  CHECK(lf_cuda_first_non_finite(nullptr, 10, 99, nullptr, nullptr, &untouched, nullptr) ==
        LF_E_INVALID_ARGUMENT);
  CHECK(untouched == 12345);
  CHECK(lf_cuda_checksum(nullptr, 10, nullptr, nullptr, nullptr, nullptr) ==
        LF_E_INVALID_ARGUMENT);
  CHECK(lf_cuda_cast_f32(nullptr, nullptr, 10, LF_DTYPE_F64, nullptr) == LF_E_INVALID_ARGUMENT);
  CHECK(lf_cuda_cast_f32(nullptr, nullptr, 10, LF_DTYPE_F16, nullptr) == LF_E_INVALID_ARGUMENT);
  CHECK(lf_cuda_cast_f32(nullptr, nullptr, 0, LF_DTYPE_F16, nullptr) == LF_OK);
}

TEST_CASE("the many-tensor launcher asks 32 bytes per tensor and refuses bad tables before any "
          "CUDA call") {
  const std::vector<CudaScanTensor> mixed = {
      {0, 100, LF_DTYPE_F32, 0}, {400, 0, LF_DTYPE_BF16, 0}, {512, 7, LF_DTYPE_I64, 0}};
  size_t bytes = 0;
  REQUIRE(lf_cuda_first_non_finite_tensors(nullptr, mixed.data(), mixed.size(), nullptr, nullptr,
                                           &bytes, nullptr) == LF_OK);
  CHECK(bytes == 3 * 32);
  REQUIRE(lf_cuda_first_non_finite_tensors(nullptr, nullptr, 0, nullptr, nullptr, &bytes,
                                           nullptr) == LF_OK);
  CHECK(bytes == 0);
  // No tensors: nothing to do, even with a workspace.
  uint64_t fake_workspace[4] = {};
  size_t room = sizeof fake_workspace;
  CHECK(lf_cuda_first_non_finite_tensors(nullptr, nullptr, 0, nullptr, fake_workspace, &room,
                                         nullptr) == LF_OK);

  size_t untouched = 12345;
  const std::vector<CudaScanTensor> unknown = {{0, 10, LF_DTYPE_F32, 0}, {64, 10, 99, 0}};
  CHECK(lf_cuda_first_non_finite_tensors(nullptr, unknown.data(), unknown.size(), nullptr,
                                         nullptr, &untouched, nullptr) == LF_E_INVALID_ARGUMENT);
  CHECK(untouched == 12345);
  const std::vector<CudaScanTensor> too_long = {{0, UINT64_MAX / 2, LF_DTYPE_F32, 0}};
  CHECK(lf_cuda_first_non_finite_tensors(nullptr, too_long.data(), 1, nullptr, nullptr, &bytes,
                                         nullptr) == LF_E_INVALID_ARGUMENT);
  CHECK(lf_cuda_first_non_finite_tensors(nullptr, nullptr, 2, nullptr, nullptr, &bytes,
                                         nullptr) == LF_E_INVALID_ARGUMENT);
  CHECK(lf_cuda_first_non_finite_tensors(nullptr, mixed.data(), size_t{1} << 32, nullptr,
                                         nullptr, &bytes, nullptr) == LF_E_INVALID_ARGUMENT);
  CHECK(lf_cuda_first_non_finite_tensors(nullptr, mixed.data(), 1, nullptr, nullptr, nullptr,
                                         nullptr) == LF_E_INVALID_ARGUMENT);

  // Refused when run, still before touching the GPU: the pointers below are never dereferenced.
  auto *base = reinterpret_cast<const void *>(uintptr_t{1} << 20);
  auto *results = reinterpret_cast<int64_t *>(uintptr_t{2} << 20);
  auto *workspace = reinterpret_cast<void *>(uintptr_t{3} << 20);
  auto run = [&](const void *b, std::vector<CudaScanTensor> t, int64_t *r, size_t ws_bytes) {
    return lf_cuda_first_non_finite_tensors(b, t.data(), t.size(), r, workspace, &ws_bytes,
                                            nullptr);
  };
  CHECK(run(base, {{2, 4, LF_DTYPE_F32, 0}}, results, 32) == LF_E_INVALID_ARGUMENT);  // misaligned
  CHECK(run(base, {{4, 4, LF_DTYPE_F64, 0}}, results, 32) == LF_E_INVALID_ARGUMENT);
  CHECK(run(nullptr, {{0, 4, LF_DTYPE_F16, 0}}, results, 32) == LF_E_INVALID_ARGUMENT);
  CHECK(run(base, {{0, 4, LF_DTYPE_F16, 0}}, results, 31) == LF_E_INVALID_ARGUMENT);  // too small
  CHECK(run(base, {{0, 4, LF_DTYPE_F16, 0}}, nullptr, 32) == LF_E_INVALID_ARGUMENT);
  auto *misaligned = reinterpret_cast<int64_t *>((uintptr_t{2} << 20) + 4);
  CHECK(run(base, {{0, 4, LF_DTYPE_F16, 0}}, misaligned, 32) == LF_E_INVALID_ARGUMENT);
}
#else
TEST_CASE("without CUDA every launcher says unsupported") {
  size_t bytes = 0;
  CHECK(lf_cuda_first_non_finite_tensors(nullptr, nullptr, 0, nullptr, nullptr, &bytes,
                                         nullptr) == LF_E_UNSUPPORTED);
  CHECK(lf_cuda_first_non_finite(nullptr, 10, LF_DTYPE_F32, nullptr, nullptr, &bytes, nullptr) ==
        LF_E_UNSUPPORTED);
  CHECK(lf_cuda_checksum(nullptr, 10, nullptr, nullptr, &bytes, nullptr) == LF_E_UNSUPPORTED);
  CHECK(lf_cuda_cast_f32(nullptr, nullptr, 10, LF_DTYPE_BF16, nullptr) == LF_E_UNSUPPORTED);
}
#endif
