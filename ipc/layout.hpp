// Every struct that lives in loraflip's shared memory, with the invariants that govern it.
//
// Two POSIX shared-memory segments make one arena:
//   control  ArenaHeader, the adapter table, the reader table, and the descriptor pool
//            (tensor descriptors and config strings). Readers map it read-write because they
//            write their own pin cells; nobody else's.
//   data     the slots that hold tensor bytes. Readers map it read-only.
//
// Rules for everything in this file: standard layout, trivially copyable, offsets instead of
// pointers (each process maps the segments at its own address), and only std::atomic types that
// are always lock-free, so that no process can ever be stuck behind another's lock. Fields
// marked "daemon" are written only by the daemon; readers and writers only load them.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "loraflip.h"

namespace loraflip::ipc {

inline constexpr uint64_t kArenaMagic = 0x50494C46414C524CULL;  // "LRLAFLIP" little-endian
// Bump whenever the meaning of a field changes without its size or position changing (the
// layout hash below catches the rest).
inline constexpr uint32_t kFormatVersion = 2;

inline constexpr uint32_t kMaxAdapterName = LF_MAX_ADAPTER_NAME;
inline constexpr uint32_t kMaxTensorName = LF_MAX_TENSOR_NAME;
inline constexpr uint32_t kMaxDims = LF_MAX_DIMS;
inline constexpr uint32_t kPinCells = LF_MAX_PINS;
// Slot indices travel in 8 bits of the active word and pin cells.
inline constexpr uint32_t kMaxSlots = 64;
// Adapter indices travel in 16 bits of a pin cell.
inline constexpr uint32_t kMaxAdapters = 65535;
// Device arenas (one per GPU the daemon serves).
inline constexpr uint32_t kMaxDevices = 8;
// Versions travel in 40 bits: 10^12 versions, 30 years at 1000 flips per second.
inline constexpr uint64_t kMaxVersion = (uint64_t{1} << 40) - 1;
// Tensors start on 256-byte boundaries inside a slot: cache lines on the CPU, and the
// alignment cudaMalloc gives, so that vectorized kernels can read any tensor.
inline constexpr uint64_t kTensorAlign = 256;
// Slots start on page boundaries so that a slot can be mapped or protected on its own.
inline constexpr uint64_t kSlotAlign = 4096;

// ---- Packed words ----
// active word: version << 8 | slot. 0 means "no version yet". A single 64-bit store flips it;
// since versions never repeat, an old word can never equal a new one (no ABA).
constexpr uint64_t pack_active(uint64_t version, uint32_t slot) { return version << 8 | slot; }
constexpr uint64_t active_version(uint64_t word) { return word >> 8; }
constexpr uint32_t active_slot(uint64_t word) { return static_cast<uint32_t>(word & 0xff); }

// pin cell: active word << 16 | adapter index. 0 means "empty" (version 0 is never pinned).
constexpr uint64_t pack_pin(uint64_t active_word, uint32_t adapter) {
  return active_word << 16 | adapter;
}
constexpr uint32_t pin_adapter(uint64_t pin) { return static_cast<uint32_t>(pin & 0xffff); }
constexpr uint32_t pin_slot(uint64_t pin) { return active_slot(pin >> 16); }
constexpr uint64_t pin_version(uint64_t pin) { return active_version(pin >> 16); }

// slot word: version << 8 | state. The version is the one the slot holds while COMMITTED.
enum class SlotState : uint32_t {
  kFree = 0,       // holds nothing readable; may be lent to a writer once no pin names it
  kWriting = 1,    // lent to a writer under a lease
  kCommitted = 2,  // holds `version`, readable: the active version or a kept one
  kAbandoned = 3,  // the lease expired while its writer lives: kept away from other writers
                   // until that writer answers or exits, so late copies land nowhere
};
constexpr uint64_t pack_slot_word(uint64_t version, SlotState state) {
  return version << 8 | static_cast<uint64_t>(state);
}
constexpr uint64_t slot_word_version(uint64_t word) { return word >> 8; }
constexpr SlotState slot_word_state(uint64_t word) { return static_cast<SlotState>(word & 0xff); }

enum class AdapterState : uint32_t {
  kFree = 0,      // the record is unused
  kLive = 1,      // found by name, written and read
  kDropping = 2,  // no longer found by name; its memory returns when no pin names it
};

enum class Placement : uint32_t {
  kHost = 0,     // slots in the data segment
  kDevices = 1,  // slots in the device arenas of AdapterRecord::device_mask; the first is where
                 // writers write, the others receive copies before the flip
};

// ---- Descriptor pool entries ----
struct TensorDesc {
  char name[kMaxTensorName + 1];  // NUL-terminated; set at create, immutable after
  int32_t dtype;                  // LF_DTYPE_*
  int32_t ndim;
  int64_t shape[kMaxDims];
  uint64_t offset;  // from the start of the slot; a multiple of kTensorAlign
  uint64_t nbytes;
};

struct SlotRecord {
  // daemon, seq_cst. Readers load it to pin a kept (non-active) version and load it again
  // after publishing the pin; the daemon stores kFree before it scans for pins.
  std::atomic<uint64_t> word;
  uint64_t data_offset;     // daemon, at create; immutable while the adapter lives
  uint64_t checksum;        // daemon, before the flip that publishes this slot (0: not computed)
  uint64_t committed_unix_ns;  // daemon, before the flip
  // The lease, while kWriting or kAbandoned (daemon). Kept here rather than in the daemon's
  // memory so that a restarted daemon still knows who writes where: the writer can commit
  // across a daemon restart, and a slot of a writer that died meanwhile still comes back.
  uint64_t lease_id;
  uint64_t writer_pid;
  uint64_t writer_start;
  uint64_t lease_deadline_ns;  // CLOCK_MONOTONIC, which all processes of one boot share
  uint64_t lease_begin_ns;     // CLOCK_MONOTONIC at begin_write: commit latency is measured from it
  // The lease whose commit made this slot's version (daemon, before the flip; kept with
  // writer_pid and writer_start while the slot is kCommitted), so that a writer that lost the
  // commit's reply can ask again and learn the version it made.
  uint64_t committed_lease;
  // The writer's token of the begin_write that made the lease (daemon, with the lease; 0: none):
  // the same begin asked again after a lost reply gets the same lease back.
  uint64_t begin_token;
};

struct LoraConfig {
  uint32_t rank;  // 0: not a LoRA adapter (a plain named tensor set)
  uint32_t use_rslora;
  double alpha;
  uint64_t target_modules_offset;  // pool offset of a NUL-terminated string, 0 if none
  uint64_t metadata_offset;        // pool offset of a NUL-terminated string, 0 if none
};

// One adapter. Everything but the atomics is written by the daemon while the record is kFree
// (before the release store of `state`), and is immutable while it is kLive or kDropping.
struct alignas(64) AdapterRecord {
  // daemon, seq_cst. The one word a flip stores.
  std::atomic<uint64_t> active;
  // daemon, seq_cst. Readers check it after pinning, so a pin of a dropped adapter fails.
  std::atomic<uint32_t> state;
  uint32_t slot_count;
  // daemon. Bumped at each create in this record, so a reader's reference to a dropped adapter
  // cannot silently follow a new adapter that reuses the record.
  std::atomic<uint64_t> incarnation;
  char name[kMaxAdapterName + 1];
  uint32_t tensor_count;
  uint32_t history_depth;  // committed versions kept readable besides the active one
  uint32_t placement;      // Placement
  uint32_t device_mask;    // kDevices: bit i set = a copy lives in ArenaHeader::devices[i]
  uint32_t primary_device; // kDevices: the index (in ArenaHeader::devices) writers write to
  uint32_t reserved;
  uint64_t slot_bytes;       // bytes of one slot (a multiple of kSlotAlign)
  uint64_t data_offset;      // kHost: data-segment offset of slot 0; slots follow contiguously
  // kDevices: offset of slot 0 in each device arena of device_mask, and the device epoch the
  // memory belongs to (device memory dies with the daemon that allocated it).
  uint64_t device_offset[kMaxDevices];
  // Readers trust the device offsets above only while this equals the header's device_epoch:
  // a restarted daemon re-points the record at its new memory, then stores its epoch here
  // last (seq_cst).
  std::atomic<uint64_t> device_epoch;
  // kDevices: a host copy of the active version in the data segment, written by the daemon
  // after each flip, so that a restarted daemon (whose device memory died with its
  // predecessor) can put that version back on the devices and serve it again.
  uint64_t restart_copy_offset;   // data-segment offset, when restart_copy_bytes != 0
  uint64_t restart_copy_bytes;    // slot_bytes, or 0: the data arena had no room at create
  uint64_t restart_copy_version;  // the version it holds; 0 while none or being rewritten
  uint64_t restart_copy_checksum;
  uint64_t restart_copy_committed_unix_ns;
  uint64_t tensors_offset;   // pool offset of tensor_count TensorDescs
  uint64_t pool_bytes;       // bytes this adapter holds in the pool, from tensors_offset
  uint64_t last_version;     // daemon: the highest version ever assigned (versions never repeat)
  uint64_t created_unix_ns;
  LoraConfig lora;
  // daemon, relaxed: counters for stats and metrics.
  std::atomic<uint64_t> commits;
  std::atomic<uint64_t> aborts;
  std::atomic<uint64_t> rollbacks;
  // daemon, relaxed: nanoseconds summed over commits, for metrics (divide by commits).
  std::atomic<uint64_t> write_ns_total;  // begin_write to the commit request: the writer's copies
  std::atomic<uint64_t> check_ns_total;  // the daemon's checks and replication before the flip
  // Commits that handed the daemon a device event, and the nanoseconds they waited on it
  // (from the commit request to the writer's copies done).
  std::atomic<uint64_t> event_waits;
  std::atomic<uint64_t> event_wait_ns_total;
  // daemon: flip events sent for this adapter (commit, rollback, drop); each event carries
  // the count as its sequence number, so a subscriber can tell which ones it missed.
  uint64_t events_sent;
  SlotRecord slots[kMaxSlots];
};

// One reader handle's entry. Two cache lines, so that the pin cells one reader writes never
// share a line with another reader's (no false sharing between generation loops).
struct alignas(128) ReaderEntry {
  // Claimed with a CAS 0 -> pid by the reader; cleared by the reader at close or by the
  // daemon's reaper once the owner is dead. seq_cst.
  std::atomic<uint64_t> owner_pid;  // or kReaderReaping while the daemon clears a dead owner's
  // The owner's start time (clock ticks since boot, /proc/<pid>/stat field 22), stored by the
  // owner right after the claim. A pid reused by another process has another start time, so it
  // cannot keep dead pins alive. 0 while the claim is in progress.
  std::atomic<uint64_t> owner_start;
  // pack_pin words; 0 = empty. Written only by the owner (seq_cst), cleared by the reaper
  // after the owner died.
  std::atomic<uint64_t> pins[kPinCells];
};

// One GPU's arena: a single block the daemon allocated and exported once. Written by the daemon
// at each start, before it answers any hello; immutable while that daemon runs.
struct DeviceArenaRecord {
  // The daemon's device number. Ordinals are per process (CUDA_VISIBLE_DEVICES and
  // CUDA_DEVICE_ORDER renumber them; one visible GPU per tensor-parallel rank is common), so
  // no other process may use it as its own: it names the device in placements ("cuda:N") and
  // in the daemon's messages only. Clients find their own ordinal through `uuid`.
  int32_t ordinal;
  uint32_t reserved;
  uint64_t bytes;
  unsigned char handle[64];  // device::IpcHandle
  // device::Backend::device_uuid of the device: what names the GPU in every process
  // (cudaDeviceProp::uuid; the host stand-in's device number before any renumbering).
  unsigned char uuid[16];
};

// owner_pid of a reader entry the daemon is reclaiming; never a real pid (pids fit 22 bits).
inline constexpr uint64_t kReaderReaping = ~uint64_t{0};

struct alignas(64) ArenaHeader {
  uint64_t magic;
  uint32_t format_version;
  uint32_t header_bytes;  // sizeof(ArenaHeader) of the build that made it
  uint64_t layout_hash;   // layout_hash() of the build that made it
  uint64_t control_bytes;
  uint64_t data_bytes;
  uint32_t max_adapters;
  uint32_t max_readers;
  uint64_t adapters_offset;  // control-segment offsets, each 128-byte aligned
  uint64_t readers_offset;
  uint64_t pool_offset;
  uint64_t pool_bytes;
  uint32_t default_history;
  uint32_t reserved;
  char data_segment[64];  // shared-memory name of the data segment
  uint64_t created_unix_ns;
  // daemon, seq_cst: 1 once every field above is written. A daemon that finds 0 at start
  // knows the previous one died while creating the arena and makes it again.
  std::atomic<uint32_t> ready;
  // daemon: incremented at every flip (and rollback, and drop), then FUTEX_WAKE. Readers
  // futex-wait on it. 32 bits because futexes are 32-bit words.
  std::atomic<uint32_t> flip_seq;
  // daemon, relaxed. The pid and start time of the daemon serving this arena now.
  std::atomic<uint64_t> daemon_pid;
  std::atomic<uint64_t> daemon_start;
  std::atomic<uint64_t> flips;  // daemon, relaxed: every flip of every adapter
  uint64_t last_lease_id;       // daemon: lease ids never repeat, across restarts too
  // Device arenas of the running daemon (see DeviceArenaRecord). device_epoch changes at every
  // daemon start that serves devices: clients reopen blocks when it differs from theirs.
  char device_backend[16];  // "" (none), "host" or "cuda"
  uint32_t device_count;
  uint32_t reserved2;
  std::atomic<uint64_t> device_epoch;
  DeviceArenaRecord devices[kMaxDevices];
};

// ---- Invariants the compiler can check ----
template <typename T>
inline constexpr bool kShareable = std::is_standard_layout_v<T> && std::is_trivially_copyable_v<T>;
static_assert(kShareable<ArenaHeader> && kShareable<AdapterRecord> && kShareable<ReaderEntry> &&
              kShareable<SlotRecord> && kShareable<TensorDesc> && kShareable<LoraConfig> &&
              kShareable<DeviceArenaRecord>);
static_assert(std::atomic<uint64_t>::is_always_lock_free, "64-bit atomics must be lock-free");
static_assert(std::atomic<uint32_t>::is_always_lock_free, "32-bit atomics must be lock-free");
static_assert(sizeof(std::atomic<uint64_t>) == 8 && sizeof(std::atomic<uint32_t>) == 4,
              "atomics must have the size of the plain word, or the futex breaks");
static_assert(sizeof(ReaderEntry) == 128);
static_assert(kMaxSlots <= 256 && kMaxAdapters <= 0xffff);
static_assert(pin_version(pack_pin(pack_active(kMaxVersion, kMaxSlots - 1), kMaxAdapters)) ==
              kMaxVersion, "the pin cell must hold the largest version, slot and adapter");

// A hash of every size, alignment and field offset above, and of the limits. Two builds that
// disagree on any of them get different hashes and refuse to share an arena.
constexpr uint64_t layout_hash() {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a 64-bit offset basis
  auto mix = [&h](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 1099511628211ULL;  // FNV-1a 64-bit prime
    }
  };
  mix(kFormatVersion);
  mix(sizeof(ArenaHeader)); mix(alignof(ArenaHeader));
  mix(sizeof(AdapterRecord)); mix(alignof(AdapterRecord));
  mix(sizeof(SlotRecord)); mix(sizeof(LoraConfig));
  mix(sizeof(ReaderEntry)); mix(alignof(ReaderEntry));
  mix(sizeof(TensorDesc)); mix(alignof(TensorDesc));
  mix(offsetof(ArenaHeader, ready)); mix(offsetof(ArenaHeader, flip_seq));
  mix(offsetof(AdapterRecord, active)); mix(offsetof(AdapterRecord, state));
  mix(offsetof(AdapterRecord, incarnation)); mix(offsetof(AdapterRecord, slots));
  mix(offsetof(AdapterRecord, lora)); mix(offsetof(AdapterRecord, tensors_offset));
  mix(offsetof(ReaderEntry, pins)); mix(offsetof(TensorDesc, offset));
  mix(offsetof(SlotRecord, lease_id)); mix(offsetof(ArenaHeader, last_lease_id));
  mix(offsetof(ArenaHeader, devices)); mix(sizeof(DeviceArenaRecord)); mix(kMaxDevices);
  mix(offsetof(DeviceArenaRecord, uuid));  // clients without it would use the daemon's ordinals
  mix(offsetof(AdapterRecord, device_offset));
  mix(kMaxSlots); mix(kPinCells); mix(kMaxDims); mix(kMaxTensorName); mix(kMaxAdapterName);
  mix(kTensorAlign); mix(kSlotAlign);
  return h;
}

constexpr uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace loraflip::ipc
