// Registry: opening, lookups and the write path (create, begin, abort, rollback, drop).
// The commit is in commit.cpp, reclamation in reclaim.cpp, restart in restart.cpp: one class,
// four files.
#include "daemon/registry.hpp"

#include <algorithm>
#include <cstring>

#include "ipc/futex.hpp"
#include "ipc/proc.hpp"
#include "ipc/text.hpp"

#include "daemon/registry_internal.hpp"

namespace loraflip::daemon {

namespace {

// A name for an error message. Lookups by name happen before any name check, so a name may be
// as long as a protocol string (64 KiB): the reply must stay within the client's limits.
std::string shown(const std::string &name) { return ipc::printable(name); }

}  // namespace

Registry::Registry(ipc::Arena arena, DeviceSet devices)
    : arena_(std::move(arena)),
      data_(arena_.data_bytes(), ipc::kSlotAlign),
      pool_(arena_.header().pool_bytes, alignof(ipc::TensorDesc)),
      devices_(std::move(devices)) {}

Result<Registry> Registry::open(ipc::Arena arena, DeviceSet devices) {
  Registry registry(std::move(arena), std::move(devices));
  // The records name devices by their index in the previous daemon's table: keep its ordinals
  // before this daemon's table replaces it.
  const ipc::ArenaHeader &h = registry.arena_.header();
  std::vector<int> old_ordinals;
  for (uint32_t i = 0; i < std::min<uint32_t>(h.device_count, ipc::kMaxDevices); ++i)
    old_ordinals.push_back(h.devices[i].ordinal);
  registry.devices_.publish(registry.arena_.header());
  if (Status s = registry.rebuild(old_ordinals); !s) return s.error();
  return registry;
}

std::optional<uint32_t> Registry::find(std::string_view name) const {
  for (uint32_t i = 0; i < arena_.max_adapters(); ++i) {
    const AdapterRecord &r = arena_.adapter(i);
    if (state_of(r) == AdapterState::kLive && name == r.name) return i;
  }
  return std::nullopt;
}

std::vector<uint32_t> Registry::live_adapters() const {
  std::vector<uint32_t> out;
  for (uint32_t i = 0; i < arena_.max_adapters(); ++i)
    if (state_of(arena_.adapter(i)) == AdapterState::kLive) out.push_back(i);
  return out;
}

Status Registry::create(const CreateRequest &q) {
  if (Status s = ipc::check_adapter_name(q.name); !s) return s;
  if (find(q.name)) return make_error(LF_E_EXISTS, "adapter '" + q.name + "' exists already");
  const uint32_t history =
      q.history < 0 ? arena_.header().default_history : static_cast<uint32_t>(q.history);
  const uint32_t slots = q.slots == 0 ? history + 2 : q.slots;
  if (slots > ipc::kMaxSlots || history + 2 > slots)
    return make_error(LF_E_INVALID_ARGUMENT,
                      "an adapter needs history + 2 slots (one active, one to write) and at "
                      "most " + std::to_string(ipc::kMaxSlots) + "; got " +
                          std::to_string(slots) + " slots for history " + std::to_string(history));
  if (q.rank > 65536) return make_error(LF_E_INVALID_ARGUMENT, "LoRA rank is over 65536");
  if (q.metadata.size() > 65536 || q.target_modules.size() > 65536)
    return make_error(LF_E_TOO_LARGE, "metadata or target modules longer than 64 KiB");

  Result<std::vector<int>> device_list = device_indexes(q.devices);
  if (!device_list) return device_list.error();
  const bool on_devices = !device_list->empty();

  Result<ipc::SlotLayout> layout = ipc::plan_slot(q.tensors, arena_.data_bytes());
  if (!layout) return layout.error();
  const uint64_t slot_bytes = layout->slot_bytes;
  if (!on_devices && slot_bytes > arena_.data_bytes() / slots)
    return make_error(LF_E_ARENA_FULL, std::to_string(slots) + " slots of " +
                                           std::to_string(slot_bytes) +
                                           " bytes do not fit the data arena at all");

  uint32_t index = arena_.max_adapters();
  for (uint32_t i = 0; i < arena_.max_adapters(); ++i) {
    if (state_of(arena_.adapter(i)) == AdapterState::kFree) {
      index = i;
      break;
    }
  }
  if (index == arena_.max_adapters())
    return make_error(LF_E_TABLE_FULL, [&] {
      // `list` does not show dropped adapters, yet a pin or a lease that still names one keeps
      // its record (reap frees it once none does): say how many, or the table looks roomy.
      uint32_t dropped = 0;
      for (uint32_t i = 0; i < arena_.max_adapters(); ++i)
        dropped += state_of(arena_.adapter(i)) == AdapterState::kDropping;
      return "the adapter table is full (" + std::to_string(arena_.max_adapters()) +
             " records, " + std::to_string(dropped) +
             " of them held by dropped adapters that a pin or a write lease still names; each "
             "is freed once none does); drop one or restart with more --max-adapters";
    }());

  const uint64_t tensors_bytes = q.tensors.size() * sizeof(ipc::TensorDesc);
  const uint64_t pool_bytes = tensors_bytes + (q.target_modules.size() + 1) + (q.metadata.size() + 1);
  // Whatever is taken below goes back on an early return (until taken.keep()).
  RangeReservation taken;
  std::optional<uint64_t> pool_offset = taken.take(pool_, pool_bytes);
  if (!pool_offset)
    return make_error(LF_E_ARENA_FULL, "the descriptor pool has no room for " +
                                           std::to_string(q.tensors.size()) + " tensors");
  // Host: one range of the data segment. Devices: one range in each device arena.
  std::optional<uint64_t> data_offset = on_devices ? std::optional<uint64_t>(0) : taken.take(data_, slot_bytes * slots);
  uint64_t device_offset[ipc::kMaxDevices] = {};
  uint32_t device_mask = 0;
  for (size_t k = 0; k < device_list->size() && data_offset; ++k) {
    const int d = device_list.value()[k];
    std::optional<uint64_t> at = taken.take(devices_.allocator(d), slot_bytes * slots);
    if (!at)
      return make_error(LF_E_ARENA_FULL, "device " + std::to_string(devices_.ordinal(d)) +
                                             " has " + std::to_string(devices_.allocator(d).largest_free()) +
                                             " contiguous bytes free; the adapter needs " +
                                             std::to_string(slot_bytes * slots));
    device_offset[d] = *at;
    device_mask |= 1u << d;
  }
  if (!data_offset)
    return make_error(LF_E_ARENA_FULL, "the data arena has " +
                                           std::to_string(data_.largest_free()) +
                                           " contiguous bytes free; the adapter needs " +
                                           std::to_string(slot_bytes * slots));
  // The first device listed is where writers write; it comes first in the slot offsets.
  const uint64_t slots_base = on_devices ? device_offset[device_list->front()] : *data_offset;
  // Device memory dies with the daemon; a host copy of the active version outlives it. Without
  // room for one the adapter is still served, but a restart drops it (info says so).
  std::optional<uint64_t> restart_copy =
      on_devices ? data_.allocate(slot_bytes) : std::optional<uint64_t>();
  // Nothing fails from here on: the record below names all that was taken.
  taken.keep();

  // Fill the record while it is kFree: no reader looks at it until the state store below.
  AdapterRecord &r = arena_.adapter(index);
  std::memset(r.name, 0, sizeof r.name);
  std::memcpy(r.name, q.name.data(), q.name.size());
  r.slot_count = slots;
  r.tensor_count = static_cast<uint32_t>(q.tensors.size());
  r.history_depth = history;
  r.placement = static_cast<uint32_t>(on_devices ? ipc::Placement::kDevices : ipc::Placement::kHost);
  r.device_mask = device_mask;
  std::copy(std::begin(device_offset), std::end(device_offset), r.device_offset);
  r.device_epoch.store(on_devices ? devices_.epoch() : 0, kSeqCst);
  r.restart_copy_offset = restart_copy.value_or(0);
  r.restart_copy_bytes = restart_copy ? slot_bytes : 0;
  r.restart_copy_version = 0;
  r.restart_copy_checksum = 0;
  r.restart_copy_committed_unix_ns = 0;
  r.primary_device = on_devices ? static_cast<uint32_t>(device_list->front()) : 0;
  r.slot_bytes = slot_bytes;
  r.data_offset = *data_offset;
  r.tensors_offset = *pool_offset;
  r.pool_bytes = pool_bytes;
  r.last_version = 0;
  r.created_unix_ns = ipc::unix_now_ns();
  auto *descs = reinterpret_cast<ipc::TensorDesc *>(arena_.pool_at(*pool_offset));
  for (size_t t = 0; t < q.tensors.size(); ++t) {
    ipc::TensorDesc d{};
    std::memcpy(d.name, q.tensors[t].name.data(), q.tensors[t].name.size());
    d.dtype = q.tensors[t].dtype;
    d.ndim = static_cast<int32_t>(q.tensors[t].shape.size());
    std::copy(q.tensors[t].shape.begin(), q.tensors[t].shape.end(), d.shape);
    d.offset = layout->offsets[t];
    d.nbytes = ipc::tensor_bytes(d.dtype, q.tensors[t].shape).value();
    descs[t] = d;
  }
  uint64_t cursor = *pool_offset + tensors_bytes;
  auto put_string = [&](const std::string &s) {
    std::memcpy(arena_.pool_at(cursor), s.c_str(), s.size() + 1);
    const uint64_t at = cursor;
    cursor += s.size() + 1;
    return at;
  };
  r.lora = ipc::LoraConfig{};
  r.lora.rank = q.rank;
  r.lora.alpha = q.alpha;
  r.lora.use_rslora = q.use_rslora ? 1 : 0;
  r.lora.target_modules_offset = put_string(q.target_modules);
  r.lora.metadata_offset = put_string(q.metadata);
  r.commits.store(0, std::memory_order_relaxed);
  r.write_ns_total.store(0, std::memory_order_relaxed);
  r.check_ns_total.store(0, std::memory_order_relaxed);
  r.event_waits.store(0, std::memory_order_relaxed);
  r.event_wait_ns_total.store(0, std::memory_order_relaxed);
  r.events_sent = 0;
  r.aborts.store(0, std::memory_order_relaxed);
  r.rollbacks.store(0, std::memory_order_relaxed);
  for (uint32_t s = 0; s < ipc::kMaxSlots; ++s) {
    SlotRecord &slot = r.slots[s];
    slot.data_offset = s < slots ? slots_base + uint64_t{s} * slot_bytes : 0;
    slot.checksum = 0;
    slot.committed_unix_ns = 0;
    slot.lease_id = slot.writer_pid = slot.writer_start = slot.lease_deadline_ns = 0;
    slot.committed_lease = slot.begin_token = 0;
    slot.word.store(ipc::pack_slot_word(0, SlotState::kFree), kSeqCst);
  }
  r.active.store(0, kSeqCst);
  r.incarnation.fetch_add(1, kSeqCst);
  r.state.store(static_cast<uint32_t>(AdapterState::kLive), kSeqCst);
  return {};
}

void Registry::publish_flip(AdapterRecord &record, uint64_t word) {
  record.active.store(word, kSeqCst);
  ipc::ArenaHeader &h = arena_.header();
  h.flips.fetch_add(1, std::memory_order_relaxed);
  h.flip_seq.fetch_add(1, kSeqCst);
  ipc::futex_wake_all(&h.flip_seq);
}

Result<FlipEvent> Registry::drop(const std::string &name) {
  std::optional<uint32_t> index = find(name);
  if (!index) return make_error(LF_E_NOT_FOUND, "no adapter '" + shown(name) + "'");
  AdapterRecord &r = arena_.adapter(*index);
  FlipEvent event{name, "drop", 0, ipc::active_version(r.active.load(kSeqCst)), 0,
                  ++r.events_sent};
  // kDropping before the flip to 0: a reader that sees the active word go to 0 and checks the
  // state finds the adapter gone (LF_E_STALE) rather than merely empty.
  r.state.store(static_cast<uint32_t>(AdapterState::kDropping), kSeqCst);
  publish_flip(r, 0);
  // Leases of a dropped adapter cannot commit; their slots stay reserved (kAbandoned) until
  // the writer answers or exits, so its late copies land in memory nobody else was given.
  for (uint32_t s = 0; s < r.slot_count; ++s) {
    if (slot_state(r.slots[s]) == SlotState::kWriting)
      r.slots[s].word.store(ipc::pack_slot_word(0, SlotState::kAbandoned), kSeqCst);
  }
  return event;
}

Result<Lease> Registry::begin_write(const BeginRequest &q, uint64_t now_ns) {
  std::optional<uint32_t> index = find(q.name);
  if (!index) return make_error(LF_E_NOT_FOUND, "no adapter '" + shown(q.name) + "'");
  if (q.writer.pid == 0 || q.writer.pid > INT32_MAX || q.writer.start == 0)
    return make_error(LF_E_INVALID_ARGUMENT, "begin_write needs the writer's process");
  if (q.lease_ms == 0 || q.lease_ms > 24ull * 3600 * 1000)
    return make_error(LF_E_INVALID_ARGUMENT, "a lease lasts 1 ms to 24 h");
  AdapterRecord &r = arena_.adapter(*index);
  if (q.token != 0) {
    // The same begin asked again (its reply was lost): the lease it made, if it still runs.
    // An expired one is given back: its writer says it never learned it, so nothing of that
    // process writes there.
    for (uint32_t s = 0; s < r.slot_count; ++s) {
      SlotRecord &slot = r.slots[s];
      const SlotState st = slot_state(slot);
      if ((st != SlotState::kWriting && st != SlotState::kAbandoned) ||
          slot.begin_token != q.token || slot.writer_pid != q.writer.pid ||
          slot.writer_start != q.writer.start)
        continue;
      if (st == SlotState::kWriting && now_ns <= slot.lease_deadline_ns)
        return Lease{slot.lease_id, *index, r.incarnation.load(kSeqCst), s, slot.data_offset,
                     r.slot_bytes};
      end_lease(slot);
      r.aborts.fetch_add(1, std::memory_order_relaxed);
    }
  }
  uint32_t free_but_pinned = 0;
  for (uint32_t s = 0; s < r.slot_count; ++s) {
    SlotRecord &slot = r.slots[s];
    if (slot_state(slot) != SlotState::kFree) continue;
    // The slot left the active word and the history before this scan (both seq_cst stores),
    // so a reader that pins it after the scan fails its second look and lets go.
    if (slot_pinned(*index, s)) {
      ++free_but_pinned;
      continue;
    }
    ipc::ArenaHeader &h = arena_.header();
    slot.lease_id = ++h.last_lease_id;
    slot.writer_pid = q.writer.pid;
    slot.writer_start = q.writer.start;
    slot.committed_lease = 0;
    slot.begin_token = q.token;
    slot.lease_deadline_ns = now_ns + q.lease_ms * 1000000ULL;
    slot.lease_begin_ns = now_ns;
    slot.word.store(ipc::pack_slot_word(0, SlotState::kWriting), kSeqCst);
    return Lease{slot.lease_id, *index, r.incarnation.load(kSeqCst), s, slot.data_offset,
                 r.slot_bytes};
  }
  // The same counts as info's census (pinned: slots of any state that a pin names), plus the
  // free slots that only a pin holds back.
  const SlotCensus seen = census(*index);
  return make_error(LF_E_NO_FREE_SLOT,
                    "adapter '" + q.name + "' has no free slot: " + std::to_string(seen.committed) +
                        " committed (active or kept), " + std::to_string(seen.writing) +
                        " being written, " + std::to_string(seen.abandoned) +
                        " held by writers whose lease ended, " + std::to_string(free_but_pinned) +
                        " free but pinned by readers (" + std::to_string(seen.pinned) +
                        " pinned in all); retry later");
}

Result<std::pair<uint32_t, uint32_t>> Registry::find_lease(uint64_t lease) const {
  if (lease != 0) {
    for (uint32_t i = 0; i < arena_.max_adapters(); ++i) {
      const AdapterRecord &r = arena_.adapter(i);
      if (state_of(r) == AdapterState::kFree) continue;
      for (uint32_t s = 0; s < r.slot_count; ++s) {
        const SlotState st = slot_state(r.slots[s]);
        if ((st == SlotState::kWriting || st == SlotState::kAbandoned) &&
            r.slots[s].lease_id == lease)
          return std::pair{i, s};
      }
    }
  }
  return make_error(LF_E_LEASE, "lease " + std::to_string(lease) + " is unknown or already ended");
}

Result<std::pair<uint32_t, uint32_t>> Registry::find_own_lease(uint64_t lease,
                                                               const Requester &requester) const {
  Result<std::pair<uint32_t, uint32_t>> where = find_lease(lease);
  if (!where) return where;
  const SlotRecord &slot = arena_.adapter(where->first).slots[where->second];
  if (slot.writer_pid != requester.pid || slot.writer_start != requester.start)
    return make_error(LF_E_LEASE, "lease " + std::to_string(lease) +
                                      " belongs to another process (pid " +
                                      std::to_string(slot.writer_pid) +
                                      "); only the process that began a write may commit or "
                                      "abort it");
  return where;
}

void Registry::end_lease(SlotRecord &slot) {
  commit_asked_ns_.erase(slot.lease_id);
  slot.lease_id = slot.writer_pid = slot.writer_start = slot.lease_deadline_ns = 0;
  slot.committed_lease = slot.begin_token = 0;
  slot.lease_begin_ns = 0;
  slot.word.store(ipc::pack_slot_word(0, SlotState::kFree), kSeqCst);
}

Result<std::vector<int>> Registry::device_indexes(const std::vector<int> &ordinals) const {
  std::vector<int> indexes;
  for (int ordinal : ordinals) {
    if (devices_.empty())
      return make_error(LF_E_UNSUPPORTED, "device placement is not available: " +
                                              devices_.unavailable_reason());
    const int index = devices_.index_of(ordinal);
    if (index < 0)
      return make_error(LF_E_NOT_FOUND, "this daemon does not serve device " +
                                            std::to_string(ordinal) + " (see --devices)");
    if (std::find(indexes.begin(), indexes.end(), index) != indexes.end())
      return make_error(LF_E_INVALID_ARGUMENT, "device " + std::to_string(ordinal) + " listed twice");
    indexes.push_back(index);
  }
  return indexes;
}

Result<uint32_t> Registry::claim_reader(const Requester &reader) {
  if (reader.pid == 0 || reader.pid > INT32_MAX || reader.start == 0)
    return make_error(LF_E_INVALID_ARGUMENT, "a reader entry needs the reader's process");
  for (uint32_t i = 0; i < arena_.max_readers(); ++i) {
    ipc::ReaderEntry &e = arena_.reader(i);
    uint64_t expected = 0;
    if (e.owner_pid.load(kSeqCst) != 0 ||
        !e.owner_pid.compare_exchange_strong(expected, reader.pid, kSeqCst))
      continue;
    // A previous owner cleared every cell before it let go (release, or the reaper).
    e.owner_start.store(reader.start, kSeqCst);
    return i;
  }
  return make_error(LF_E_TABLE_FULL, "the reader table is full (" +
                                         std::to_string(arena_.max_readers()) +
                                         " readers); close readers or restart the daemon with "
                                         "a larger --max-readers");
}

Status Registry::abort(uint64_t lease, const Requester &requester) {
  Result<std::pair<uint32_t, uint32_t>> where = find_own_lease(lease, requester);
  if (!where) return where.error();
  AdapterRecord &r = arena_.adapter(where->first);
  end_lease(r.slots[where->second]);
  r.aborts.fetch_add(1, std::memory_order_relaxed);
  return {};
}

void Registry::evict_history(uint32_t adapter) {
  AdapterRecord &r = arena_.adapter(adapter);
  const uint32_t active = ipc::active_slot(r.active.load(kSeqCst));
  std::vector<std::pair<uint64_t, uint32_t>> kept;  // (version, slot), non-active committed
  for (uint32_t s = 0; s < r.slot_count; ++s) {
    const uint64_t w = r.slots[s].word.load(kSeqCst);
    if (s != active && ipc::slot_word_state(w) == SlotState::kCommitted)
      kept.emplace_back(ipc::slot_word_version(w), s);
  }
  std::sort(kept.begin(), kept.end(), std::greater<>());
  for (size_t k = r.history_depth; k < kept.size(); ++k)
    r.slots[kept[k].second].word.store(ipc::pack_slot_word(0, SlotState::kFree), kSeqCst);
}

Result<FlipEvent> Registry::rollback(const std::string &name, uint64_t version) {
  std::optional<uint32_t> index = find(name);
  if (!index) return make_error(LF_E_NOT_FOUND, "no adapter '" + shown(name) + "'");
  AdapterRecord &r = arena_.adapter(*index);
  const uint64_t current = r.active.load(kSeqCst);
  for (uint32_t s = 0; s < r.slot_count; ++s) {
    const uint64_t w = r.slots[s].word.load(kSeqCst);
    if (ipc::slot_word_state(w) != SlotState::kCommitted || ipc::slot_word_version(w) != version)
      continue;
    if (ipc::active_version(current) != version) {
      publish_flip(r, ipc::pack_active(version, s));
      r.rollbacks.fetch_add(1, std::memory_order_relaxed);
      evict_history(*index);
      note_flip_for_restart_copy(*index);
    }
    return FlipEvent{name, "rollback", version, ipc::active_version(current),
                     r.slots[s].checksum, ++r.events_sent};
  }
  return make_error(LF_E_NO_VERSION, "version " + std::to_string(version) + " of '" + name +
                                         "' is not kept any more (kept: the active version and "
                                         "the last " + std::to_string(r.history_depth) + ")");
}

SlotCensus Registry::census(uint32_t adapter) const {
  SlotCensus c;
  const AdapterRecord &r = arena_.adapter(adapter);
  for (uint32_t s = 0; s < r.slot_count; ++s) {
    switch (slot_state(r.slots[s])) {
      case SlotState::kFree: ++c.free; break;
      case SlotState::kWriting: ++c.writing; break;
      case SlotState::kCommitted: ++c.committed; break;
      case SlotState::kAbandoned: ++c.abandoned; break;
    }
    if (slot_pinned(adapter, s)) ++c.pinned;
  }
  return c;
}

}  // namespace loraflip::daemon
