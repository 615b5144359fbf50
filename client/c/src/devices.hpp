// The daemon's device arenas as this process sees them: each block opened once per process
// through the device interface, and opened again only when the daemon restarted (a new
// device epoch, since device memory dies with the daemon that allocated it).
#pragma once

#include <cstdint>

#include "device/device.hpp"
#include "ipc/arena.hpp"
#include "ipc/result.hpp"

namespace loraflip::client {

class DeviceMap {
 public:
  // Opens the blocks of the daemon's current epoch, if not open yet. Cheap when nothing
  // changed: one atomic load.
  Status refresh(const ipc::Arena &arena);
  std::byte *base(uint32_t index) const { return bases_[index]; }
  int ordinal(uint32_t index) const { return ordinals_[index]; }
  device::Backend *backend() const { return backend_; }
  uint64_t epoch() const { return epoch_; }

 private:
  uint64_t epoch_ = 0;
  device::Backend *backend_ = nullptr;
  std::byte *bases_[ipc::kMaxDevices] = {};
  int ordinals_[ipc::kMaxDevices] = {};
};

// The process-wide backend of a kind ("cuda" or "host"), made on first use.
Result<device::Backend *> process_backend(const char *kind);
// The backend this process's streams belong to: the daemon's kind when it serves devices
// (the host stand-in in tests), else the CUDA runtime (a loop reading host-placed tensors
// from its GPU kernels).
Result<device::Backend *> stream_backend(const ipc::Arena &arena, const DeviceMap &devices);

}  // namespace loraflip::client
