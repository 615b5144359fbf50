// The daemon's device arenas as this process sees them. Device ordinals are per process
// (CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER renumber them; the host stand-in's
// LORAFLIP_HOST_VISIBLE_DEVICES does the same), so the daemon's are never used here: each
// arena's GPU is found by its uuid among this process's devices, a device this process does not
// see is skipped, and every ordinal the library reports is this process's own.
//
// Blocks are opened lazily, at the first use of each device (a client creates a context only
// on the GPUs it uses), and opened again only when the daemon restarted (a new device epoch,
// since device memory dies with the daemon that allocated it). Every DeviceMap of the process
// (one per client and per reader) shares one mapping per (epoch, handle), counted; the last
// holder to let go closes it, so that the memory of a daemon that went is not kept allocated
// by the mappings of its long-lived clients.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "device/device.hpp"
#include "ipc/arena.hpp"
#include "ipc/result.hpp"

namespace loraflip::client {

// One hold on a block opened through open_shared: moving it moves the hold; destroying it
// lets go, and the last hold in the process closes the block (Backend::close_block). Whoever
// holds one may use the block's memory; nothing else keeps it mapped.
class BlockRef {
 public:
  BlockRef() = default;
  BlockRef(device::Backend *backend, std::byte *ptr) : backend_(backend), ptr_(ptr) {}
  BlockRef(BlockRef &&other) noexcept
      : backend_(std::exchange(other.backend_, nullptr)), ptr_(std::exchange(other.ptr_, nullptr)) {}
  BlockRef &operator=(BlockRef &&other) noexcept;
  BlockRef(const BlockRef &) = delete;
  BlockRef &operator=(const BlockRef &) = delete;
  ~BlockRef() { reset(); }

  void reset();
  std::byte *get() const { return ptr_; }
  // Another hold on the same block.
  BlockRef share() const;

 private:
  device::Backend *backend_ = nullptr;
  std::byte *ptr_ = nullptr;
};

class DeviceMap {
 public:
  DeviceMap() = default;
  DeviceMap(const DeviceMap &) = delete;
  DeviceMap &operator=(const DeviceMap &) = delete;

  // Reads the daemon's device table again when its epoch changed: its backend, and which of
  // its devices this process sees, at which ordinal. Opens nothing. The blocks of the epoch
  // before are set aside as retired (see drop_retired), not closed: pins of that epoch may
  // still read them. Cheap when nothing changed: one atomic load.
  Status refresh(const ipc::Arena &arena);
  // The base address in this process of the daemon's device `index` (an index of
  // ArenaHeader::devices), opening its block at the first use in this epoch. LF_E_UNSUPPORTED,
  // naming the device, when this process does not see it. After a successful refresh only.
  Result<std::byte *> base(uint32_t index);
  // This process's ordinal of the daemon's device `index`; -1: this process does not see it.
  int ordinal(uint32_t index) const { return index < count_ ? local_[index] : -1; }
  // The error a use of the daemon's device `index` gets when ordinal(index) is -1 (or when the
  // table has no such device).
  Error invisible(uint32_t index) const;
  // A hold on the block of the daemon's device `index`, for a writer whose views outlive
  // this map's own hold (base(index) first).
  BlockRef hold(uint32_t index) const { return opened_[index].share(); }
  device::Backend *backend() const { return backend_; }
  uint64_t epoch() const { return epoch_; }

  // Whether blocks of earlier epochs are still held (see drop_retired).
  bool has_retired() const { return !retired_.empty(); }
  // Lets go of the retired blocks of each earlier epoch for which `still_named(epoch)` is
  // false: nothing of this map's owner reads them any more. `still_named(uint64_t) -> bool`.
  template <typename StillNamed>
  void drop_retired(StillNamed &&still_named) {
    for (size_t i = 0; i < retired_.size();) {
      if (still_named(retired_[i].first)) {
        ++i;
        continue;
      }
      retired_.erase(retired_.begin() + static_cast<std::ptrdiff_t>(i));  // closes at the last hold
    }
  }

 private:
  uint64_t epoch_ = 0;  // 0: no table read yet, or the last refresh failed
  device::Backend *backend_ = nullptr;
  uint32_t count_ = 0;                        // the daemon's devices in epoch_
  // Each device's block, copied from the table at refresh: a daemon that starts later
  // rewrites the table while this epoch's pins may still be in use.
  device::IpcHandle handles_[ipc::kMaxDevices] = {};
  uint64_t bytes_[ipc::kMaxDevices] = {};
  int local_[ipc::kMaxDevices] = {};          // this process's ordinal of each; -1: not seen
  int remote_[ipc::kMaxDevices] = {};         // the daemon's ordinal of each, for messages
  unsigned char uuids_[ipc::kMaxDevices][16] = {};  // and its uuid
  std::string unseen_why_;                    // why this process sees none, if it sees none
  BlockRef opened_[ipc::kMaxDevices];         // this map's hold on each block opened in epoch_
  std::vector<std::pair<uint64_t, BlockRef>> retired_;  // holds on blocks of earlier epochs
};

// The process-wide backend of a kind ("cuda" or "host"), made on first use.
Result<device::Backend *> process_backend(const char *kind);
// The backend this process's streams belong to: the daemon's kind when it serves devices
// (the host stand-in in tests), else the CUDA runtime (a loop reading host-placed tensors
// from its GPU kernels).
Result<device::Backend *> stream_backend(const ipc::Arena &arena, const DeviceMap &devices);

}  // namespace loraflip::client
