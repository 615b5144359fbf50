// The host implementation's current device of each thread (Backend::current_device): one per
// thread of the process, as CUDA keeps it in its driver, which a process loads once; and the
// default stream of each device, one per process for the same reason.
//
// A program may carry this code twice: a test links the device library and libloraflip, which
// holds a hidden copy of it. Both copies call these functions through the dynamic linker (they
// have default visibility, and libloraflip.map exports them), which binds them to one
// definition each (libloraflip's, or the program's if the program has its own: the linker then
// exports it), so they see one slot per thread and one default stream per device;
// tests/process/device_current_test.cpp checks it. They are alone in their file so that the
// compiler cannot bind a caller to its own copy (inlining it) without the linker's say.
#include <atomic>
#include <cstdint>
#include <mutex>
#include <unistd.h>

#include "device/device_host_internal.hpp"

extern "C" __attribute__((visibility("default"))) int *loraflip_host_thread_device() noexcept {
  thread_local int device = 0;  // a thread that never set one is on device 0, as in CUDA
  return &device;
}

// Devices whose context failed for good (host_fail_device): bit d for device d, for the whole
// process, as a sticky CUDA error poisons the context for every user of it.
extern "C" __attribute__((visibility("default"))) std::atomic<uint32_t> *
loraflip_host_failed_devices() noexcept {
  static std::atomic<uint32_t> failed{0};
  return &failed;
}

// One default stream per device for the process, made at first use and never destroyed (its
// worker thread ends with the process, as CUDA's streams end with its context). A child forked
// after they were made has the pointers but not the threads: it makes its own.
extern "C" __attribute__((visibility("default"))) void *loraflip_host_default_stream(
    int device) noexcept {
  using loraflip::device::host_detail::HostStream;
  using loraflip::device::kMaxHostDevices;
  if (device < 0 || device >= kMaxHostDevices) return nullptr;
  static std::mutex mu;
  static pid_t made_in = 0;
  static HostStream *streams[kMaxHostDevices] = {};
  std::lock_guard lock(mu);
  if (made_in != ::getpid()) {
    for (HostStream *&s : streams) s = nullptr;  // the parent's: leaked, their threads are gone
    made_in = ::getpid();
  }
  if (streams[device] == nullptr) streams[device] = new HostStream(device);
  return streams[device];
}
