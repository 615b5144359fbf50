// The device arenas the daemon serves: one block per GPU, allocated and exported once at start
// through the device interface, with an allocator each. Device memory belongs to the process
// that allocated it, so a restarted daemon starts with new, empty arenas (a new epoch).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "daemon/allocator.hpp"
#include "device/device.hpp"
#include "ipc/arena.hpp"
#include "ipc/result.hpp"

namespace loraflip::daemon {

// The tag of the daemon's device blocks (names them in the host stand-in).
inline constexpr const char *kDeviceArenaTag = "arena";

class DeviceSet {
 public:
  // No devices: every device placement is refused with `reason`.
  static DeviceSet none(std::string reason);
  // Allocates `bytes_each` on every ordinal (the daemon's own numbering) and learns each
  // device's uuid, which clients map to their own ordinals. Fails as a whole if any device
  // fails. Then lets every device reach every other directly (peer access), so that
  // replication copies go over NVLink or PCIe: where the hardware cannot, that is logged
  // (info) and copies go through host memory; a failure to enable it is a warning, not fatal.
  static Result<DeviceSet> open(std::unique_ptr<device::Backend> backend,
                                const std::vector<int> &ordinals, uint64_t bytes_each,
                                const std::string &tag);
  DeviceSet(DeviceSet &&) noexcept;
  DeviceSet &operator=(DeviceSet &&) noexcept;
  ~DeviceSet();

  size_t size() const { return blocks_.size(); }
  bool empty() const { return blocks_.empty(); }
  // Why there are no devices (for the error a device placement gets).
  const std::string &unavailable_reason() const { return reason_; }
  int ordinal(size_t index) const { return blocks_[index].device; }
  // Index of the device with this ordinal, or -1.
  int index_of(int ordinal) const;
  std::byte *base(size_t index) const { return blocks_[index].ptr; }
  RangeAllocator &allocator(size_t index) { return allocators_[index]; }
  const RangeAllocator &allocator(size_t index) const { return allocators_[index]; }
  device::Backend &backend() { return *backend_; }
  uint64_t epoch() const { return epoch_; }
  // Writes the table clients read (backend, ordinals, uuids, sizes, handles, epoch) into the
  // header.
  void publish(ipc::ArenaHeader &header) const;

 private:
  DeviceSet() = default;
  // enable_peer_access for every ordered pair of devices; logs what could not be done.
  void enable_peer_access(device::Backend &backend) const;
  std::unique_ptr<device::Backend> backend_;
  std::vector<device::Block> blocks_;
  std::vector<device::Backend::Uuid> uuids_;  // of blocks_[i]'s device, published beside it
  std::vector<RangeAllocator> allocators_;
  std::string reason_;
  uint64_t epoch_ = 0;
};

}  // namespace loraflip::daemon
