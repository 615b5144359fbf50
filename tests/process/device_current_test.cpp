// The client library on its users' threads, through the host stand-in of the device interface
// (tests/process/device_test.cpp has the rest of device placement): no call leaves the calling
// thread on another device, and one client writes asynchronously to adapters on two devices.
// The stand-in keeps one current device per thread for the whole process, shared by this
// program's copy of it and libloraflip's (device/device_host_current.cpp), as CUDA's driver
// keeps it for torch and the library alike; and it refuses work off the current device, so a
// call of the library that did not switch fails here too.
#include <doctest/doctest.h>

#include <cstring>
#include <dlfcn.h>
#include <string>
#include <vector>

#include "device/device.hpp"
#include "support.hpp"
#include "two_devices.hpp"

extern "C" int *loraflip_host_thread_device() noexcept;

using namespace lftest;
namespace dev = loraflip::device;

namespace {

// Arenas of 8 MiB: device_test.cpp counts this process's mappings of 16 MiB arenas, and the
// library keeps every block it opened mapped.
constexpr int64_t kElements = kTwoDeviceElements;
constexpr size_t kBytes = kElements * 4;

std::vector<float> values_of(float x) { return std::vector<float>(kElements, x); }

}  // namespace

TEST_CASE("this program and libloraflip share the stand-in's current device of each thread") {
  // One definition serves both: libloraflip's, which the linker takes rather than the device
  // library's copy, or the program's own, which it then exports for libloraflip to bind to.
  // Either way the first one the dynamic linker finds is the one this program calls. (Were
  // libloraflip not to export it, each would keep its own, and the program's would not be
  // found here.)
  void *bound = dlsym(RTLD_DEFAULT, "loraflip_host_thread_device");
  CHECK(bound == reinterpret_cast<void *>(&loraflip_host_thread_device));
}

TEST_CASE("the client library's calls leave the calling thread on the device it was on") {
  TwoDevices t("curdev");
  const Daemon &daemon = t.daemon;
  // The program's own view of the device interface, as a trainer's torch would have: it sets
  // the thread's device, makes streams, and reads the device back.
  auto mine_backend = dev::make_host_backend("curdev-user", 2);
  dev::Backend &b = *mine_backend;
  auto s0 = b.create_stream(0);
  auto s1 = b.create_stream(1);
  REQUIRE(s0.ok());
  REQUIRE(s1.ok());
  const std::vector<float> ones = values_of(1.0f), twos = values_of(2.0f);

  // A thread on device 1 and one on device 0, so that every call meets a thread on another
  // device than its own at least once. Fresh handles each time: their first device work (the
  // blocks' opening, aside, happens once per process, in the first pass) comes again.
  for (int mine : {1, 0}) {
    CAPTURE(mine);
    dev::CurrentDevice on(b);  // puts this thread back on device 0 at the end of the pass
    REQUIRE(on.use(mine).ok());
    // After each call: the thread is still on its device, and the call succeeded.
    auto same = [&](const std::string &call, int rc) {
      CHECK_MESSAGE(b.current_device().value_or(-1) == mine, call);
      REQUIRE_MESSAGE(rc == LF_OK, call);
    };

    lf_client_t *client = nullptr;
    same("lf_client_open", lf_client_open(daemon.dir().c_str(), 5000, &client));
    for (const std::string name : {"on1", "on0"}) {
      CAPTURE(name);
      const int device = name[2] - '0';
      void *stream = device == 0 ? s0.value() : s1.value();
      lf_writer_t *w = nullptr;
      same("lf_client_begin_write", lf_client_begin_write(client, name.c_str(), 0, &w));
      same("lf_writer_copy_in", lf_writer_copy_in(w, 0, ones.data(), kBytes));
      const void *srcs[] = {twos.data(), twos.data()};
      const size_t sizes[] = {kBytes, kBytes};
      same("lf_writer_copy_in_all", lf_writer_copy_in_all(w, srcs, sizes));
      same("lf_writer_copy_in_async (null stream)",
           lf_writer_copy_in_async(w, 0, ones.data(), kBytes, -1, nullptr));
      // Another stream of the slot's device: the commit covers both.
      same("lf_writer_copy_in_async (the slot device's stream)",
           lf_writer_copy_in_async(w, 1, ones.data(), kBytes, -1, stream));
      same("lf_writer_commit", lf_writer_commit(w, LF_COMMIT_CHECK_FINITE, nullptr));
    }

    lf_reader_t *reader = nullptr;
    same("lf_reader_open", lf_reader_open(daemon.dir().c_str(), &reader));
    lf_adapter_ref_t ref0 = 0, ref1 = 0;
    same("lf_reader_find", lf_reader_find(reader, "on0", &ref0));
    same("lf_reader_find", lf_reader_find(reader, "on1", &ref1));
    lf_pin_t *pin0 = nullptr, *pin1 = nullptr;
    same("lf_reader_acquire", lf_reader_acquire(reader, ref0, 0, &pin0));
    same("lf_reader_acquire", lf_reader_acquire(reader, ref1, 0, &pin1));
    lf_tensor_view_t v0, v1;
    same("lf_pin_tensor_on_device", lf_pin_tensor_on_device(pin0, 0, 0, &v0));
    same("lf_pin_tensor_on_device", lf_pin_tensor_on_device(pin1, 0, 1, &v1));
    CHECK(std::memcmp(v0.data, ones.data(), kBytes) == 0);
    CHECK(std::memcmp(v1.data, ones.data(), kBytes) == 0);

    // A copy from device 0 (a pinned tensor) into a slot on device 1: a peer copy, issued on
    // the source's device.
    lf_writer_t *w = nullptr;
    same("lf_client_begin_write", lf_client_begin_write(client, "on1", 0, &w));
    same("lf_writer_copy_in_async (peer)",
         lf_writer_copy_in_async(w, 0, v0.data, kBytes, 0, nullptr));
    same("lf_writer_copy_in_async (host)",
         lf_writer_copy_in_async(w, 1, twos.data(), kBytes, -1, nullptr));
    same("lf_writer_commit (peer)", lf_writer_commit(w, 0, nullptr));

    same("lf_pin_release_after (a stream)", lf_pin_release_after(pin0, -1, s0.value()));
    same("lf_pin_release_after (the null stream)", lf_pin_release_after(pin1, -1, nullptr));
    size_t pending = 0;
    same("lf_reader_release_completed", lf_reader_release_completed(reader, &pending));
    REQUIRE(b.synchronize(0, s0.value()).ok());
    lf_pin_t *again = nullptr;
    same("lf_reader_acquire (after releases)", lf_reader_acquire(reader, ref1, 0, &again));
    same("lf_pin_release_after (again)", lf_pin_release_after(again, 1, s1.value()));
    lf_reader_close(reader);
    same("lf_reader_close", LF_OK);
    lf_client_close(client);
    same("lf_client_close", LF_OK);
  }
  b.destroy_stream(0, s0.value());
  b.destroy_stream(1, s1.value());
}

TEST_CASE("one client writes asynchronously to adapters on two devices and both commits succeed") {
  TwoDevices t("twodev");
  const Daemon &daemon = t.daemon;
  lf_client_t *client = t.client;
  lf_reader_t *reader = nullptr;
  REQUIRE(lf_reader_open(daemon.dir().c_str(), &reader) == LF_OK);
  auto mine = dev::make_host_backend("twodev-user", 2);
  auto s0 = mine->create_stream(0);
  auto s1 = mine->create_stream(1);
  REQUIRE(s0.ok());
  REQUIRE(s1.ok());

  // Each write on a stream of its slot's device: the commit's event must be one of that device
  // (cudaEventRecord refuses an event and a stream of different devices).
  float x = 1.0f;
  for (const std::string name : {"on0", "on1", "on0", "on1"}) {
    CAPTURE(name);
    const int device = name[2] - '0';
    const std::vector<float> data = values_of(x);
    lf_writer_t *w = nullptr;
    REQUIRE(lf_client_begin_write(client, name.c_str(), 0, &w) == LF_OK);
    for (size_t t = 0; t < 2; ++t)
      REQUIRE(lf_writer_copy_in_async(w, t, data.data(), kBytes, -1,
                                      device == 0 ? s0.value() : s1.value()) == LF_OK);
    uint64_t version = 0;
    // (A failed commit frees the writer; the lease ends when the daemon's lease time does.)
    REQUIRE_MESSAGE(lf_writer_commit(w, LF_COMMIT_CHECK_FINITE, &version) == LF_OK,
                    std::string(lf_client_last_error(client)));
    lf_adapter_ref_t ref = 0;
    REQUIRE(lf_reader_find(reader, name.c_str(), &ref) == LF_OK);
    lf_pin_t *pin = nullptr;
    REQUIRE(lf_reader_acquire(reader, ref, version, &pin) == LF_OK);
    for (size_t t = 0; t < 2; ++t) {
      lf_tensor_view_t v;
      REQUIRE(lf_pin_tensor(pin, t, &v) == LF_OK);
      CHECK(v.device == device);
      CHECK(std::memcmp(v.data, data.data(), kBytes) == 0);
    }
    lf_pin_release(pin);
    x += 1.0f;
  }
  lf_reader_close(reader);
  mine->destroy_stream(0, s0.value());
  mine->destroy_stream(1, s1.value());
}
