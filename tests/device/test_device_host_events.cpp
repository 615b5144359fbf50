// The host implementation's streams and interprocess events, across processes (fork): what a
// consumer sees before and after a stream reaches a record, and when a writer dies mid-stream.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <signal.h>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include "device/device.hpp"
#include "tests/device/host_support.hpp"

using namespace host_test;

namespace {

constexpr int kPending = 10, kComplete = 11;  // child exit codes for an event's state

}  // namespace

TEST_CASE("a fresh event is complete, here and in another process") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name);
  auto event = backend->create_event(0);
  REQUIRE_MESSAGE(event.ok(), why(event));
  auto done = backend->query(event.value());
  REQUIRE(done.ok());
  CHECK(done.value());
  const int code = in_child([&] {
    auto child = dev::make_host_backend(inst.name);
    auto opened = child->open_event(0, event->handle);
    if (!opened.ok()) return 1;
    auto q = child->query(opened.value());
    if (!q.ok()) return 2;
    return q.value() ? kComplete : kPending;
  });
  CHECK(code == kComplete);
  backend->destroy_event(event.value());
}

TEST_CASE(
    "an event recorded on a paused stream is pending in another process until the "
    "stream runs, and then the copies before it are visible") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name);
  auto block = backend->allocate(0, kBytes, "data");
  auto event = backend->create_event(0);
  auto stream = backend->create_stream(0);
  REQUIRE(block.ok());
  REQUIRE(event.ok());
  REQUIRE(stream.ok());
  const auto data = pattern(kBytes, 5);

  dev::host_pause_stream(stream.value(), true);
  REQUIRE(
      backend
          ->copy(block->ptr, data.data(), kBytes, dev::CopyKind::kHostToDevice, 0, stream.value())
          .ok());
  REQUIRE(backend->record(event.value(), stream.value()).ok());
  auto q = backend->query(event.value());
  REQUIRE(q.ok());
  CHECK_FALSE(q.value());

  // The consumer: opens the event and the block, and reports the event's state after checking
  // that a complete event comes with the copied bytes.
  auto consumer = [&] {
    auto child = dev::make_host_backend(inst.name);
    auto opened = child->open_event(0, event->handle);
    auto ptr = child->open_block(0, block->handle, kBytes);
    if (!opened.ok() || !ptr.ok()) return 1;
    auto state = child->query(opened.value());
    if (!state.ok()) return 2;
    if (!state.value()) return kPending;
    return std::memcmp(ptr.value(), data.data(), kBytes) == 0 ? kComplete : 3;
  };
  CHECK(in_child(consumer) == kPending);

  dev::host_pause_stream(stream.value(), false);
  REQUIRE(backend->synchronize(0, stream.value()).ok());
  q = backend->query(event.value());
  REQUIRE(q.ok());
  CHECK(q.value());
  CHECK(in_child(consumer) == kComplete);

  backend->destroy_stream(0, stream.value());
  backend->destroy_event(event.value());
  backend->free_block(block.value());
}

TEST_CASE("an event recorded again is pending until its latest record is reached") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name);
  auto event = backend->create_event(0);
  auto first = backend->create_stream(0);
  auto second = backend->create_stream(0);
  REQUIRE(event.ok());
  REQUIRE(first.ok());
  REQUIRE(second.ok());
  dev::host_pause_stream(first.value(), true);
  dev::host_pause_stream(second.value(), true);
  REQUIRE(backend->record(event.value(), first.value()).ok());
  REQUIRE(backend->record(event.value(), second.value()).ok());

  dev::host_pause_stream(first.value(), false);
  REQUIRE(backend->synchronize(0, first.value()).ok());
  CHECK_FALSE(backend->query(event.value()).value());  // the first record is stale
  dev::host_pause_stream(second.value(), false);
  REQUIRE(backend->synchronize(0, second.value()).ok());
  CHECK(backend->query(event.value()).value());

  // On the null stream a record completes when the device's default stream gets there, which
  // runs asynchronously, as CUDA's does: held back, the record stays pending.
  dev::host_pause_default_stream(0, true);
  REQUIRE(backend->record(event.value(), nullptr).ok());
  CHECK_FALSE(backend->query(event.value()).value());
  dev::host_pause_default_stream(0, false);
  REQUIRE(backend->synchronize(0, nullptr).ok());
  CHECK(backend->query(event.value()).value());
  backend->destroy_stream(0, first.value());
  backend->destroy_stream(0, second.value());
  backend->destroy_event(event.value());
}

TEST_CASE(
    "a bounded wait on a stuck writer's event gives up; once the writer is killed its event "
    "reads done, the worst answer CUDA leaves open") {
  ScopedInstance inst;
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t writer = ::fork();
  REQUIRE(writer >= 0);
  if (writer == 0) {
    ::close(fds[0]);
    auto backend = dev::make_host_backend(inst.name);
    auto event = backend->create_event(0);
    auto stream = backend->create_stream(0);
    if (!event.ok() || !stream.ok()) ::_exit(1);
    dev::host_pause_stream(stream.value(), true);  // stuck behind long kernels
    if (!backend->record(event.value(), stream.value())) ::_exit(2);
    if (::write(fds[1], &event->handle, sizeof event->handle) != sizeof event->handle) ::_exit(3);
    for (;;) ::pause();  // until SIGKILL
  }
  ::close(fds[1]);
  dev::IpcHandle handle{};
  const ssize_t got = ::read(fds[0], &handle, sizeof handle);
  ::close(fds[0]);
  REQUIRE(got == static_cast<ssize_t>(sizeof handle));

  auto backend = dev::make_host_backend(inst.name);
  auto event = backend->open_event(0, handle);
  REQUIRE_MESSAGE(event.ok(), why(event));
  CHECK_FALSE(backend->query(event.value()).value());
  const auto start = std::chrono::steady_clock::now();
  auto waited = dev::wait_event(*backend, event.value(), 200);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(waited.code() == LF_E_TIMEOUT);
  CHECK(elapsed >= std::chrono::milliseconds(200));
  CHECK(elapsed < std::chrono::seconds(5));

  REQUIRE(::kill(writer, SIGKILL) == 0);
  int status = 0;
  REQUIRE(::waitpid(writer, &status, 0) == writer);
  CHECK(WIFSIGNALED(status));

  // What CUDA answers for an event of a dead process is undefined; the stand-in says "done",
  // its copies never ran, so that a consumer that trusts it without checking the writer's
  // liveness flips a half-written slot in its tests (the daemon checks: commit.cpp).
  auto q = backend->query(event.value());
  REQUIRE(q.ok());
  CHECK(q.value());
  backend->destroy_event(event.value());
}

TEST_CASE("wait_event returns as soon as the event completes") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name);
  auto event = backend->create_event(0);
  auto stream = backend->create_stream(0);
  REQUIRE(event.ok());
  REQUIRE(stream.ok());
  dev::host_pause_stream(stream.value(), true);
  REQUIRE(backend->record(event.value(), stream.value()).ok());
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    dev::host_pause_stream(stream.value(), false);
  });
  CHECK(dev::wait_event(*backend, event.value(), 10000).ok());
  release.join();
  backend->destroy_stream(0, stream.value());
  backend->destroy_event(event.value());
}

TEST_CASE("the event segments of killed processes are removed, as a dead process's CUDA events go") {
  ScopedInstance inst;
  // A writer killed with its event made: its segment outlives it.
  pid_t dead = -1;
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  dead = ::fork();
  if (dead == 0) {
    auto backend = dev::make_host_backend(inst.name);
    const char b = backend->create_event(0).ok() ? 1 : 0;
    (void)!::write(ready[1], &b, 1);
    ::pause();
    ::_exit(0);
  }
  char b = 0;
  REQUIRE(::read(ready[0], &b, 1) == 1);
  REQUIRE(b == 1);
  ::close(ready[0]);
  ::close(ready[1]);
  const std::string dead_event = "loraflip." + inst.name + ".ev" + std::to_string(dead) + ".0";
  CHECK(shm_exists(dead_event));
  ::kill(dead, SIGKILL);
  ::waitpid(dead, nullptr, 0);
  CHECK(shm_exists(dead_event));

  // A live process's event stays; the dead one's goes when the next backend makes an event.
  auto live = dev::make_host_backend(inst.name);
  auto mine = live->create_event(1);
  REQUIRE(mine.ok());
  CHECK_FALSE(shm_exists(dead_event));
  CHECK(shm_objects(inst.name).size() == 1);  // the live one's
}

TEST_CASE("a stream waits for the record an event had when the wait was queued, across devices") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name, 2);
  auto fence = backend->create_local_event(0);
  auto done = backend->create_event(1);
  auto first = backend->create_stream(0);
  auto second = backend->create_stream(0);
  auto waiter = backend->create_stream(1);
  REQUIRE(fence.ok());
  REQUIRE(done.ok());
  REQUIRE(first.ok());
  REQUIRE(second.ok());
  REQUIRE(waiter.ok());
  // A local event has no handle to export.
  CHECK(std::all_of(std::begin(fence->handle.bytes), std::end(fence->handle.bytes),
                    [](unsigned char b) { return b == 0; }));
  // The same event recorded on two streams, each record waited for in turn: the waiter must
  // hold until both are done, although the event's latest record completes first.
  dev::host_pause_stream(first.value(), true);
  dev::host_pause_stream(second.value(), true);
  REQUIRE(backend->record(fence.value(), first.value()).ok());
  REQUIRE(backend->wait_event_on(1, waiter.value(), fence.value()).ok());
  REQUIRE(backend->record(fence.value(), second.value()).ok());
  REQUIRE(backend->wait_event_on(1, waiter.value(), fence.value()).ok());
  REQUIRE(backend->record(done.value(), waiter.value()).ok());
  dev::host_pause_stream(second.value(), false);
  REQUIRE(backend->synchronize(0, second.value()).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK_FALSE(backend->query(done.value()).value());
  dev::host_pause_stream(first.value(), false);
  REQUIRE(backend->synchronize(1, waiter.value()).ok());
  CHECK(backend->query(done.value()).value());
  // A wait on an event never recorded holds nothing up.
  auto never = backend->create_local_event(1);
  REQUIRE(never.ok());
  REQUIRE(backend->wait_event_on(1, waiter.value(), never.value()).ok());
  REQUIRE(backend->synchronize(1, waiter.value()).ok());
  for (auto *s : {&first, &second}) backend->destroy_stream(0, s->value());
  backend->destroy_stream(1, waiter.value());
  for (auto *e : {&fence, &done, &never}) backend->destroy_event(e->value());
}
