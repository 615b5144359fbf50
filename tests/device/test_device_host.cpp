// The host implementation of the device interface, across processes (fork): blocks exported
// and opened once per process, handles, the names and the shared memory it leaves, and how many
// devices it has. Copies, events and check_slot have files of their own (test_device_host_*).
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "device/device.hpp"
#include "tests/device/host_support.hpp"

using namespace host_test;

TEST_CASE("a block allocated in one process is opened in another, which reads and writes it") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name);
  auto block = backend->allocate(0, kBytes, "shared");
  REQUIRE_MESSAGE(block.ok(), why(block));
  const auto before = pattern(kBytes, 1), after = pattern(kBytes, 2);
  REQUIRE(copy_now(*backend, block->ptr, before.data(), kBytes, dev::CopyKind::kHostToDevice, 0)
              .ok());

  const int code = in_child([&] {
    auto child = dev::make_host_backend(inst.name);
    auto ptr = child->open_block(0, block->handle, kBytes);
    if (!ptr.ok()) return 1;
    std::vector<unsigned char> seen(kBytes);
    if (!copy_now(*child, seen.data(), ptr.value(), kBytes, dev::CopyKind::kDeviceToHost, 0))
      return 2;
    if (seen != before) return 3;
    if (!copy_now(*child, ptr.value(), after.data(), kBytes, dev::CopyKind::kHostToDevice, 0))
      return 4;
    return 0;
  });
  CHECK(code == 0);

  std::vector<unsigned char> seen(kBytes);
  REQUIRE(copy_now(*backend, seen.data(), block->ptr, kBytes, dev::CopyKind::kDeviceToHost, 0)
              .ok());
  CHECK(seen == after);
  backend->free_block(block.value());
}

TEST_CASE("opening a block twice in one process opens it once and gives the same pointer") {
  ScopedInstance inst;
  auto owner = dev::make_host_backend(inst.name);
  auto block = owner->allocate(1, 4096, "twice");
  REQUIRE_MESSAGE(block.ok(), why(block));

  std::memset(block->ptr, 0x5a, 4096);

  // Another process: CUDA refuses to import a handle in the process that exported it.
  CHECK(in_child([&] {
    auto reader = dev::make_host_backend(inst.name);
    if (reader->blocks_opened() != 0) return 1;
    auto first = reader->open_block(1, block->handle, 4096);
    auto second = reader->open_block(1, block->handle, 4096);
    if (!first || !second) return 2;
    if (first.value() != second.value() || reader->blocks_opened() != 1) return 3;
    // A smaller view of the same block is the same block.
    auto part = reader->open_block(1, block->handle, 100);
    if (!part || part.value() != first.value() || reader->blocks_opened() != 1) return 4;
    if (reader->blocks_open() != 1) return 5;
    // The mapping is really the owner's memory.
    if (std::to_integer<int>(first.value()[4095]) != 0x5a) return 6;
    // Closed, it is forgotten: a later open maps it again.
    if (!reader->close_block(1, first.value()) || reader->blocks_open() != 0) return 7;
    if (reader->close_block(1, first.value()).code() != LF_E_INVALID_ARGUMENT) return 8;
    auto again = reader->open_block(1, block->handle, 4096);
    if (!again || reader->blocks_opened() != 2 || reader->blocks_open() != 1) return 9;
    return 0;
  }) == 0);
  owner->free_block(block.value());
}

TEST_CASE("bad and stale handles are refused with a clear error") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name);
  auto block = backend->allocate(0, 4096, "victim");
  auto event = backend->create_event(0);
  REQUIRE(block.ok());
  REQUIRE(event.ok());

  dev::IpcHandle zero{};
  auto r = backend->open_block(0, zero, 16);
  CHECK(r.error().code == LF_E_INVALID_ARGUMENT);
  CHECK(r.error().message.find("magic") != std::string::npos);
  CHECK(backend->open_event(0, zero).error().code == LF_E_INVALID_ARGUMENT);
  // A handle of the other kind.
  CHECK(backend->open_block(0, event->handle, 16).error().code == LF_E_INVALID_ARGUMENT);
  CHECK(backend->open_event(0, block->handle).error().code == LF_E_INVALID_ARGUMENT);
  // More bytes than the block has; a device that does not exist.
  CHECK(backend->open_block(0, block->handle, 4097).error().code == LF_E_INVALID_ARGUMENT);
  CHECK(backend->open_block(7, block->handle, 16).error().code == LF_E_INVALID_ARGUMENT);

  // The exporting process cannot import its own handles (CUDA refuses).
  auto own = backend->open_block(0, block->handle, 16);
  CHECK(own.error().code == LF_E_INVALID_ARGUMENT);
  CHECK(own.error().message.find("exported") != std::string::npos);
  CHECK(backend->open_event(0, event->handle).error().code == LF_E_INVALID_ARGUMENT);

  // Freed: the name is gone. Freed and made again under the same name: the old handle is stale.
  // (Opened in another process, where opening is allowed.)
  const dev::IpcHandle old_handle = block->handle;
  backend->free_block(block.value());
  auto open_in_child = [&](const dev::IpcHandle &h, const char *says) {
    return in_child([&] {
      auto other = dev::make_host_backend(inst.name);
      auto opened = other->open_block(0, h, 16);
      if (opened) return 1;
      if (opened.error().code != LF_E_NOT_FOUND) return 2;
      return opened.error().message.find(says) != std::string::npos ? 0 : 3;
    });
  };
  CHECK(open_in_child(old_handle, "freed") == 0);
  auto again = backend->allocate(0, 4096, "victim");
  REQUIRE(again.ok());
  CHECK(open_in_child(old_handle, "stale") == 0);
  // The same tag twice on one device.
  CHECK(backend->allocate(0, 4096, "victim").error().code == LF_E_EXISTS);
  CHECK(backend->allocate(0, 4096, "bad/tag").error().code == LF_E_INVALID_ARGUMENT);
  CHECK(backend->allocate(0, 0, "empty").error().code == LF_E_INVALID_ARGUMENT);

  const dev::IpcHandle event_handle = event->handle;
  backend->destroy_event(event.value());
  CHECK(in_child([&] {
    auto other = dev::make_host_backend(inst.name);
    return other->open_event(0, event_handle).error().code == LF_E_NOT_FOUND ? 0 : 1;
  }) == 0);
  CHECK(backend->query(event.value()).error().code == LF_E_INVALID_ARGUMENT);
  backend->free_block(again.value());
}

TEST_CASE("free_block and destroy_event remove their shared memory") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name);
  auto block = backend->allocate(1, 4096, "gone");
  auto event = backend->create_event(1);
  REQUIRE(block.ok());
  REQUIRE(event.ok());
  const std::string block_name = "loraflip." + inst.name + ".gone.dev1";
  CHECK(shm_exists(block_name));
  CHECK(shm_objects(inst.name).size() == 2);
  struct stat st;
  REQUIRE(::stat(("/dev/shm/" + block_name).c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0660);

  // An opener's destroy_event does not remove the creator's event.
  CHECK(in_child([&] {
    auto other = dev::make_host_backend(inst.name);
    auto opened = other->open_event(1, event->handle);
    if (!opened) return 1;
    other->destroy_event(opened.value());
    return 0;
  }) == 0);
  CHECK(shm_objects(inst.name).size() == 2);

  backend->free_block(block.value());
  CHECK_FALSE(shm_exists(block_name));
  backend->destroy_event(event.value());
  CHECK(shm_objects(inst.name).empty());

  // What a backend still holds when it goes is removed with it.
  auto left = backend->allocate(0, 4096, "left");
  auto left_event = backend->create_event(0);
  REQUIRE(left.ok());
  REQUIRE(left_event.ok());
  CHECK(shm_objects(inst.name).size() == 2);
  backend.reset();
  CHECK(shm_objects(inst.name).empty());
}

TEST_CASE("a long instance name still gives names that fit a handle") {
  ScopedInstance inst;
  const std::string longer = inst.name + std::string(120, 'x');
  auto backend = dev::make_host_backend(longer);
  auto block = backend->allocate(0, 4096, "t");
  REQUIRE_MESSAGE(block.ok(), why(block));
  std::memset(block->ptr, 7, 4096);
  const int code = in_child([&] {
    auto child = dev::make_host_backend(longer);
    auto ptr = child->open_block(0, block->handle, 4096);
    return ptr.ok() && std::to_integer<int>(ptr.value()[4095]) == 7 ? 0 : 1;
  });
  CHECK(code == 0);
  backend->free_block(block.value());
}

TEST_CASE("LORAFLIP_HOST_DEVICES sets how many host devices there are") {
  ScopedInstance inst;
  ::unsetenv("LORAFLIP_HOST_DEVICES");
  CHECK(dev::make_host_backend(inst.name)->device_count().value() == 2);
  ::setenv("LORAFLIP_HOST_DEVICES", "4", 1);
  auto four = dev::make_host_backend(inst.name);
  CHECK(four->device_count().value() == 4);
  auto b = four->allocate(3, 64, "dev3");
  CHECK(b.ok());
  if (b.ok()) four->free_block(b.value());
  for (const char *bad : {"0", "17", "two", "3x", "-1"}) {
    CAPTURE(bad);
    ::setenv("LORAFLIP_HOST_DEVICES", bad, 1);
    auto backend = dev::make_host_backend(inst.name);
    auto n = backend->device_count();
    CHECK(n.error().code == LF_E_INVALID_ARGUMENT);
    CHECK(n.error().message.find("LORAFLIP_HOST_DEVICES") != std::string::npos);
    CHECK(backend->allocate(0, 64, "x").error().code == LF_E_INVALID_ARGUMENT);
  }
  ::unsetenv("LORAFLIP_HOST_DEVICES");
  CHECK(dev::make_host_backend(inst.name, 3)->device_count().value() == 3);
  CHECK_FALSE(dev::make_host_backend(inst.name, 0)->device_count().ok());
  CHECK_FALSE(dev::make_host_backend("bad/name", 1)->device_count().ok());
}

TEST_CASE("make_cuda_backend says whether this build has CUDA") {
  auto cuda = dev::make_cuda_backend();
#ifdef LF_DEVICE_TEST_WITH_CUDA
  REQUIRE(cuda.ok());
  CHECK(std::string(cuda.value()->name()) == "cuda");
  // Before install_cuda_check_kernels (as in libloraflip, which never has them), check_slot
  // says so, before any CUDA call: with or without a GPU.
  auto no_kernels = cuda.value()->check_slot(0, nullptr, 0, {}, dev::kCheckChecksum);
  REQUIRE_FALSE(no_kernels.ok());
  CHECK(no_kernels.error().code == LF_E_UNSUPPORTED);
  CHECK(no_kernels.error().message.find("install_cuda_check_kernels") != std::string::npos);
#else
  REQUIRE_FALSE(cuda.ok());
  CHECK(cuda.error().code == LF_E_UNSUPPORTED);
#endif
}
