// The host implementation's current device of each thread (Backend::current_device): one per
// thread of the process, as CUDA keeps it in its driver, which a process loads once.
//
// A program may carry this code twice: a test links the device library and libloraflip, which
// holds a hidden copy of it. Both copies call this function through the dynamic linker (it has
// default visibility, and libloraflip.map exports it), which binds them to one definition
// (libloraflip's, or the program's if the program has its own: the linker then exports it), so
// they see one slot per thread; tests/process/device_current_test.cpp checks it. It is alone in
// its file so that the compiler cannot bind a caller to its own copy (inlining it) without the
// linker's say.
#include "device/device_host_internal.hpp"

extern "C" __attribute__((visibility("default"))) int *loraflip_host_thread_device() noexcept {
  thread_local int device = 0;  // a thread that never set one is on device 0, as in CUDA
  return &device;
}
