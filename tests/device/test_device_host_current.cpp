// The host implementation's current device: one per thread, as CUDA's, shared by every backend
// of the process; every call switches through a CurrentDevice and leaves the caller's device as
// it was; and what CUDA refuses across devices (an event recorded on another device's stream),
// the stand-in refuses too.
#include <doctest/doctest.h>

#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "device/device.hpp"
#include "tests/device/host_support.hpp"

using namespace host_test;

namespace {

int current(dev::Backend &backend) {
  auto d = backend.current_device();
  REQUIRE_MESSAGE(d.ok(), why(d));
  return d.value();
}

}  // namespace

TEST_CASE("a thread starts on device 0 and keeps the device it sets; other threads keep theirs") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name, 2);
  int fresh = -1, after_other = -1;
  std::thread([&] {
    fresh = backend->current_device().value_or(-1);
    (void)backend->set_current_device(1);
  }).join();
  CHECK(fresh == 0);
  dev::CurrentDevice on(*backend);  // this thread goes back to its device at the end
  REQUIRE(on.use(1).ok());
  std::thread([&] { after_other = backend->current_device().value_or(-1); }).join();
  CHECK(after_other == 0);
  CHECK(current(*backend) == 1);
}

TEST_CASE("two backends of one process share each thread's current device, as CUDA's driver") {
  ScopedInstance a_inst, b_inst;
  auto a = dev::make_host_backend(a_inst.name, 2);
  auto b = dev::make_host_backend(b_inst.name, 2);
  dev::CurrentDevice on(*a);
  REQUIRE(on.use(1).ok());
  CHECK(current(*b) == 1);
}

TEST_CASE("a device the backend does not have cannot be made current, and the current one stays") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name, 2);
  dev::CurrentDevice on(*backend);
  REQUIRE(on.use(1).ok());
  CHECK(backend->set_current_device(2).code() == LF_E_INVALID_ARGUMENT);
  CHECK(backend->set_current_device(-1).code() == LF_E_INVALID_ARGUMENT);
  CHECK(current(*backend) == 1);
}

TEST_CASE("CurrentDevice puts the caller's device back when it ends, after a failed switch too") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name, 2);
  dev::CurrentDevice outer(*backend);
  REQUIRE(outer.use(1).ok());
  {
    dev::CurrentDevice inner(*backend);
    REQUIRE(inner.use(0).ok());
    CHECK(current(*backend) == 0);
    REQUIRE(inner.use(1).ok());  // several devices in one scope, as a teardown loop does
    REQUIRE(inner.use(0).ok());
    CHECK(inner.use(5).code() == LF_E_INVALID_ARGUMENT);
  }
  CHECK(current(*backend) == 1);
  {
    dev::CurrentDevice unused(*backend);  // never used: changes nothing
  }
  CHECK(current(*backend) == 1);
}

TEST_CASE("every call of the host backend leaves the calling thread on the device it was on") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name, 2);
  // Each call on each device, from a thread on device 1 and from one on device 0: a call that
  // did not switch fails on the other device (the stand-in refuses work off the current
  // device), and one that did not switch back leaves the thread elsewhere.
  for (int mine : {1, 0}) {
    CAPTURE(mine);
    dev::CurrentDevice on(*backend);
    REQUIRE(on.use(mine).ok());
    auto same = [&](const std::string &call, bool ok) {
      CHECK_MESSAGE(current(*backend) == mine, call);
      REQUIRE_MESSAGE(ok, call);
    };
    for (int d : {0, 1}) {
      CAPTURE(d);
      const std::string tag = "cur" + std::to_string(mine) + "d" + std::to_string(d);
      auto block = backend->allocate(d, kBytes, tag);
      same("allocate", block.ok());
      const auto data = pattern(4096, static_cast<unsigned>(d));
      same("copy on the null stream",
           backend->copy(block->ptr, data.data(), 4096, dev::CopyKind::kHostToDevice, d, nullptr)
               .ok());
      auto stream = backend->create_stream(d);
      same("create_stream", stream.ok());
      same("copy on a stream", backend
                                   ->copy(block->ptr + 4096, data.data(), 4096,
                                          dev::CopyKind::kHostToDevice, d, stream.value())
                                   .ok());
      same("synchronize a stream", backend->synchronize(d, stream.value()).ok());
      same("synchronize the null stream", backend->synchronize(d, nullptr).ok());
      auto event = backend->create_event(d);
      same("create_event", event.ok());
      same("record on a stream", backend->record(event.value(), stream.value()).ok());
      same("record on the null stream", backend->record(event.value(), nullptr).ok());
      auto done = backend->query(event.value());
      same("query", done.ok());
      // Another process opens the block and the event (CUDA refuses in the exporting one),
      // and closes them again, from a thread on device `mine` too.
      const int opened = in_child([&, d, block = block.value(), handle = event->handle] {
        auto other = dev::make_host_backend(inst.name, 2);
        dev::CurrentDevice at(*other);
        if (!at.use(mine)) return 10;
        auto mapped = other->open_block(d, block.handle, kBytes);
        if (!mapped) return 1;
        if (current(*other) != mine) return 2;
        auto imported = other->open_event(d, handle);
        if (!imported) return 3;
        if (current(*other) != mine) return 4;
        if (!other->close_block(d, mapped.value())) return 5;
        if (current(*other) != mine) return 6;
        other->destroy_event(imported.value());
        if (current(*other) != mine) return 7;
        return 0;
      });
      CHECK(opened == 0);
      const dev::TensorExtent whole{0, 4096, LF_DTYPE_F32};
      auto checked = backend->check_slot(d, block->ptr, 4096, {&whole, 1}, dev::kCheckChecksum);
      same("check_slot", checked.ok());
      backend->destroy_event(event.value());
      same("destroy_event", true);
      backend->destroy_stream(d, stream.value());
      same("destroy_stream", true);
      backend->free_block(block.value());
      same("free_block", block->ptr == nullptr);
    }
    // A peer copy is issued on its stream's device, or the source's for the null stream.
    auto d0 = backend->allocate(0, 4096, "peer0-" + std::to_string(mine));
    auto d1 = backend->allocate(1, 4096, "peer1-" + std::to_string(mine));
    REQUIRE(d0.ok());
    REQUIRE(d1.ok());
    same("copy_peer on the null stream",
         backend->copy_peer(d1->ptr, 1, d0->ptr, 0, 4096, nullptr).ok());
    // The copy back reads what that one writes: it runs on device 0's default stream, later.
    same("synchronize the source's null stream", backend->synchronize(0, nullptr).ok());
    auto s1 = backend->create_stream(1);
    REQUIRE(s1.ok());
    same("copy_peer on a stream",
         backend->copy_peer(d0->ptr, 0, d1->ptr, 1, 4096, s1.value()).ok());
    REQUIRE(backend->synchronize(1, s1.value()).ok());
    backend->destroy_stream(1, s1.value());
    backend->free_block(d0.value());
    backend->free_block(d1.value());
  }
}

TEST_CASE("an event recorded on a stream of another device is refused, as cudaEventRecord does") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name, 2);
  auto event = backend->create_event(0);
  auto s1 = backend->create_stream(1);
  REQUIRE(event.ok());
  REQUIRE(s1.ok());
  auto refused = backend->record(event.value(), s1.value());
  CHECK(refused.code() == LF_E_INVALID_ARGUMENT);
  CHECK(refused.error().message.find("stream of device 1") != std::string::npos);
  // An event of device 1 on that stream is fine.
  auto event1 = backend->create_event(1);
  REQUIRE(event1.ok());
  CHECK(backend->record(event1.value(), s1.value()).ok());
  REQUIRE(backend->synchronize(1, s1.value()).ok());
  backend->destroy_stream(1, s1.value());
  backend->destroy_event(event.value());
  backend->destroy_event(event1.value());
}
