// The host stand-in's per-process device numbering (LORAFLIP_HOST_VISIBLE_DEVICES), as
// CUDA_VISIBLE_DEVICES gives on a GPU node: ordinals are this process's own, and only the
// names other processes see (shared memory, device_uuid) use the "physical" device number.
// The variable is read when a backend is made, so each case sets it in a forked child, never
// in this process (other cases make backends here).
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "device/device.hpp"
#include "tests/device/host_support.hpp"

using namespace host_test;

namespace {

// A backend made in this (child) process with LORAFLIP_HOST_DEVICES=`devices` and
// LORAFLIP_HOST_VISIBLE_DEVICES=`visible` (nullptr: unset).
std::unique_ptr<dev::Backend> backend_with(const std::string &instance, const char *devices,
                                           const char *visible) {
  ::setenv("LORAFLIP_HOST_DEVICES", devices, 1);
  if (visible == nullptr)
    ::unsetenv("LORAFLIP_HOST_VISIBLE_DEVICES");
  else
    ::setenv("LORAFLIP_HOST_VISIBLE_DEVICES", visible, 1);
  return dev::make_host_backend(instance);
}

dev::Backend::Uuid uuid_of(dev::Backend &b, int device) {
  auto id = b.device_uuid(device);
  REQUIRE_MESSAGE(id.ok(), why(id));
  return id.value();
}

}  // namespace

TEST_CASE("LORAFLIP_HOST_VISIBLE_DEVICES gives a process its own ordinals of the host devices") {
  ScopedInstance inst;
  // The uuids every process agrees on: those of the physical devices, in the default numbering.
  auto all = dev::make_host_backend(inst.name, 3);
  const dev::Backend::Uuid physical[3] = {uuid_of(*all, 0), uuid_of(*all, 1), uuid_of(*all, 2)};
  CHECK_FALSE(physical[0] == physical[1]);

  CHECK(in_child([&] {
    auto b = backend_with(inst.name, "3", "2,0");
    if (b->device_count().value_or(-1) != 2) return 1;
    // Ordinal 0 is physical device 2, ordinal 1 physical device 0; there is no ordinal 2.
    if (!(b->device_uuid(0).value() == physical[2])) return 2;
    if (!(b->device_uuid(1).value() == physical[0])) return 3;
    if (b->device_uuid(2).ok() || b->set_current_device(2).ok()) return 4;
    // A block of ordinal 0 is named after physical device 2, as any process would name it.
    auto block = b->allocate(0, 4096, "vis");
    if (!block) return 5;
    if (!shm_exists("loraflip." + inst.name + ".vis.dev2")) return 6;
    if (shm_exists("loraflip." + inst.name + ".vis.dev0")) return 7;
    // Everything else speaks ordinals: the copy below names ordinal 0 and its current device.
    const auto bytes = pattern(4096, 3);
    if (!copy_now(*b, block->ptr, bytes.data(), 4096, dev::CopyKind::kHostToDevice, 0)) return 8;
    if (b->current_device().value_or(-1) != 0) return 9;
    b->free_block(block.value());
    return 0;
  }) == 0);

  // Unset: every device in order, as before.
  CHECK(in_child([&] {
    auto b = backend_with(inst.name, "3", nullptr);
    return b->device_count().value_or(-1) == 3 && b->device_uuid(2).value() == physical[2] ? 0 : 1;
  }) == 0);
}

TEST_CASE("a malformed LORAFLIP_HOST_VISIBLE_DEVICES is a config error; an empty one hides every "
          "device") {
  ScopedInstance inst;
  for (const char *bad : {"2", "1,1", "0,", ",0", "a", "0 ,1", "-1", "0;1", "100"}) {
    CAPTURE(bad);
    CHECK(in_child([&] {
      auto b = backend_with(inst.name, "2", bad);
      auto n = b->device_count();
      if (n.ok() || n.error().code != LF_E_INVALID_ARGUMENT) return 1;
      if (n.error().message.find("LORAFLIP_HOST_VISIBLE_DEVICES") == std::string::npos) return 2;
      return b->allocate(0, 64, "x").ok() ? 3 : 0;
    }) == 0);
  }
  CHECK(in_child([&] {
    auto b = backend_with(inst.name, "2", "");
    auto n = b->device_count();
    return !n.ok() && n.error().code == LF_E_UNSUPPORTED ? 0 : 1;
  }) == 0);
  // The explicit factory checks its list the same way, and ignores the environment.
  CHECK_FALSE(dev::make_host_backend(inst.name, 2, {2})->device_count().ok());
  CHECK_FALSE(dev::make_host_backend(inst.name, 2, {0, 0})->device_count().ok());
  CHECK_FALSE(dev::make_host_backend(inst.name, 2, {})->device_count().ok());
  CHECK(dev::make_host_backend(inst.name, 2, {1})->device_count().value() == 1);
}

TEST_CASE("a block is opened at this process's ordinal of its device, and refused at another") {
  ScopedInstance inst;
  auto owner = dev::make_host_backend(inst.name, 2);
  auto on0 = owner->allocate(0, 4096, "b");
  auto on1 = owner->allocate(1, 4096, "b");
  REQUIRE_MESSAGE(on0.ok(), why(on0));
  REQUIRE_MESSAGE(on1.ok(), why(on1));
  std::memset(on0->ptr, 0x10, 4096);
  std::memset(on1->ptr, 0x11, 4096);

  // Swapped: physical device 1 is this process's device 0.
  CHECK(in_child([&] {
    auto b = dev::make_host_backend(inst.name, 2, {1, 0});
    auto p1 = b->open_block(0, on1->handle, 4096);
    auto p0 = b->open_block(1, on0->handle, 4096);
    if (!p1 || !p0) return 1;
    if (std::to_integer<int>(p1.value()[0]) != 0x11 || std::to_integer<int>(p0.value()[0]) != 0x10)
      return 2;
    // Through the daemon's (the owner's) ordinal: CUDA would map it into the wrong GPU.
    auto wrong = b->open_block(1, on1->handle, 4096);
    if (wrong.ok() || wrong.error().code != LF_E_INVALID_ARGUMENT) return 3;
    if (wrong.error().message.find("host device 1") == std::string::npos) return 4;
    // Copies check pointers against this process's ordinals.
    std::vector<unsigned char> seen(4096);
    if (!copy_now(*b, seen.data(), p1.value(), 4096, dev::CopyKind::kDeviceToHost, 0)) return 5;
    if (seen[0] != 0x11) return 6;
    if (b->copy(seen.data(), p1.value(), 4096, dev::CopyKind::kDeviceToHost, 1, nullptr).ok())
      return 7;
    return 0;
  }) == 0);

  // Only physical device 1 visible: the block of device 0 cannot be opened at all.
  CHECK(in_child([&] {
    auto b = dev::make_host_backend(inst.name, 2, {1});
    if (!b->open_block(0, on1->handle, 4096)) return 1;
    if (b->open_block(0, on0->handle, 4096).ok()) return 2;
    return b->open_block(1, on0->handle, 4096).ok() ? 3 : 0;
  }) == 0);
  owner->free_block(on0.value());
  owner->free_block(on1.value());
}
