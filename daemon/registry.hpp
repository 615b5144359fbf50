// The daemon's state machine over the arena: adapters, slots, leases, flips and reclamation.
// Single-threaded by design (the daemon's event loop calls it); readers never call it, they
// only load what it stores. No method waits on anything a client holds.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "daemon/allocator.hpp"
#include "daemon/devices.hpp"
#include "ipc/arena.hpp"
#include "ipc/result.hpp"
#include "ipc/schema.hpp"

namespace loraflip::daemon {

struct CreateRequest {
  std::string name;
  std::vector<ipc::TensorSpec> tensors;
  uint32_t rank = 0;
  double alpha = 0;
  bool use_rslora = false;
  std::string target_modules;  // comma-separated
  std::string metadata;
  uint32_t slots = 0;     // 0: history + 2
  int32_t history = -1;   // -1: the arena default
  std::vector<int> devices;  // device ordinals; empty: host memory. The first is written to.
};

// A process as the daemon knows it: its pid in the daemon's pid namespace (from the kernel's
// peer credentials, never from a message) and its start time in the daemon's /proc, so that a
// reused pid is another process.
struct Requester {
  uint64_t pid = 0;
  uint64_t start = 0;
};

struct BeginRequest {
  std::string name;
  uint64_t lease_ms = 30000;
  Requester writer;  // the process that sent begin_write: the lease is its alone
  uint64_t token = 0;  // the writer's number for this begin (0: none); see msg::BeginWrite
};

struct Lease {
  uint64_t id = 0;
  uint32_t adapter = 0;
  uint64_t incarnation = 0;
  uint32_t slot = 0;
  uint64_t data_offset = 0;
  uint64_t slot_bytes = 0;
};

struct CommitRequest {
  uint64_t lease = 0;
  uint32_t flags = 0;                     // LF_COMMIT_*
  std::optional<uint64_t> checksum;       // the writer's, compared when LF_COMMIT_CHECKSUM
  // An interprocess event the writer recorded after its device copies: the commit waits for
  // it (without blocking the daemon) before checking and flipping.
  std::optional<device::IpcHandle> event;
  // The process that sent the commit: only the lease's writer may commit it.
  Requester requester;
  // The version number the writer asks for (msg::Commit::version, its limits checked by
  // commit()); absent: the next one.
  std::optional<uint64_t> version;
};

// What a flip changed, for the events socket and the log.
struct FlipEvent {
  std::string adapter;
  std::string kind;  // "commit", "rollback", "drop"
  uint64_t version = 0;
  uint64_t previous = 0;
  uint64_t checksum = 0;
  // Numbers this adapter's events from 1 (AdapterRecord::events_sent), so a subscriber can
  // tell when the events socket dropped some for it: ZeroMQ's PUB drops silently for a
  // subscriber that lags.
  uint64_t seq = 0;
  // A commit asked again for a lease it already committed (its reply was lost): the version
  // it made then; nothing flipped now, and no event is sent.
  bool repeated = false;
};

struct ReapReport {
  uint64_t dead_readers = 0;
  uint64_t pins_cleared = 0;
  uint64_t dead_writers = 0;
  uint64_t expired_leases = 0;
  uint64_t adapters_freed = 0;
  bool any() const {
    return dead_readers || dead_writers || expired_leases || adapters_freed;
  }
  ReapReport &operator+=(const ReapReport &o) {
    dead_readers += o.dead_readers;
    pins_cleared += o.pins_cleared;
    dead_writers += o.dead_writers;
    expired_leases += o.expired_leases;
    adapters_freed += o.adapters_freed;
    return *this;
  }
};

struct SlotCensus {
  uint32_t free = 0, writing = 0, committed = 0, abandoned = 0, pinned = 0;
};

class Registry {
 public:
  // Takes over the arena; rebuilds the allocators from the adapter records (after a restart the
  // records are the only truth). Fails when a record is inconsistent with the arena.
  static Result<Registry> open(ipc::Arena arena,
                               DeviceSet devices = DeviceSet::none("this daemon serves no devices"));

  Status create(const CreateRequest &request);
  // Stops new acquires at once; memory returns in reap() once no pin or lease names it.
  Result<FlipEvent> drop(const std::string &name);
  Result<Lease> begin_write(const BeginRequest &request, uint64_t now_ns);
  // Whether the copies behind a commit's event (if any) are complete: false while they run
  // and the writer lives (ask again later); an error, with the lease ended, once the writer
  // died first. commit() expects true. The time from the first ask to commit() is counted as
  // the adapter's event wait.
  Result<bool> copies_done(const CommitRequest &request, uint64_t now_ns);
  // Flips to the written slot. Idempotent per lease: a commit asked again after it succeeded
  // (the writer lost the reply: a timeout, a daemon restart) answers the version it made, with
  // FlipEvent::repeated set, as long as that version is still kept.
  Result<FlipEvent> commit(const CommitRequest &request, uint64_t now_ns);
  // Ends the lease; only its writer may.
  Status abort(uint64_t lease, const Requester &requester);
  // Claims a free reader-table entry for `reader` (LF_E_TABLE_FULL when none is free); the
  // reader releases it itself. The entry names the process as the daemon sees it, so the reaper
  // finds it gone even when it lived in another pid namespace.
  Result<uint32_t> claim_reader(const Requester &reader);
  Result<FlipEvent> rollback(const std::string &name, uint64_t version);
  // Clears dead readers' pins, ends dead or expired writers' leases, frees dropped adapters.
  ReapReport reap(uint64_t now_ns);
  // Everything reap() reclaimed since this daemon started (not kept across restarts).
  const ReapReport &reclaimed_total() const { return reclaimed_total_; }

  // Index of the live adapter named `name`.
  std::optional<uint32_t> find(std::string_view name) const;
  std::vector<uint32_t> live_adapters() const;
  SlotCensus census(uint32_t adapter) const;
  uint32_t live_readers() const;
  uint32_t pins_held() const;
  // How long the oldest pin now held has been held, as the reaper saw it: pins are sampled at
  // each reap (every --reap-interval-ms), never on the readers' path.
  uint64_t oldest_pin_age_ns(uint64_t now_ns) const;
  const ipc::Arena &arena() const { return arena_; }
  const RangeAllocator &data_allocator() const { return data_; }
  const RangeAllocator &pool_allocator() const { return pool_; }
  const DeviceSet &devices() const { return devices_; }
  // Brings the host copies of device-placed adapters up to their active versions (after
  // flips). Called by the event loop after it has sent its replies: the copy holds the loop
  // for about slot_bytes over the device-to-host bandwidth, but never a commit's reply. The
  // failures, as messages for the log (the adapter is then served, but not kept over a restart).
  std::vector<std::string> update_restart_copies();
  bool restart_copies_due() const { return !restart_copies_due_.empty(); }

  // What a restart did with device-placed adapters, whose device memory died with the
  // previous daemon: put back on the devices from their host copies, or dropped (and why).
  struct RestartNote {
    std::string adapter;
    bool restored = false;
    uint64_t version = 0;
    std::string why;  // when dropped
  };
  const std::vector<RestartNote> &device_restarts() const { return device_restarts_; }

 private:
  Registry(ipc::Arena arena, DeviceSet devices);
  // `old_ordinals`: the device table of the daemon that made the records (index -> ordinal).
  Status rebuild(const std::vector<int> &old_ordinals);
  // Puts a device-placed adapter of a previous daemon back on this daemon's devices from its
  // host copy: the active version in slot 0, every other slot free. An error says why not.
  Status restore_from_copy(ipc::AdapterRecord &record, const std::vector<int> &old_ordinals);
  void note_flip_for_restart_copy(uint32_t adapter);
  // Finds the slot of a lease; an error when the lease is unknown.
  Result<std::pair<uint32_t, uint32_t>> find_lease(uint64_t lease) const;
  // A committed slot that `requester`'s lease made, as a repeated commit's answer.
  std::optional<FlipEvent> committed_by(uint64_t lease, const Requester &requester) const;
  // find_lease, and the lease must be `requester`'s.
  Result<std::pair<uint32_t, uint32_t>> find_own_lease(uint64_t lease,
                                                       const Requester &requester) const;
  bool slot_pinned(uint32_t adapter, uint32_t slot) const;
  bool adapter_pinned(uint32_t adapter) const;
  // Frees committed, non-active slots beyond the adapter's history depth (newest kept).
  void evict_history(uint32_t adapter);
  void publish_flip(ipc::AdapterRecord &record, uint64_t word);
  void end_lease(ipc::SlotRecord &slot);
  // The commit checks the request asks for: in place in host memory (CPU), on the first
  // device for device placements (Backend::check_slot). *checksum gets the slot's checksum
  // when LF_COMMIT_CHECKSUM is asked.
  Status check_written(const ipc::AdapterRecord &record, const ipc::SlotRecord &slot,
                       const CommitRequest &request, uint64_t *checksum);
  // Copies the written slot from the first device to the others, before the flip.
  Status replicate(const ipc::AdapterRecord &record, uint32_t slot);
  Result<bool> event_done(const device::IpcHandle &handle);
  void release_memory(ipc::AdapterRecord &record);
  void note_pin_ages(uint64_t now_ns);
  Result<std::vector<int>> device_indexes(const std::vector<int> &ordinals) const;

  ipc::Arena arena_;
  RangeAllocator data_;
  RangeAllocator pool_;
  DeviceSet devices_;
  std::vector<std::pair<device::IpcHandle, device::Event>> events_;  // opened once each
  std::vector<RestartNote> device_restarts_;
  std::vector<uint32_t> restart_copies_due_;  // adapters flipped since their last host copy
  struct PinSeen {
    uint64_t pin = 0;       // the cell's value when first seen
    uint64_t since_ns = 0;  // CLOCK_MONOTONIC of that first sighting
  };
  std::vector<PinSeen> pin_seen_;  // per reader-table cell
  // Commits waiting on their writer's event: lease id -> CLOCK_MONOTONIC of the first ask.
  std::unordered_map<uint64_t, uint64_t> commit_asked_ns_;
  ReapReport reclaimed_total_;
};

}  // namespace loraflip::daemon
