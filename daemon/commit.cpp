// Registry, commit: waiting on the writer's device event, the checks of the written slot (on the
// CPU for host memory, on the first device for device placements), replication to the other
// devices, the flip, and the answer to a commit asked again.
#include "daemon/registry.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "ipc/dtype.hpp"
#include "ipc/messages.hpp"
#include "ipc/proc.hpp"

#include "daemon/registry_internal.hpp"

namespace loraflip::daemon {

namespace {

// "tensor 'lora_A' holds NaN at element 37 (f32 bits 0x7fc00000)". `bits` is the element's
// bytes read little-endian; its exponent bits are all ones (that is how it was found).
std::string non_finite_message(const ipc::TensorDesc &d, int64_t element, uint64_t bits) {
  const size_t elem = ipc::dtype_size(d.dtype);
  const uint64_t sign = uint64_t{1} << (8 * elem - 1);
  // Mantissa masks of IEEE binary32, binary64, binary16 and bfloat16.
  const uint64_t mantissa = d.dtype == LF_DTYPE_F32   ? 0x007FFFFFull
                            : d.dtype == LF_DTYPE_F64 ? 0x000FFFFFFFFFFFFFull
                            : d.dtype == LF_DTYPE_F16 ? 0x03FFull
                                                      : 0x007Full;
  const char *value = (bits & mantissa) != 0 ? "NaN" : (bits & sign) ? "-infinity" : "+infinity";
  char hex[32];
  std::snprintf(hex, sizeof hex, "0x%0*llx", static_cast<int>(2 * elem),
                static_cast<unsigned long long>(bits));
  // The name is NUL-terminated at create; strnlen keeps a damaged record from over-reading.
  return "tensor '" + std::string(d.name, strnlen(d.name, sizeof d.name)) + "' holds " + value +
         " at element " + std::to_string(element) + " (" + ipc::dtype_name(d.dtype) + " bits " +
         hex + ")";
}

}  // namespace

Status Registry::replicate(const AdapterRecord &r, uint32_t s) {
  if (r.placement != static_cast<uint32_t>(ipc::Placement::kDevices)) return {};
  const int primary = static_cast<int>(r.primary_device);
  const std::byte *src = devices_.base(primary) + r.slots[s].data_offset;
  device::Backend &b = devices_.backend();
  for (size_t d = 0; d < devices_.size(); ++d) {
    if (static_cast<int>(d) == primary || !(r.device_mask & (1u << d))) continue;
    std::byte *dst = devices_.base(d) + r.device_offset[d] + uint64_t{s} * r.slot_bytes;
    if (Status st = b.copy_peer(dst, devices_.ordinal(d), src, devices_.ordinal(primary),
                                r.slot_bytes, nullptr);
        !st)
      return st;
  }
  // Every copy is complete before the flip: all ranks switch to the same, whole version.
  for (size_t d = 0; d < devices_.size(); ++d) {
    if (!(r.device_mask & (1u << d))) continue;
    if (Status st = b.synchronize(devices_.ordinal(d), nullptr); !st) return st;
  }
  return {};
}

Result<bool> Registry::event_done(const device::IpcHandle &handle) {
  if (devices_.empty())
    return make_error(LF_E_UNSUPPORTED, "a commit event needs device placement");
  device::Event *event = nullptr;
  for (auto &[h, e] : events_)
    if (std::memcmp(h.bytes, handle.bytes, sizeof h.bytes) == 0) event = &e;
  if (event == nullptr) {
    // Writers keep one event each, so this stays small; drop the oldest beyond a bound.
    if (events_.size() >= 256) {
      devices_.backend().destroy_event(events_.front().second);
      events_.erase(events_.begin());
    }
    Result<device::Event> opened = devices_.backend().open_event(devices_.ordinal(0), handle);
    if (!opened) return opened.error();
    events_.emplace_back(handle, opened.value());
    event = &events_.back().second;
  }
  return devices_.backend().query(*event);
}

Status Registry::check_written(const AdapterRecord &r, const SlotRecord &slot,
                               const CommitRequest &q, uint64_t *checksum) {
  if (!(q.flags & (LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM))) return {};
  const ipc::TensorDesc *descs = arena_.tensors(r);
  std::vector<device::TensorExtent> extents(r.tensor_count);
  for (uint32_t t = 0; t < r.tensor_count; ++t)
    extents[t] = {descs[t].offset, descs[t].nbytes, descs[t].dtype};
  const unsigned checks = (q.flags & LF_COMMIT_CHECK_FINITE ? device::kCheckFinite : 0u) |
                          (q.flags & LF_COMMIT_CHECKSUM ? device::kCheckChecksum : 0u);
  device::SlotCheck found;
  if (r.placement == static_cast<uint32_t>(ipc::Placement::kDevices)) {
    // Checked on the first device, where the writer wrote: only the results come back to the
    // host, never the slot (tens of MiB on every commit).
    const int primary = static_cast<int>(r.primary_device);
    Result<device::SlotCheck> on_device = devices_.backend().check_slot(
        devices_.ordinal(primary), devices_.base(primary) + slot.data_offset, r.slot_bytes,
        extents, checks);
    if (!on_device)
      return make_error(on_device.error().code, "checking the slot on device " +
                                                    std::to_string(devices_.ordinal(primary)) +
                                                    ": " + on_device.error().message);
    found = on_device.value();
  } else {
    // Host memory: the CPU reads the slot in place (the reference the device checks match).
    found = device::check_slot_cpu(static_cast<const std::byte *>(arena_.data_at(slot.data_offset)),
                                   r.slot_bytes, extents, checks);
  }
  *checksum = found.checksum;
  const int64_t bad_tensor = found.tensor, bad_element = found.element;
  const uint64_t bad_bits = found.bits;
  if (bad_tensor >= 0)
    return make_error(LF_E_VALIDATION,
                      non_finite_message(descs[bad_tensor], bad_element, bad_bits));
  if ((q.flags & LF_COMMIT_CHECKSUM) && q.checksum && *q.checksum != *checksum)
    return make_error(LF_E_VALIDATION, "checksum mismatch: the writer computed " +
                                           std::to_string(*q.checksum) + ", the slot holds " +
                                           std::to_string(*checksum) +
                                           " (bytes changed after the writer's checksum?)");
  return {};
}

Result<bool> Registry::copies_done(const CommitRequest &q, uint64_t now_ns) {
  if (!q.event) return true;
  // An unknown lease (a repeated commit, a foreign or ended lease): commit() gives the answer.
  Result<std::pair<uint32_t, uint32_t>> where = find_own_lease(q.lease, q.requester);
  if (!where) return true;
  AdapterRecord &r = arena_.adapter(where->first);
  SlotRecord &slot = r.slots[where->second];
  commit_asked_ns_.try_emplace(q.lease, now_ns);
  Result<bool> done = event_done(*q.event);
  // The writer's liveness is checked whatever the event says: what a query answers for the
  // event of a dead process is undefined in CUDA, and "done" there would flip a slot whose
  // copies never ran. (A writer alive at this check recorded the event itself, so a "done"
  // then is its copies' completion.)
  const bool alive = ipc::process_alive(static_cast<pid_t>(slot.writer_pid), slot.writer_start);
  if (done && done.value() && alive) return true;
  // Still copying, as long as the writer lives: the daemon asks again later and serves other
  // requests meanwhile. (The lease deadline is enforced by commit() and the reaper.)
  if (done && alive) return false;
  end_lease(slot);
  r.aborts.fetch_add(1, std::memory_order_relaxed);
  if (!done) return done.error();
  return make_error(LF_E_LEASE, "the writer died before its copies completed");
}

Result<FlipEvent> Registry::commit(const CommitRequest &q, uint64_t now_ns) {
  if (q.flags & ~(LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM))
    return make_error(LF_E_INVALID_ARGUMENT, "unknown commit flags");
  Result<std::pair<uint32_t, uint32_t>> where = find_own_lease(q.lease, q.requester);
  if (!where) {
    if (std::optional<FlipEvent> made = committed_by(q.lease, q.requester)) return *made;
    return where.error();
  }
  const auto [index, s] = where.value();
  AdapterRecord &r = arena_.adapter(index);
  SlotRecord &slot = r.slots[s];
  if (slot_state(slot) == SlotState::kAbandoned || now_ns > slot.lease_deadline_ns) {
    // Told now, the writer stops writing: its slot can go back.
    end_lease(slot);
    r.aborts.fetch_add(1, std::memory_order_relaxed);
    return make_error(LF_E_LEASE, state_of(r) == AdapterState::kLive
                                      ? "lease " + std::to_string(q.lease) + " expired"
                                      : "the adapter was dropped during the write");
  }
  if (r.last_version >= ipc::kMaxVersion)
    return make_error(LF_E_TOO_LARGE, "adapter '" + std::string(r.name) +
                                          "' used every version number; drop and re-create it");
  if (q.version) {
    // Refused like a failed check: the lease ends (its slot comes back at once) and nothing
    // flips. Above every number ever assigned, not only the active one: after a rollback the
    // numbers above the active version were used, and a number never names two contents.
    std::string refused;
    if (*q.version < ipc::msg::Commit::kMinExplicitVersion ||
        *q.version > ipc::msg::Commit::kMaxExplicitVersion)
      refused = "version " + std::to_string(*q.version) + " is outside 1.." +
                std::to_string(ipc::msg::Commit::kMaxExplicitVersion);
    else if (*q.version <= r.last_version)
      refused = "version " + std::to_string(*q.version) +
                " is not above the newest version of adapter '" + std::string(r.name) + "' (" +
                std::to_string(r.last_version) + ")";
    if (!refused.empty()) {
      end_lease(slot);
      r.aborts.fetch_add(1, std::memory_order_relaxed);
      commit_asked_ns_.erase(q.lease);
      return make_error(LF_E_INVALID_ARGUMENT, refused);
    }
  }
  uint64_t sum = 0;
  // The writer's part ends when it first asks to commit; any time after that waiting on its
  // device event is the event wait (its copies were queued but still running).
  uint64_t asked_ns = now_ns;
  if (auto it = commit_asked_ns_.find(q.lease); it != commit_asked_ns_.end()) {
    asked_ns = std::min(it->second, now_ns);
    commit_asked_ns_.erase(it);
  }
  const uint64_t write_ns = asked_ns > slot.lease_begin_ns ? asked_ns - slot.lease_begin_ns : 0;
  const uint64_t event_wait_ns = now_ns - asked_ns;
  const uint64_t check_start = ipc::monotonic_now_ns();
  Status checked = check_written(r, slot, q, &sum);
  if (checked) checked = replicate(r, s);
  if (!checked) {
    end_lease(slot);
    r.aborts.fetch_add(1, std::memory_order_relaxed);
    return checked.error();
  }
  const uint64_t previous = ipc::active_version(r.active.load(kSeqCst));
  const uint64_t version = q.version ? *q.version : r.last_version + 1;
  r.last_version = version;
  slot.checksum = sum;
  slot.committed_unix_ns = ipc::unix_now_ns();
  // The writer's pid and start stay with committed_lease: they answer a repeated commit.
  slot.committed_lease = q.lease;
  slot.lease_id = slot.lease_deadline_ns = 0;
  slot.word.store(ipc::pack_slot_word(version, SlotState::kCommitted), kSeqCst);
  publish_flip(r, ipc::pack_active(version, s));
  r.commits.fetch_add(1, std::memory_order_relaxed);
  r.write_ns_total.fetch_add(write_ns, std::memory_order_relaxed);
  r.check_ns_total.fetch_add(ipc::monotonic_now_ns() - check_start, std::memory_order_relaxed);
  if (q.event) {
    r.event_waits.fetch_add(1, std::memory_order_relaxed);
    r.event_wait_ns_total.fetch_add(event_wait_ns, std::memory_order_relaxed);
  }
  evict_history(index);
  note_flip_for_restart_copy(index);
  return FlipEvent{r.name, "commit", version, previous, sum, ++r.events_sent};
}

std::optional<FlipEvent> Registry::committed_by(uint64_t lease, const Requester &requester) const {
  if (lease == 0) return std::nullopt;
  for (uint32_t i = 0; i < arena_.max_adapters(); ++i) {
    const AdapterRecord &r = arena_.adapter(i);
    if (state_of(r) != AdapterState::kLive) continue;
    for (uint32_t s = 0; s < r.slot_count; ++s) {
      const SlotRecord &slot = r.slots[s];
      const uint64_t w = slot.word.load(kSeqCst);
      if (ipc::slot_word_state(w) != SlotState::kCommitted || slot.committed_lease != lease ||
          slot.writer_pid != requester.pid || slot.writer_start != requester.start)
        continue;
      FlipEvent made{r.name, "commit", ipc::slot_word_version(w), 0, slot.checksum, 0};
      made.repeated = true;
      return made;
    }
  }
  return std::nullopt;
}

}  // namespace loraflip::daemon
