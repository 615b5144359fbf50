#include "daemon/devices.hpp"

#include <cstring>

#include <spdlog/spdlog.h>

#include "ipc/proc.hpp"

namespace loraflip::daemon {

DeviceSet::DeviceSet(DeviceSet &&) noexcept = default;
DeviceSet &DeviceSet::operator=(DeviceSet &&) noexcept = default;

DeviceSet::~DeviceSet() {
  if (backend_ == nullptr) return;
  for (device::Block &b : blocks_) backend_->free_block(b);
}

DeviceSet DeviceSet::none(std::string reason) {
  DeviceSet set;
  set.reason_ = std::move(reason);
  return set;
}

Result<DeviceSet> DeviceSet::open(std::unique_ptr<device::Backend> backend,
                                  const std::vector<int> &ordinals, uint64_t bytes_each,
                                  const std::string &tag) {
  if (ordinals.size() > ipc::kMaxDevices)
    return make_error(LF_E_INVALID_ARGUMENT, "at most " + std::to_string(ipc::kMaxDevices) + " devices");
  // The registry checks commits on the devices (Backend::check_slot); the cuda backend needs
  // the check kernels for that, and only programs that link the daemon carry them.
  device::install_cuda_check_kernels();
  Result<int> count = backend->device_count();
  if (!count) return count.error();
  DeviceSet set;
  set.epoch_ = ipc::unix_now_ns();
  for (int ordinal : ordinals) {
    if (ordinal < 0 || ordinal >= count.value())
      return make_error(LF_E_NOT_FOUND, "device " + std::to_string(ordinal) + " does not exist (" +
                                            backend->name() + " sees " +
                                            std::to_string(count.value()) + ")");
    if (set.index_of(ordinal) >= 0)
      return make_error(LF_E_INVALID_ARGUMENT, "device " + std::to_string(ordinal) + " given twice");
    Result<device::Backend::Uuid> uuid = backend->device_uuid(ordinal);
    Result<device::Block> block =
        uuid ? backend->allocate(ordinal, bytes_each, tag) : Result<device::Block>(uuid.error());
    if (!block) {
      for (device::Block &b : set.blocks_) backend->free_block(b);
      set.blocks_.clear();
      return block.error();
    }
    set.blocks_.push_back(block.value());
    set.uuids_.push_back(uuid.value());
    set.allocators_.emplace_back(block->bytes, ipc::kSlotAlign);
  }
  set.enable_peer_access(*backend);
  set.backend_ = std::move(backend);
  return set;
}

void DeviceSet::enable_peer_access(device::Backend &backend) const {
  std::string unreachable;  // "0->1, 1->0": logged once
  for (const device::Block &from : blocks_) {
    for (const device::Block &to : blocks_) {
      if (from.device == to.device) continue;
      Result<bool> enabled = backend.enable_peer_access(from.device, to.device);
      if (!enabled)
        spdlog::warn("peer access from device {} to device {} could not be enabled ({}): "
                     "replication between them goes through host memory",
                     from.device, to.device, enabled.error().message);
      else if (!enabled.value())
        unreachable += (unreachable.empty() ? "" : ", ") + std::to_string(from.device) + "->" +
                       std::to_string(to.device);
    }
  }
  if (!unreachable.empty())
    spdlog::info("no peer access between devices {} (the hardware cannot): replication between "
                 "them goes through host memory",
                 unreachable);
}

int DeviceSet::index_of(int ordinal) const {
  for (size_t i = 0; i < blocks_.size(); ++i)
    if (blocks_[i].device == ordinal) return static_cast<int>(i);
  return -1;
}

void DeviceSet::publish(ipc::ArenaHeader &h) const {
  std::memset(h.device_backend, 0, sizeof h.device_backend);
  std::memset(h.devices, 0, sizeof h.devices);
  if (backend_ != nullptr)
    std::strncpy(h.device_backend, backend_->name(), sizeof h.device_backend - 1);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    h.devices[i].ordinal = blocks_[i].device;
    h.devices[i].bytes = blocks_[i].bytes;
    std::memcpy(h.devices[i].handle, blocks_[i].handle.bytes, sizeof h.devices[i].handle);
    std::memcpy(h.devices[i].uuid, uuids_[i].bytes, sizeof h.devices[i].uuid);
  }
  h.device_count = static_cast<uint32_t>(blocks_.size());
  h.device_epoch.store(epoch_, std::memory_order_seq_cst);
}

}  // namespace loraflip::daemon
