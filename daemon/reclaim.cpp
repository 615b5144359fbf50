// Registry, reclamation: the reaper, the pin census it keeps, and the memory it frees.
#include "daemon/registry.hpp"

#include <algorithm>
#include <unordered_map>

#include "ipc/proc.hpp"

#include "daemon/registry_internal.hpp"

namespace loraflip::daemon {

bool Registry::slot_pinned(uint32_t adapter, uint32_t slot) const {
  for (uint32_t i = 0; i < arena_.max_readers(); ++i) {
    const ipc::ReaderEntry &e = arena_.reader(i);
    if (e.owner_pid.load(kSeqCst) == 0) continue;
    for (const auto &cell : e.pins) {
      const uint64_t pin = cell.load(kSeqCst);
      if (pin != 0 && ipc::pin_adapter(pin) == adapter && ipc::pin_slot(pin) == slot) return true;
    }
  }
  return false;
}

bool Registry::adapter_pinned(uint32_t adapter) const {
  for (uint32_t i = 0; i < arena_.max_readers(); ++i) {
    const ipc::ReaderEntry &e = arena_.reader(i);
    if (e.owner_pid.load(kSeqCst) == 0) continue;
    for (const auto &cell : e.pins) {
      const uint64_t pin = cell.load(kSeqCst);
      if (pin != 0 && ipc::pin_adapter(pin) == adapter) return true;
    }
  }
  return false;
}

void Registry::release_memory(AdapterRecord &r) {
  if (r.placement == static_cast<uint32_t>(ipc::Placement::kDevices)) {
    if (r.device_epoch == devices_.epoch()) {
      for (size_t d = 0; d < devices_.size(); ++d)
        if (r.device_mask & (1u << d))
          devices_.allocator(d).release(r.device_offset[d], r.slot_bytes * r.slot_count);
    }
    if (r.restart_copy_bytes != 0) data_.release(r.restart_copy_offset, r.restart_copy_bytes);
    restart_copies_due_.erase(
        std::remove_if(restart_copies_due_.begin(), restart_copies_due_.end(),
                       [&](uint32_t i) { return &arena_.adapter(i) == &r; }),
        restart_copies_due_.end());
  } else {
    data_.release(r.data_offset, r.slot_bytes * r.slot_count);
  }
  pool_.release(r.tensors_offset, r.pool_bytes);
}

ReapReport Registry::reap(uint64_t now_ns) {
  ReapReport report;
  // One /proc read per pid per pass, however many entries and slots name it.
  std::unordered_map<uint64_t, uint64_t> start_of;
  auto alive = [&](uint64_t pid, uint64_t start) {
    if (pid == 0 || pid > INT32_MAX) return false;
    auto [it, fresh] = start_of.try_emplace(pid, 0);
    // A zombie runs no code and holds nothing: dead, as process_alive() says, though /proc
    // still gives its start time.
    if (fresh)
      it->second = ipc::process_alive(static_cast<pid_t>(pid), 0)
                       ? ipc::process_start_time(static_cast<pid_t>(pid))
                       : 0;
    return it->second != 0 && (start == 0 || it->second == start);
  };

  note_pin_ages(now_ns);
  for (uint32_t i = 0; i < arena_.max_readers(); ++i) {
    ipc::ReaderEntry &e = arena_.reader(i);
    uint64_t pid = e.owner_pid.load(kSeqCst);
    if (pid == 0 || alive(pid, e.owner_start.load(kSeqCst))) continue;
    // Take the entry before touching its pins: had the owner closed it and another reader
    // claimed it since the load above, clearing would drop that live reader's pins.
    if (!e.owner_pid.compare_exchange_strong(pid, ipc::kReaderReaping, kSeqCst)) continue;
    for (auto &cell : e.pins) {
      if (cell.exchange(0, kSeqCst) != 0) ++report.pins_cleared;
    }
    e.owner_start.store(0, kSeqCst);
    e.owner_pid.store(0, kSeqCst);
    ++report.dead_readers;
  }

  for (uint32_t i = 0; i < arena_.max_adapters(); ++i) {
    AdapterRecord &r = arena_.adapter(i);
    const AdapterState state = state_of(r);
    if (state == AdapterState::kFree) continue;
    bool writes_pending = false;
    for (uint32_t s = 0; s < r.slot_count; ++s) {
      SlotRecord &slot = r.slots[s];
      const SlotState st = slot_state(slot);
      if (st != SlotState::kWriting && st != SlotState::kAbandoned) continue;
      if (!alive(slot.writer_pid, slot.writer_start)) {
        end_lease(slot);
        r.aborts.fetch_add(1, std::memory_order_relaxed);
        ++report.dead_writers;
        continue;
      }
      writes_pending = true;
      if (st == SlotState::kWriting && now_ns > slot.lease_deadline_ns) {
        slot.word.store(ipc::pack_slot_word(0, SlotState::kAbandoned), kSeqCst);
        ++report.expired_leases;
      }
    }
    if (state == AdapterState::kDropping && !writes_pending && !adapter_pinned(i)) {
      release_memory(r);
      r.state.store(static_cast<uint32_t>(AdapterState::kFree), kSeqCst);
      ++report.adapters_freed;
    }
  }
  reclaimed_total_ += report;
  return report;
}

uint32_t Registry::live_readers() const {
  uint32_t n = 0;
  for (uint32_t i = 0; i < arena_.max_readers(); ++i)
    if (arena_.reader(i).owner_pid.load(kSeqCst) != 0) ++n;
  return n;
}

void Registry::note_pin_ages(uint64_t now_ns) {
  const size_t cells = size_t{arena_.max_readers()} * ipc::kPinCells;
  if (pin_seen_.size() != cells) pin_seen_.assign(cells, PinSeen{});
  for (uint32_t i = 0; i < arena_.max_readers(); ++i) {
    const ipc::ReaderEntry &e = arena_.reader(i);
    for (uint32_t c = 0; c < ipc::kPinCells; ++c) {
      PinSeen &seen = pin_seen_[size_t{i} * ipc::kPinCells + c];
      const uint64_t pin = e.pins[c].load(std::memory_order_relaxed);
      if (pin != seen.pin) seen = PinSeen{pin, now_ns};
    }
  }
}

uint64_t Registry::oldest_pin_age_ns(uint64_t now_ns) const {
  uint64_t oldest = 0;
  for (const PinSeen &seen : pin_seen_)
    if (seen.pin != 0) oldest = std::max(oldest, now_ns - std::min(now_ns, seen.since_ns));
  return oldest;
}

uint32_t Registry::pins_held() const {
  uint32_t n = 0;
  for (uint32_t i = 0; i < arena_.max_readers(); ++i)
    for (const auto &cell : arena_.reader(i).pins)
      if (cell.load(kSeqCst) != 0) ++n;
  return n;
}

}  // namespace loraflip::daemon
