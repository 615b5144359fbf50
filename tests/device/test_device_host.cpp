// The host implementation of the device interface, across processes (fork): blocks, copies,
// streams, interprocess events, and what a consumer sees when a writer dies mid-stream.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <functional>
#include <signal.h>
#include <string>
#include <thread>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "device/device.hpp"
#include "tests/device/slot_check_cases.hpp"

namespace dev = loraflip::device;

namespace {

// Every shared-memory object of an instance: "loraflip.<instance>.*" in /dev/shm.
std::vector<std::string> shm_objects(const std::string &instance) {
  std::vector<std::string> out;
  const std::string prefix = "loraflip." + instance + ".";
  if (DIR *d = ::opendir("/dev/shm")) {
    while (dirent *e = ::readdir(d))
      if (std::strncmp(e->d_name, prefix.c_str(), prefix.size()) == 0) out.emplace_back(e->d_name);
    ::closedir(d);
  }
  return out;
}

bool shm_exists(const std::string &name) {
  struct stat st;
  return ::stat(("/dev/shm/" + name).c_str(), &st) == 0;
}

// "dt-<pid>-<n>": unique across the processes of a parallel test run. Removes whatever the
// instance left in /dev/shm (a SIGKILLed writer leaves its event) when the test ends.
struct ScopedInstance {
  std::string name;
  ScopedInstance() {
    static std::atomic<int> counter{0};
    name = "dt-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  }
  ~ScopedInstance() {
    for (const auto &object : shm_objects(name)) ::unlink(("/dev/shm/" + object).c_str());
  }
  ScopedInstance(const ScopedInstance &) = delete;
  ScopedInstance &operator=(const ScopedInstance &) = delete;
};

// Runs `body` in a forked child and returns its exit code (or 128 + the signal that ended it).
// The child makes its own backend: a parent's backend (and its stream threads) does not
// survive fork.
int in_child(const std::function<int()> &body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    int code = 99;
    try {
      code = body();
    } catch (...) {
    }
    ::_exit(code);
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
}

std::vector<unsigned char> pattern(size_t n, unsigned seed) {
  std::vector<unsigned char> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = static_cast<unsigned char>((i * 131 + seed * 7 + i / 251) & 0xff);
  return v;
}

template <typename R>
std::string why(const R &r) {
  return r.ok() ? std::string() : r.error().message;
}

constexpr uint64_t kBytes = uint64_t{1} << 20;
constexpr int kPending = 10, kComplete = 11;  // child exit codes for an event's state

}  // namespace

TEST_CASE("a block allocated in one process is opened in another, which reads and writes it") {
  ScopedInstance inst;
  auto backend = dev::make_host_backend(inst.name);
  auto block = backend->allocate(0, kBytes, "shared");
  REQUIRE_MESSAGE(block.ok(), why(block));
  const auto before = pattern(kBytes, 1), after = pattern(kBytes, 2);
  REQUIRE(backend->copy(block->ptr, before.data(), kBytes, dev::CopyKind::kHostToDevice, 0, nullptr)
              .ok());

  const int code = in_child([&] {
    auto child = dev::make_host_backend(inst.name);
    auto ptr = child->open_block(0, block->handle, kBytes);
    if (!ptr.ok()) return 1;
    std::vector<unsigned char> seen(kBytes);
    if (!child->copy(seen.data(), ptr.value(), kBytes, dev::CopyKind::kDeviceToHost, 0, nullptr))
      return 2;
    if (seen != before) return 3;
    if (!child->copy(ptr.value(), after.data(), kBytes, dev::CopyKind::kHostToDevice, 0, nullptr))
      return 4;
    return 0;
  });
  CHECK(code == 0);

  std::vector<unsigned char> seen(kBytes);
  REQUIRE(backend->copy(seen.data(), block->ptr, kBytes, dev::CopyKind::kDeviceToHost, 0, nullptr)
              .ok());
  CHECK(seen == after);
  backend->free_block(block.value());
}

TEST_CASE("opening a block twice in one process opens it once and gives the same pointer") {
  ScopedInstance inst;
  auto owner = dev::make_host_backend(inst.name);
  auto block = owner->allocate(1, 4096, "twice");
  REQUIRE_MESSAGE(block.ok(), why(block));

  auto reader = dev::make_host_backend(inst.name);
  CHECK(reader->blocks_opened() == 0);
  auto first = reader->open_block(1, block->handle, 4096);
  auto second = reader->open_block(1, block->handle, 4096);
  REQUIRE_MESSAGE(first.ok(), why(first));
  REQUIRE_MESSAGE(second.ok(), why(second));
  CHECK(first.value() == second.value());
  CHECK(reader->blocks_opened() == 1);
  // A smaller view of the same block is the same block.
  auto part = reader->open_block(1, block->handle, 100);
  REQUIRE(part.ok());
  CHECK(part.value() == first.value());
  CHECK(reader->blocks_opened() == 1);

  // The mapping is really the owner's memory.
  std::memset(block->ptr, 0x5a, 4096);
  CHECK(std::to_integer<int>(first.value()[4095]) == 0x5a);
  owner->free_block(block.value());
}

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
  CHECK(backend->copy(a->ptr + 96, host.data(), 4000, K::kHostToDevice, 0, nullptr).ok());
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
  REQUIRE(
      backend->copy(d0->ptr, src.data(), kBytes, dev::CopyKind::kHostToDevice, 0, nullptr).ok());
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

  // On the null stream a record completes at once.
  REQUIRE(backend->record(event.value(), nullptr).ok());
  CHECK(backend->query(event.value()).value());
  backend->destroy_stream(0, first.value());
  backend->destroy_stream(0, second.value());
  backend->destroy_event(event.value());
}

TEST_CASE(
    "the event of a writer killed before its stream reached the record stays pending, "
    "and a bounded wait gives up") {
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

  REQUIRE(::kill(writer, SIGKILL) == 0);
  int status = 0;
  REQUIRE(::waitpid(writer, &status, 0) == writer);
  CHECK(WIFSIGNALED(status));

  auto q = backend->query(event.value());
  REQUIRE(q.ok());
  CHECK_FALSE(q.value());
  const auto start = std::chrono::steady_clock::now();
  auto waited = dev::wait_event(*backend, event.value(), 200);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(waited.code() == LF_E_TIMEOUT);
  CHECK(elapsed >= std::chrono::milliseconds(200));
  CHECK(elapsed < std::chrono::seconds(5));
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

  // Freed: the name is gone. Freed and made again under the same name: the old handle is stale.
  const dev::IpcHandle old_handle = block->handle;
  backend->free_block(block.value());
  auto gone = backend->open_block(0, old_handle, 16);
  CHECK(gone.error().code == LF_E_NOT_FOUND);
  auto again = backend->allocate(0, 4096, "victim");
  REQUIRE(again.ok());
  auto stale = backend->open_block(0, old_handle, 16);
  CHECK(stale.error().code == LF_E_NOT_FOUND);
  CHECK(stale.error().message.find("stale") != std::string::npos);
  // The same tag twice on one device.
  CHECK(backend->allocate(0, 4096, "victim").error().code == LF_E_EXISTS);
  CHECK(backend->allocate(0, 4096, "bad/tag").error().code == LF_E_INVALID_ARGUMENT);
  CHECK(backend->allocate(0, 0, "empty").error().code == LF_E_INVALID_ARGUMENT);

  const dev::IpcHandle event_handle = event->handle;
  backend->destroy_event(event.value());
  CHECK(backend->open_event(0, event_handle).error().code == LF_E_NOT_FOUND);
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
  auto other = dev::make_host_backend(inst.name);
  auto opened = other->open_event(1, event->handle);
  REQUIRE(opened.ok());
  other->destroy_event(opened.value());
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
  REQUIRE(owner->copy(block->ptr, values.data(), 4000, dev::CopyKind::kHostToDevice, 0, nullptr)
              .ok());
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
