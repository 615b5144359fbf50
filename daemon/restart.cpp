// Registry, restart: rebuilding the allocators from the records a previous daemon left, and
// the host copies that put device-placed adapters back after a restart.
#include "daemon/registry.hpp"

#include <algorithm>
#include <cstring>

#include "daemon/registry_internal.hpp"

namespace loraflip::daemon {

Status Registry::rebuild(const std::vector<int> &old_ordinals) {
  for (uint32_t i = 0; i < arena_.max_adapters(); ++i) {
    AdapterRecord &r = arena_.adapter(i);
    if (state_of(r) == AdapterState::kFree) continue;
    const std::string which = "adapter record " + std::to_string(i) + " ('" +
                              std::string(r.name, strnlen(r.name, sizeof r.name)) + "')";
    const bool on_devices = r.placement == static_cast<uint32_t>(ipc::Placement::kDevices);
    if (r.slot_count == 0 || r.slot_count > ipc::kMaxSlots || r.tensor_count == 0 ||
        (!on_devices && !data_.reserve(r.data_offset, r.slot_bytes * r.slot_count)) ||
        (on_devices && r.restart_copy_bytes != 0 &&
         !data_.reserve(r.restart_copy_offset, r.restart_copy_bytes)) ||
        !pool_.reserve(r.tensors_offset, r.pool_bytes))
      return make_error(LF_E_LAYOUT_MISMATCH, which + " does not fit the arena; the arena is "
                                                      "damaged: remove it and restart");
    if (on_devices && r.device_epoch != devices_.epoch()) {
      // Its device memory belonged to the previous daemon and died with it: put the active
      // version back from the host copy, or drop the adapter.
      if (state_of(r) == AdapterState::kLive) {
        const uint64_t version = ipc::active_version(r.active.load(kSeqCst));
        if (Status restored = restore_from_copy(r, old_ordinals); restored) {
          device_restarts_.push_back({r.name, true, version, {}});
          continue;
        } else {
          device_restarts_.push_back({r.name, false, version, restored.error().message});
        }
        // Readers that pin it get LF_E_STALE from now on; the record is freed once their
        // pins are gone.
        r.state.store(static_cast<uint32_t>(AdapterState::kDropping), kSeqCst);
        publish_flip(r, 0);
      }
      for (uint32_t s = 0; s < r.slot_count; ++s) end_lease(r.slots[s]);
    }
  }
  return {};
}

Status Registry::restore_from_copy(AdapterRecord &r, const std::vector<int> &old_ordinals) {
  const uint64_t version = ipc::active_version(r.active.load(kSeqCst));
  if (version == 0) return make_error(LF_E_NO_VERSION, "it had no version yet");
  if (devices_.empty())
    return make_error(LF_E_UNSUPPORTED, "this daemon serves no devices (" +
                                            devices_.unavailable_reason() + ")");
  if (r.restart_copy_bytes == 0)
    return make_error(LF_E_ARENA_FULL, "it had no host copy (the data arena had no room for "
                                       "one when it was created)");
  if (r.restart_copy_version != version || r.restart_copy_bytes != r.slot_bytes)
    return make_error(LF_E_NO_VERSION, "its host copy held version " +
                                           std::to_string(r.restart_copy_version) +
                                           ", not the active version " + std::to_string(version) +
                                           " (the daemon stopped before the copy was done)");
  // The same ordinals, now at this daemon's indexes.
  const uint64_t range = r.slot_bytes * r.slot_count;
  int index_of[ipc::kMaxDevices];
  uint64_t offsets[ipc::kMaxDevices] = {};
  uint32_t mask = 0;
  auto release_taken = [&] {
    for (size_t d = 0; d < ipc::kMaxDevices; ++d)
      if (mask & (1u << d)) devices_.allocator(d).release(offsets[d], range);
  };
  for (uint32_t old = 0; old < ipc::kMaxDevices; ++old) {
    index_of[old] = -1;
    if (!(r.device_mask & (1u << old))) continue;
    const int ordinal = old < old_ordinals.size() ? old_ordinals[old] : -1;
    const int now = ordinal < 0 ? -1 : devices_.index_of(ordinal);
    std::optional<uint64_t> at = now < 0 ? std::nullopt : devices_.allocator(now).allocate(range);
    if (!at) {
      release_taken();
      return make_error(now < 0 ? LF_E_NOT_FOUND : LF_E_ARENA_FULL,
                        now < 0 ? "it was placed on device " + std::to_string(ordinal) +
                                      ", which this daemon does not serve (see --devices)"
                                : "device " + std::to_string(ordinal) + " has no room for it");
    }
    index_of[old] = now;
    offsets[now] = *at;
    mask |= 1u << now;
  }
  const int primary = r.primary_device < ipc::kMaxDevices ? index_of[r.primary_device] : -1;
  if (primary < 0) {
    release_taken();
    return make_error(LF_E_LAYOUT_MISMATCH, "its record names no primary device");
  }
  device::Backend &b = devices_.backend();
  std::byte *slot0 = devices_.base(primary) + offsets[primary];
  Status copied = b.copy(slot0, arena_.data_at(r.restart_copy_offset), r.slot_bytes,
                         device::CopyKind::kHostToDevice, devices_.ordinal(primary), nullptr);
  if (copied) copied = b.synchronize(devices_.ordinal(primary), nullptr);
  if (!copied) {
    release_taken();
    return copied.error();
  }
  // Re-point the record at the new memory. Readers that pinned the old memory keep their
  // (version, slot) cells until they release; the slot check keeps those slots from writers.
  // Readers refuse the record while its epoch is the old one (see client acquire), so the
  // fields below change unseen; the epoch is stored last, after the flip.
  r.device_mask = mask;
  std::copy(std::begin(offsets), std::end(offsets), r.device_offset);
  r.primary_device = static_cast<uint32_t>(primary);
  for (uint32_t s = 0; s < r.slot_count; ++s) {
    SlotRecord &slot = r.slots[s];
    end_lease(slot);
    slot.data_offset = offsets[primary] + uint64_t{s} * r.slot_bytes;
    slot.checksum = s == 0 ? r.restart_copy_checksum : 0;
    slot.committed_unix_ns = s == 0 ? r.restart_copy_committed_unix_ns : 0;
    slot.word.store(ipc::pack_slot_word(s == 0 ? version : 0,
                                        s == 0 ? SlotState::kCommitted : SlotState::kFree),
                    kSeqCst);
  }
  if (Status st = replicate(r, 0); !st) {
    release_taken();
    return st.error();
  }
  publish_flip(r, ipc::pack_active(version, 0));
  r.device_epoch.store(devices_.epoch(), kSeqCst);
  return {};
}

void Registry::note_flip_for_restart_copy(uint32_t adapter) {
  const AdapterRecord &r = arena_.adapter(adapter);
  if (r.placement != static_cast<uint32_t>(ipc::Placement::kDevices) || r.restart_copy_bytes == 0)
    return;
  if (std::find(restart_copies_due_.begin(), restart_copies_due_.end(), adapter) ==
      restart_copies_due_.end())
    restart_copies_due_.push_back(adapter);
}

std::vector<std::string> Registry::update_restart_copies() {
  std::vector<std::string> failures;
  for (uint32_t index : restart_copies_due_) {
    AdapterRecord &r = arena_.adapter(index);
    if (state_of(r) != AdapterState::kLive || r.restart_copy_bytes == 0) continue;
    const uint64_t active = r.active.load(kSeqCst);
    const uint64_t version = ipc::active_version(active);
    if (version == 0 || r.restart_copy_version == version) continue;
    const SlotRecord &slot = r.slots[ipc::active_slot(active)];
    // Invalid while its bytes change: a daemon killed mid-copy finds no usable copy.
    r.restart_copy_version = 0;
    const int primary = static_cast<int>(r.primary_device);
    device::Backend &b = devices_.backend();
    // The active slot is never lent to a writer, and this thread alone flips: its bytes hold
    // still for the copy.
    Status st = b.copy(arena_.data_at(r.restart_copy_offset), devices_.base(primary) + slot.data_offset,
                       r.slot_bytes, device::CopyKind::kDeviceToHost, devices_.ordinal(primary),
                       nullptr);
    if (st) st = b.synchronize(devices_.ordinal(primary), nullptr);
    if (!st) {
      failures.push_back("adapter '" + std::string(r.name) + "': " + st.error().message);
      continue;
    }
    r.restart_copy_checksum = slot.checksum;
    r.restart_copy_committed_unix_ns = slot.committed_unix_ns;
    r.restart_copy_version = version;
  }
  restart_copies_due_.clear();
  return failures;
}

}  // namespace loraflip::daemon
