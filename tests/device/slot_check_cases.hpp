// Scenarios of Backend::check_slot that every implementation must pass: the host stand-in in
// tests/device, the CUDA implementation in tests/gpu. Each writes a slot through the backend's
// own copies, checks it with check_slot, and compares with the CPU functions of
// kernels/validate.hpp over the same bytes: the checksum bit for bit, the first non-finite
// element exactly.
#pragma once

#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "device/device.hpp"
#include "ipc/dtype.hpp"
#include "kernels/validate.hpp"
#include "loraflip.h"

namespace slot_check_cases {

namespace dev = loraflip::device;

template <typename R>
std::string why_not(const R &r) {
  return r.ok() ? std::string() : r.error().message;
}

// Copies `n` host bytes to `dst` on `device` and waits for the copy.
inline void put(dev::Backend &b, int device, std::byte *dst, const void *src, uint64_t n) {
  REQUIRE(b.copy(dst, src, n, dev::CopyKind::kHostToDevice, device, nullptr).ok());
  REQUIRE(b.synchronize(device, nullptr).ok());
}

inline std::vector<unsigned char> get(dev::Backend &b, int device, const std::byte *src,
                                      uint64_t n) {
  std::vector<unsigned char> out(n);
  REQUIRE(b.copy(out.data(), src, n, dev::CopyKind::kDeviceToHost, device, nullptr).ok());
  REQUIRE(b.synchronize(device, nullptr).ok());
  return out;
}

inline bool is_float(int dtype) {
  return dtype == LF_DTYPE_F32 || dtype == LF_DTYPE_F16 || dtype == LF_DTYPE_BF16 ||
         dtype == LF_DTYPE_F64;
}

// Exponent masks of the float dtypes, as kernels/validate.cpp tests them.
inline uint64_t exponent_mask(int dtype) {
  switch (dtype) {
    case LF_DTYPE_F32: return 0x7F800000u;
    case LF_DTYPE_F64: return 0x7FF0000000000000ull;
    case LF_DTYPE_F16: return 0x7C00u;
    case LF_DTYPE_BF16: return 0x7F80u;
    default: return 0;
  }
}

// Random bytes, eight at a time.
inline void fill_random(std::vector<unsigned char> &v, std::mt19937_64 &rng) {
  size_t i = 0;
  for (; i + 8 <= v.size(); i += 8) {
    const uint64_t word = rng();
    std::memcpy(v.data() + i, &word, 8);
  }
  for (; i < v.size(); ++i) v[i] = static_cast<unsigned char>(rng());
}

// `count` random elements of `dtype`; float elements are kept finite (one exponent bit cleared
// where all were set), so that only planted values are not.
inline std::vector<unsigned char> random_elements(int dtype, uint64_t count, std::mt19937_64 &rng) {
  const size_t elem = loraflip::ipc::dtype_size(dtype);
  std::vector<unsigned char> v(count * elem);
  fill_random(v, rng);
  if (const uint64_t mask = exponent_mask(dtype); mask != 0) {
    for (uint64_t i = 0; i < count; ++i) {
      uint64_t bits = 0;
      std::memcpy(&bits, v.data() + i * elem, elem);
      if ((bits & mask) == mask) bits &= ~(mask & ~(mask << 1));  // clears the exponent's low bit
      std::memcpy(v.data() + i * elem, &bits, elem);
    }
  }
  return v;
}

// Writes the element `bits` (its low `elem` bytes) at element `i`.
inline void set_element(std::vector<unsigned char> &v, int dtype, uint64_t i, uint64_t bits) {
  const size_t elem = loraflip::ipc::dtype_size(dtype);
  std::memcpy(v.data() + i * elem, &bits, elem);
}

// A slot as plan_slot lays one out: a LoRA pair and a bias, f32 A [4, 64], bf16 B [64, 4] and
// f16 bias [67] (134 bytes: not a whole number of 8-byte words) at 256-byte offsets, in 2 KiB.
// The second tensor gets a NaN at element 13 and an infinity at element 20, the third an
// infinity at element 0: the second tensor's element 13 is reported; once that tensor is clean,
// the third tensor's element 0; then nothing. The padding holds random bytes, and the checksum
// covers it, as the writer's does.
inline void nan_in_second_tensor_is_named(dev::Backend &b, int device, std::byte *slot) {
  constexpr uint64_t kSlotBytes = 2048;
  const std::vector<dev::TensorExtent> tensors = {
      {0, 4 * 64 * 4, LF_DTYPE_F32},
      {1024, 64 * 4 * 2, LF_DTYPE_BF16},
      {1536, 67 * 2, LF_DTYPE_F16}};
  std::mt19937_64 rng(7);
  std::vector<unsigned char> host(kSlotBytes);
  fill_random(host, rng);
  std::vector<std::vector<unsigned char>> values;
  for (const auto &t : tensors)
    values.push_back(random_elements(t.dtype, t.bytes / loraflip::ipc::dtype_size(t.dtype), rng));
  set_element(values[1], LF_DTYPE_BF16, 13, 0x7FC1);  // a quiet NaN with a payload
  set_element(values[1], LF_DTYPE_BF16, 20, 0xFF80);  // -infinity, later in the same tensor
  set_element(values[2], LF_DTYPE_F16, 0, 0x7C00);    // +infinity
  auto write = [&] {
    for (size_t t = 0; t < tensors.size(); ++t)
      std::memcpy(host.data() + tensors[t].offset, values[t].data(), values[t].size());
    put(b, device, slot, host.data(), kSlotBytes);
  };
  const unsigned both = dev::kCheckFinite | dev::kCheckChecksum;

  write();
  auto found = b.check_slot(device, slot, kSlotBytes, tensors, both);
  REQUIRE_MESSAGE(found.ok(), why_not(found));
  CHECK(found->tensor == 1);
  CHECK(found->element == 13);
  CHECK(found->bits == 0x7FC1);
  CHECK(found->checksum == loraflip::kernels::checksum(host.data(), kSlotBytes));

  // Not asked for, the finite check reports nothing; the checksum alone is still exact.
  auto sum_only = b.check_slot(device, slot, kSlotBytes, tensors, dev::kCheckChecksum);
  REQUIRE_MESSAGE(sum_only.ok(), why_not(sum_only));
  CHECK(sum_only->tensor == -1);
  CHECK(sum_only->checksum == found->checksum);
  auto finite_only = b.check_slot(device, slot, kSlotBytes, tensors, dev::kCheckFinite);
  REQUIRE_MESSAGE(finite_only.ok(), why_not(finite_only));
  CHECK(finite_only->tensor == 1);
  CHECK(finite_only->checksum == 0);

  set_element(values[1], LF_DTYPE_BF16, 13, 0x3F80);  // 1.0
  set_element(values[1], LF_DTYPE_BF16, 20, 0xBF80);  // -1.0
  write();
  found = b.check_slot(device, slot, kSlotBytes, tensors, both);
  REQUIRE_MESSAGE(found.ok(), why_not(found));
  CHECK(found->tensor == 2);
  CHECK(found->element == 0);
  CHECK(found->bits == 0x7C00);

  set_element(values[2], LF_DTYPE_F16, 0, 0x3C00);  // 1.0
  write();
  found = b.check_slot(device, slot, kSlotBytes, tensors, both);
  REQUIRE_MESSAGE(found.ok(), why_not(found));
  CHECK(found->tensor == -1);
  CHECK(found->element == -1);
  CHECK(found->checksum == loraflip::kernels::checksum(host.data(), kSlotBytes));

  // Integer tensors are finite whatever their bits; the same bytes read as f32 are not.
  std::vector<unsigned char> ones(kSlotBytes, 0xFF);
  put(b, device, slot, ones.data(), kSlotBytes);
  const std::vector<dev::TensorExtent> ints = {{0, 1024, LF_DTYPE_I32},
                                               {1024, 1024, LF_DTYPE_U8}};
  found = b.check_slot(device, slot, kSlotBytes, ints, both);
  REQUIRE_MESSAGE(found.ok(), why_not(found));
  CHECK(found->tensor == -1);
  const std::vector<dev::TensorExtent> floats = {{0, 1024, LF_DTYPE_I32},
                                                 {1024, 1024, LF_DTYPE_F32}};
  found = b.check_slot(device, slot, kSlotBytes, floats, both);
  REQUIRE_MESSAGE(found.ok(), why_not(found));
  CHECK(found->tensor == 1);
  CHECK(found->element == 0);
  CHECK(found->bits == 0xFFFFFFFFu);
}

// For every dtype and element counts around the CPU's 8-byte words, the GPU's 256-thread blocks
// of 8 elements each (2048) and its grid of at most 1024 blocks (2 Mi elements per pass): one
// tensor at offset 256 of a slot a few bytes longer than it (so the checksum's tail word is
// partial), with a non-finite element planted at a random place in two cases of three. Then the
// checksum alone over slots at every address modulo 8 (the CUDA kernel reads words when it can).
// `slot` must have room for `room` bytes.
inline void results_equal_cpu(dev::Backend &b, int device, std::byte *slot, uint64_t room) {
  const int dtypes[] = {LF_DTYPE_F32, LF_DTYPE_F16, LF_DTYPE_BF16, LF_DTYPE_F64,
                        LF_DTYPE_I8,  LF_DTYPE_U8,  LF_DTYPE_I32,  LF_DTYPE_I64};
  const uint64_t counts[] = {0, 1, 3, 4, 5, 7, 9, 31, 33, 255, 257, 2047, 2048, 2049, 70001,
                             (uint64_t{2} << 20) + 5};
  std::mt19937_64 rng(2024);
  for (int dtype : dtypes) {
    const size_t elem = loraflip::ipc::dtype_size(dtype);
    for (uint64_t count : counts) {
      const uint64_t tensor_bytes = count * elem;
      const uint64_t slot_bytes = 256 + tensor_bytes + count % 8;
      if (slot_bytes > room) continue;
      CAPTURE(loraflip::ipc::dtype_name(dtype));
      CAPTURE(count);
      std::vector<unsigned char> host(slot_bytes);
      fill_random(host, rng);
      auto values = random_elements(dtype, count, rng);
      if (is_float(dtype) && count != 0 && rng() % 3 != 0) {
        // NaN or infinity of either sign: exponent all ones, random mantissa and sign.
        const uint64_t i = rng() % count;
        uint64_t bits = 0;
        std::memcpy(&bits, values.data() + i * elem, elem);
        set_element(values, dtype, i, bits | exponent_mask(dtype));
      }
      if (!values.empty())  // memcpy from the null data() of an empty vector is undefined
        std::memcpy(host.data() + 256, values.data(), values.size());
      put(b, device, slot, host.data(), slot_bytes);
      const std::vector<dev::TensorExtent> tensors = {{256, tensor_bytes, dtype}};
      auto found = b.check_slot(device, slot, slot_bytes, tensors,
                                dev::kCheckFinite | dev::kCheckChecksum);
      REQUIRE_MESSAGE(found.ok(), why_not(found));
      const int64_t expect = loraflip::kernels::first_non_finite(host.data() + 256, count, dtype);
      CHECK(found->element == expect);
      CHECK(found->tensor == (expect >= 0 ? 0 : -1));
      if (expect >= 0) {
        uint64_t bits = 0;
        std::memcpy(&bits, host.data() + 256 + static_cast<uint64_t>(expect) * elem, elem);
        CHECK(found->bits == bits);
      }
      CHECK(found->checksum == loraflip::kernels::checksum(host.data(), slot_bytes));
    }
  }
  const uint64_t lengths[] = {0, 1, 7, 8, 9, 4095, 4096, 4097, 65543};
  for (uint64_t shift = 0; shift < 8; ++shift) {
    for (uint64_t length : lengths) {
      if (shift + length > room) continue;
      CAPTURE(shift);
      CAPTURE(length);
      std::vector<unsigned char> host(length);
      fill_random(host, rng);
      if (length != 0) put(b, device, slot + shift, host.data(), length);
      auto found = b.check_slot(device, slot + shift, length, {}, dev::kCheckChecksum);
      REQUIRE_MESSAGE(found.ok(), why_not(found));
      CHECK(found->checksum == loraflip::kernels::checksum(host.data(), length));
    }
  }
  // A check reads the slot and leaves it as it was.
  std::vector<unsigned char> pattern(4096, 0x5A);
  put(b, device, slot, pattern.data(), pattern.size());
  const std::vector<dev::TensorExtent> whole = {{0, 4096, LF_DTYPE_F16}};
  auto found = b.check_slot(device, slot, 4096, whole, dev::kCheckFinite | dev::kCheckChecksum);
  REQUIRE_MESSAGE(found.ok(), why_not(found));
  CHECK(get(b, device, slot, 4096) == pattern);
}

// Tensors that do not fit the slot, partial elements, unknown dtypes or check bits, misaligned
// tensors: refused before anything runs, by every implementation alike.
inline void bad_tensor_lists_are_refused(dev::Backend &b, int device, std::byte *slot) {
  const unsigned both = dev::kCheckFinite | dev::kCheckChecksum;
  // `says`: a part of the message, which names what is wrong.
  auto refused = [&](std::byte *at, uint64_t bytes, std::vector<dev::TensorExtent> tensors,
                     unsigned checks, const std::string &says) {
    CAPTURE(says);
    auto r = b.check_slot(device, at, bytes, tensors, checks);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == LF_E_INVALID_ARGUMENT);
    CHECK(r.error().message.find(says) != std::string::npos);
  };
  refused(slot, 1024, {{0, 8, LF_DTYPE_F32}, {1000, 32, LF_DTYPE_F32}}, both,
          "tensor 1 (32 bytes at offset 1000) does not lie inside the slot of 1024 bytes");
  refused(slot, 1024, {{2048, 0, LF_DTYPE_F32}}, both, "does not lie inside");
  refused(slot, 1024, {{8, UINT64_MAX - 3, LF_DTYPE_F32}}, both, "does not lie inside");
  refused(slot, 1024, {{0, 6, LF_DTYPE_F32}}, both, "not a whole number of f32 elements");
  refused(slot, 1024, {{0, 8, 9999}}, both, "unknown dtype");
  refused(slot, 1024, {{2, 8, LF_DTYPE_F32}}, both, "not a multiple of its element size");
  refused(slot, 1024, {}, 4, "unknown slot checks");
  // The same tensor is fine in a slot that holds it.
  const std::vector<dev::TensorExtent> fits = {{1000, 32, LF_DTYPE_F32}};
  auto fine = b.check_slot(device, slot, 1032, fits, both);
  CHECK_MESSAGE(fine.ok(), why_not(fine));
}

}  // namespace slot_check_cases
