// The host implementation of the device interface: POSIX shared memory stands in for device
// memory, a worker thread for each stream, and a shared atomic word for an interprocess event.
// It keeps the CUDA semantics that the layers above rely on (a block is exported once and
// opened once per process, copies and event records run in stream order, an event recorded on
// a stream that never gets there stays pending, one current device per thread) and checks more
// than CUDA does: every device pointer must lie inside a block of the device the call names,
// with the whole copy in it, and no work runs on a device that is not the current one.
// Its check_slot runs the CPU checks of kernels/validate.hpp on the block in place: it is
// ordinary shared memory.
//
// This file: the handles' helpers, the backend's construction and teardown, its devices, and
// the factories. The rest, by topic, in device_host_*.cpp (see device_host_internal.hpp).
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>
#include <unistd.h>

#include "device/device_host_internal.hpp"

namespace loraflip::device::host_detail {

Error invalid(std::string message) { return make_error(LF_E_INVALID_ARGUMENT, std::move(message)); }

bool valid_name_part(const std::string &s) {
  if (s.empty() || s.size() > 200) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == '-'))
      return false;
  return true;
}

std::string fit_name(const std::string &full) {
  if (full.size() < sizeof(HostHandle::name)) return full;
  uint64_t h = 14695981039346656037ULL;  // FNV-1a 64 offset basis and prime
  for (unsigned char c : full) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "loraflip.%016llx", static_cast<unsigned long long>(h));
  return buf;
}

uint64_t make_nonce() {
  std::random_device rd;
  return (uint64_t{rd()} << 32) ^ rd() ^ (uint64_t(::getpid()) << 17);
}

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

Result<HostHandle> parse_handle(const IpcHandle &handle, uint32_t magic, const char *what) {
  HostHandle h;
  std::memcpy(&h, handle.bytes, sizeof h);
  if (h.magic != magic)
    return invalid(std::string("not a host ") + what +
                   " handle (bad magic number): a handle of another implementation or kind, "
                   "or no handle at all");
  if (std::memchr(h.name, '\0', sizeof h.name) == nullptr || h.name[0] == '\0')
    return invalid(std::string("a host ") + what + " handle without a valid segment name");
  return h;
}

HostBackend::~HostBackend() {
  // Streams first: joining their workers runs what is still queued.
  std::map<HostStream *, std::unique_ptr<HostStream>> streams;
  {
    std::lock_guard lock(mu_);
    streams.swap(streams_);
  }
  streams.clear();
  // What this process created and did not free goes with it, as device memory goes with a
  // CUDA context.
  for (auto &[ptr, block] : owned_blocks_) {
    const std::string name = block->segment.name();
    block.reset();
    Segment::remove(name);
  }
  for (auto &[ptr, event] : events_)
    if (event->creator) Segment::remove(event->segment.name());
}

Result<int> HostBackend::device_count() {
  if (config_error_) return *config_error_;
  return devices_;
}

Status HostBackend::check_device(int device) const {
  if (config_error_) return *config_error_;
  if (device < 0 || device >= devices_)
    return invalid("device " + std::to_string(device) + " does not exist (this process sees " +
                   std::to_string(devices_) + " host devices; LORAFLIP_HOST_DEVICES sets how "
                   "many there are, LORAFLIP_HOST_VISIBLE_DEVICES which this process sees)");
  return {};
}

Result<int> HostBackend::current_device() {
  if (config_error_) return *config_error_;
  return *loraflip_host_thread_device();
}

// cudaSetDevice refuses a device that does not exist (cudaErrorInvalidDevice) and leaves the
// current one.
Status HostBackend::set_current_device(int device) {
  if (auto s = check_device(device); !s) return s;
  *loraflip_host_thread_device() = device;
  return {};
}

Status HostBackend::require_current(int device, const char *what) const {
  if (device >= 0 && device < 32 &&
      (loraflip_host_failed_devices()->load() & (uint32_t{1} << device)) != 0)
    return make_error(LF_E_DEVICE, std::string(what) + " on device " + std::to_string(device) +
                                       ": the device's context failed for good (a simulated "
                                       "sticky error, as after an illegal address)");
  const int current = *loraflip_host_thread_device();
  if (current == device) return {};
  return make_error(LF_E_INTERNAL,
                    std::string(what) + " on device " + std::to_string(device) +
                        " while the calling thread's current device is " +
                        std::to_string(current) +
                        " (CUDA would run it there: the call did not switch devices)");
}

}  // namespace loraflip::device::host_detail

namespace loraflip::device {

using host_detail::HostBackend;
using host_detail::invalid;

namespace {

// The config error of a backend whose every call fails with it.
std::unique_ptr<Backend> misconfigured(const std::string &instance, Error error) {
  return std::make_unique<HostBackend>(instance, std::vector<int>{}, std::move(error));
}

// LORAFLIP_HOST_VISIBLE_DEVICES, like CUDA_VISIBLE_DEVICES: "2,0" makes the stand-in's devices
// 2 and 0 this process's ordinals 0 and 1. Stricter than CUDA, which quietly stops at the first
// entry it cannot use: every entry must be a device number below `devices`, given once.
Result<std::vector<int>> parse_visible(const char *value, int devices) {
  const std::string text(value);
  auto bad = [&](const std::string &why) {
    return invalid("LORAFLIP_HOST_VISIBLE_DEVICES='" + text + "': " + why +
                   " (expected distinct device numbers from 0 to " + std::to_string(devices - 1) +
                   ", separated by commas; LORAFLIP_HOST_DEVICES sets how many there are)");
  };
  std::vector<int> visible;
  size_t at = 0;
  for (;;) {
    const size_t comma = text.find(',', at);
    const std::string item = text.substr(at, comma == std::string::npos ? comma : comma - at);
    if (item.empty() || item.size() > 2 || item.find_first_not_of("0123456789") != std::string::npos)
      return bad("'" + item + "' is not a device number");
    const int device = std::stoi(item);
    if (device >= devices) return bad("device " + item + " does not exist");
    for (int seen : visible)
      if (seen == device) return bad("device " + item + " is given twice");
    visible.push_back(device);
    if (comma == std::string::npos) return visible;
    at = comma + 1;
  }
}

}  // namespace

std::unique_ptr<Backend> make_host_backend(const std::string &instance, int devices,
                                           std::vector<int> visible) {
  std::optional<Error> error;
  if (!host_detail::valid_name_part(instance))
    error = invalid("instance name '" + instance + "': use 1 to 200 of A-Z a-z 0-9 . _ -");
  else if (devices < 1 || devices > kMaxHostDevices)
    error = invalid("the host backend takes 1 to " + std::to_string(kMaxHostDevices) +
                    " devices, not " + std::to_string(devices));
  else if (visible.empty())
    error = invalid("the host backend needs at least one visible device");
  for (size_t i = 0; !error && i < visible.size(); ++i) {
    if (visible[i] < 0 || visible[i] >= devices)
      error = invalid("visible device " + std::to_string(visible[i]) + " does not exist (the " +
                      "host backend has " + std::to_string(devices) + ")");
    for (size_t j = 0; !error && j < i; ++j)
      if (visible[j] == visible[i])
        error = invalid("visible device " + std::to_string(visible[i]) + " is given twice");
  }
  if (error) return misconfigured(instance, std::move(*error));
  return std::make_unique<HostBackend>(instance, std::move(visible), std::nullopt);
}

std::unique_ptr<Backend> make_host_backend(const std::string &instance, int devices) {
  std::vector<int> all;
  for (int d = 0; d < devices && d <= kMaxHostDevices; ++d) all.push_back(d);
  return make_host_backend(instance, devices, std::move(all));
}

std::unique_ptr<Backend> make_host_backend(const std::string &instance) {
  int devices = 2;
  if (const char *env = std::getenv("LORAFLIP_HOST_DEVICES"); env != nullptr && *env != '\0') {
    char *end = nullptr;
    errno = 0;
    const long n = std::strtol(env, &end, 10);
    if (errno != 0 || *end != '\0' || n < 1 || n > kMaxHostDevices)
      return misconfigured(instance, invalid(std::string("LORAFLIP_HOST_DEVICES='") + env +
                                             "': expected an integer from 1 to " +
                                             std::to_string(kMaxHostDevices)));
    devices = static_cast<int>(n);
  }
  const char *visible = std::getenv("LORAFLIP_HOST_VISIBLE_DEVICES");
  if (visible == nullptr) return make_host_backend(instance, devices);
  // Set but empty hides every device, as CUDA_VISIBLE_DEVICES="" does (cudaErrorNoDevice).
  if (*visible == '\0')
    return misconfigured(instance, make_error(LF_E_UNSUPPORTED,
                                              "LORAFLIP_HOST_VISIBLE_DEVICES is empty: this "
                                              "process sees no host device"));
  Result<std::vector<int>> list = parse_visible(visible, devices);
  if (!list) return misconfigured(instance, list.error());
  return make_host_backend(instance, devices, std::move(list).value());
}

void host_fail_device(int device) {
  if (device >= 0 && device < 32) loraflip_host_failed_devices()->fetch_or(uint32_t{1} << device);
}

void remove_host_blocks(const std::string &instance, const std::string &tag) {
  for (int device = 0; device < kMaxHostDevices; ++device)
    ipc::Segment::remove(host_detail::fit_name("loraflip." + instance + "." + tag + ".dev" +
                                               std::to_string(device)));
}

}  // namespace loraflip::device
