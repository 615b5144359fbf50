// The host implementation's check_slot: the cases every implementation passes
// (slot_check_cases.hpp), the checks of where the slot lies, and a block opened in another
// process.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "device/device.hpp"
#include "kernels/validate.hpp"
#include "tests/device/host_support.hpp"
#include "tests/device/slot_check_cases.hpp"

using namespace host_test;

TEST_CASE("check_slot names the first tensor holding a NaN or an infinity, and its element") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name, 2);
  // On device 1 and inside the block, as the slots of a device arena lie.
  auto block = backend->allocate(1, kBytes, "slots");
  REQUIRE_MESSAGE(block.ok(), why(block));
  slot_check_cases::nan_in_second_tensor_is_named(*backend, 1, block->ptr + 8192);
  backend->free_block(block.value());
}

TEST_CASE("check_slot gives the CPU functions' checksum and first non-finite element for every "
          "dtype and size") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name, 1);
  constexpr uint64_t kRoom = uint64_t{17} << 20;  // the largest case: 2 Mi + 5 f64 elements
  auto block = backend->allocate(0, kRoom, "slots");
  REQUIRE_MESSAGE(block.ok(), why(block));
  slot_check_cases::results_equal_cpu(*backend, 0, block->ptr, kRoom);
  backend->free_block(block.value());
}

TEST_CASE("check_slot refuses bad tensor lists and a slot outside a block of the device named") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name, 2);
  auto block = backend->allocate(0, 4096, "slots");
  REQUIRE_MESSAGE(block.ok(), why(block));
  slot_check_cases::bad_tensor_lists_are_refused(*backend, 0, block->ptr);

  // Checked like a copy's device side: in a block, of that device, the whole slot.
  const std::vector<dev::TensorExtent> none;
  const unsigned both = dev::kCheckFinite | dev::kCheckChecksum;
  std::vector<std::byte> host(4096);
  auto outside = backend->check_slot(0, host.data(), 4096, none, both);
  CHECK(outside.error().code == LF_E_INVALID_ARGUMENT);
  CHECK(backend->check_slot(1, block->ptr, 4096, none, both).error().code == LF_E_INVALID_ARGUMENT);
  CHECK(backend->check_slot(2, block->ptr, 4096, none, both).error().code == LF_E_INVALID_ARGUMENT);
  auto past = backend->check_slot(0, block->ptr + 100, 4000, none, both);
  CHECK(past.error().code == LF_E_INVALID_ARGUMENT);
  CHECK(past.error().message.find("past the end") != std::string::npos);
  CHECK(backend->check_slot(0, block->ptr + 96, 4000, none, both).ok());
  backend->free_block(block.value());
}

TEST_CASE("check_slot reads a block opened in another process") {
  ScopedInstance inst;
  auto owner = dev::make_host_backend(inst.name, 1);
  auto block = owner->allocate(0, kBytes, "slots");
  REQUIRE_MESSAGE(block.ok(), why(block));
  std::vector<float> values(1000, 1.5f);
  values[777] = -INFINITY;
  REQUIRE(copy_now(*owner, block->ptr, values.data(), 4000, dev::CopyKind::kHostToDevice, 0).ok());
  const uint64_t sum = loraflip::kernels::checksum(values.data(), 4000);
  const dev::IpcHandle handle = block->handle;
  CHECK(in_child([&] {
          auto child = dev::make_host_backend(inst.name, 1);
          auto ptr = child->open_block(0, handle, kBytes);
          if (!ptr.ok()) return 1;
          const std::vector<dev::TensorExtent> tensors = {{0, 4000, LF_DTYPE_F32}};
          auto found = child->check_slot(0, ptr.value(), 4000, tensors,
                                         dev::kCheckFinite | dev::kCheckChecksum);
          if (!found.ok()) return 2;
          if (found->tensor != 0 || found->element != 777 || found->bits != 0xFF800000u) return 3;
          return found->checksum == sum ? 0 : 4;
        }) == 0);
  owner->free_block(block.value());
}

TEST_CASE("check_slot_cpu scans a large slot on several threads and still names the first "
          "non-finite tensor") {
  // 24 MiB in 96 tensors of 256 KiB (bf16): above the size where the scan is split into runs of
  // tensors, one per thread. Whichever runs hold planted values, the answer is the lowest
  // tensor's first one, as one scan in order gives.
  constexpr size_t kTensors = 96, kElems = 128 * 1024;
  std::vector<uint16_t> slot(kTensors * kElems, 0x3F80);  // bf16 1.0
  std::vector<dev::TensorExtent> tensors;
  for (size_t t = 0; t < kTensors; ++t)
    tensors.push_back({t * kElems * 2, kElems * 2, LF_DTYPE_BF16});
  const auto *bytes = reinterpret_cast<const std::byte *>(slot.data());
  const uint64_t size = slot.size() * 2;
  auto check = [&] { return dev::check_slot_cpu(bytes, size, tensors, dev::kCheckFinite); };
  CHECK(check().tensor == -1);
  const struct { size_t tensor, element; uint16_t bits; } plants[] = {
      {95, kElems - 1, 0x7F80}, {70, 3, 0xFFC1}, {50, 0, 0xFF80}, {49, kElems - 1, 0x7FC0},
      {2, 1000, 0x7F81}};
  for (const auto &p : plants) {  // each plant is earlier than the ones before it
    CAPTURE(p.tensor);
    slot[p.tensor * kElems + p.element] = p.bits;
    const dev::SlotCheck found = check();
    CHECK(found.tensor == static_cast<int64_t>(p.tensor));
    CHECK(found.element == static_cast<int64_t>(p.element));
    CHECK(found.bits == p.bits);
  }
}
