#include "devices.hpp"

#include <cstring>
#include <memory>
#include <mutex>
#include <string>

namespace loraflip::client {

Result<device::Backend *> process_backend(const char *kind) {
  static std::mutex mutex;
  static std::unique_ptr<device::Backend> host, cuda;
  std::lock_guard lock(mutex);
  if (std::strcmp(kind, "host") == 0) {
    if (!host) host = device::make_host_backend("client");
    return host.get();
  }
  if (std::strcmp(kind, "cuda") == 0) {
    if (!cuda) {
      auto made = device::make_cuda_backend();
      if (!made) return made.error();
      cuda = std::move(made).value();
    }
    return cuda.get();
  }
  return make_error(LF_E_UNSUPPORTED, std::string("the daemon serves devices through '") + kind +
                                          "', which this client does not know");
}

Result<device::Backend *> stream_backend(const ipc::Arena &arena, const DeviceMap &devices) {
  if (devices.backend() != nullptr) return devices.backend();
  const ipc::ArenaHeader &h = arena.header();
  if (h.device_count == 0 || h.device_count > ipc::kMaxDevices) return process_backend("cuda");
  char kind[sizeof h.device_backend + 1] = {};
  std::memcpy(kind, h.device_backend, sizeof h.device_backend);
  return process_backend(kind);
}

Status DeviceMap::refresh(const ipc::Arena &arena) {
  const ipc::ArenaHeader &h = arena.header();
  const uint64_t epoch = h.device_epoch.load(std::memory_order_seq_cst);
  if (epoch == epoch_) return {};
  if (h.device_count == 0 || h.device_count > ipc::kMaxDevices)
    return make_error(LF_E_UNSUPPORTED, "the daemon serves no devices");
  char kind[sizeof h.device_backend + 1] = {};
  std::memcpy(kind, h.device_backend, sizeof h.device_backend);
  Result<device::Backend *> backend = process_backend(kind);
  if (!backend) return backend.error();
  for (uint32_t i = 0; i < h.device_count; ++i) {
    device::IpcHandle handle;
    std::memcpy(handle.bytes, h.devices[i].handle, sizeof handle.bytes);
    Result<std::byte *> base = backend.value()->open_block(h.devices[i].ordinal, handle, h.devices[i].bytes);
    if (!base) return base.error();
    bases_[i] = base.value();
    ordinals_[i] = h.devices[i].ordinal;
  }
  backend_ = backend.value();
  epoch_ = epoch;
  return {};
}

}  // namespace loraflip::client
