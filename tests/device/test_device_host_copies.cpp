// The host implementation's copies: every kind, on the null stream and on a stream, the checks
// of their pointers, and copy_peer between host devices.
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include "device/device.hpp"
#include "tests/device/host_support.hpp"

using namespace host_test;

TEST_CASE("copies of every kind move the bytes, on the null stream and on a stream") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name);
  auto a = backend->allocate(0, kBytes, "a");
  auto b = backend->allocate(0, kBytes, "b");
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  const auto src = pattern(kBytes, 3);

  for (bool on_stream : {false, true}) {
    CAPTURE(on_stream);
    dev::Stream stream = nullptr;
    if (on_stream) {
      auto s = backend->create_stream(0);
      REQUIRE(s.ok());
      stream = s.value();
    }
    std::vector<unsigned char> out(kBytes, 0);
    REQUIRE(
        backend->copy(a->ptr, src.data(), kBytes, dev::CopyKind::kHostToDevice, 0, stream).ok());
    REQUIRE(backend->copy(b->ptr, a->ptr, kBytes, dev::CopyKind::kDeviceToDevice, 0, stream).ok());
    // Within one block, overlapping: the second half of b moves down by 1000 bytes.
    REQUIRE(
        backend->copy(b->ptr + 1000, b->ptr + 2000, 5000, dev::CopyKind::kDeviceToDevice, 0, stream)
            .ok());
    REQUIRE(
        backend->copy(out.data(), b->ptr, kBytes, dev::CopyKind::kDeviceToHost, 0, stream).ok());
    REQUIRE(backend->synchronize(0, stream).ok());
    auto expect = src;
    std::memmove(expect.data() + 1000, src.data() + 2000, 5000);
    CHECK(out == expect);
    if (stream != nullptr) backend->destroy_stream(0, stream);
  }
  backend->free_block(a.value());
  backend->free_block(b.value());
}

TEST_CASE("a copy whose pointers do not match its kind and device is refused") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name, 2);
  auto a = backend->allocate(0, 4096, "a");
  REQUIRE(a.ok());
  std::vector<unsigned char> host(8192);
  using K = dev::CopyKind;
  // Device memory where the kind says host, and host memory where it says device.
  CHECK(backend->copy(host.data(), a->ptr, 10, K::kHostToDevice, 0, nullptr).code() ==
        LF_E_INVALID_ARGUMENT);
  CHECK(backend->copy(a->ptr, host.data(), 10, K::kDeviceToHost, 0, nullptr).code() ==
        LF_E_INVALID_ARGUMENT);
  // Past the end of the block.
  auto past = backend->copy(a->ptr + 100, host.data(), 4000, K::kHostToDevice, 0, nullptr);
  CHECK(past.code() == LF_E_INVALID_ARGUMENT);
  CHECK(past.error().message.find("past the end") != std::string::npos);
  // The block is on device 0, not 1; device 2 does not exist.
  CHECK(backend->copy(a->ptr, host.data(), 10, K::kHostToDevice, 1, nullptr).code() ==
        LF_E_INVALID_ARGUMENT);
  CHECK(backend->copy(a->ptr, host.data(), 10, K::kHostToDevice, 2, nullptr).code() ==
        LF_E_INVALID_ARGUMENT);
  // A stream of device 1 for a copy on device 0.
  auto s1 = backend->create_stream(1);
  REQUIRE(s1.ok());
  CHECK(backend->copy(a->ptr, host.data(), 10, K::kHostToDevice, 0, s1.value()).code() ==
        LF_E_INVALID_ARGUMENT);
  backend->destroy_stream(1, s1.value());
  // The exact end is fine.
  CHECK(copy_now(*backend, a->ptr + 96, host.data(), 4000, K::kHostToDevice, 0).ok());
  backend->free_block(a.value());
}

TEST_CASE("copy_peer replicates a block from one host device to another") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name, 2);
  auto d0 = backend->allocate(0, kBytes, "rank0");
  auto d1 = backend->allocate(1, kBytes, "rank1");
  REQUIRE(d0.ok());
  REQUIRE(d1.ok());
  const auto src = pattern(kBytes, 4);
  REQUIRE(copy_now(*backend, d0->ptr, src.data(), kBytes, dev::CopyKind::kHostToDevice, 0).ok());
  auto stream = backend->create_stream(0);
  REQUIRE(stream.ok());
  REQUIRE(backend->copy_peer(d1->ptr, 1, d0->ptr, 0, kBytes, stream.value()).ok());
  REQUIRE(backend->synchronize(0, stream.value()).ok());
  CHECK(std::memcmp(d1->ptr, src.data(), kBytes) == 0);
  // The devices named must be the blocks' devices.
  CHECK(backend->copy_peer(d0->ptr, 1, d1->ptr, 0, 16, nullptr).code() == LF_E_INVALID_ARGUMENT);
  backend->destroy_stream(0, stream.value());
  backend->free_block(d0.value());
  backend->free_block(d1.value());
}
