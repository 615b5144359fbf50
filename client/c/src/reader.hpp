// The reader side: one reader-table entry, pins, and the lock-free acquire handshake. Plain C++
// behind the C API so that tests can drive it directly.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "connection.hpp"
#include "devices.hpp"
#include "ipc/arena.hpp"
#include "ipc/result.hpp"
#include "loraflip.h"

struct lf_pin {
  lf_reader_t *owner;
  uint32_t cell;     // index into the reader entry's pin cells
  uint32_t adapter;
  uint64_t version;
  const std::byte *base;  // start of the pinned slot in the read-only data mapping
  const loraflip::ipc::TensorDesc *tensors;
  uint32_t tensor_count;
  uint32_t slot;
  // This process's ordinal of `base`'s device (the adapter's first device, or when this
  // process does not see that one, the first of its copies it sees); -1: host memory.
  int32_t device;
  const loraflip::ipc::AdapterRecord *record;
  // Device placements: where this version lives on each device it is placed on that this
  // process sees (by this process's ordinal), taken at acquire, so that a daemon restart
  // re-pointing the record later cannot move it.
  uint32_t copies;
  int32_t copy_ordinal[loraflip::ipc::kMaxDevices];
  const std::byte *copy_base[loraflip::ipc::kMaxDevices];
  // The daemon start (device epoch) whose device memory `base` and the copies lie in; 0: host
  // memory. While the cell is in use, the reader's DeviceMap keeps that epoch's blocks mapped
  // after a daemon restart (acquire lets them go once no pin names the epoch).
  uint64_t device_epoch;
};

// A pin handed to lf_pin_release_after: its cell stays set until `event` (recorded on the
// caller's stream after the work that reads the pin) completes.
struct lf_pending_release {
  uint32_t cell = 0;
  loraflip::device::Backend *backend = nullptr;
  loraflip::device::Event event;
};

struct lf_reader {
  loraflip::ipc::Arena arena;
  loraflip::ipc::ReaderEntry *entry = nullptr;
  uint64_t owner = 0;  // the entry's owner_pid, as the daemon stored it (its pid namespace's)
  uint32_t free_cells = (1u << LF_MAX_PINS) - 1;  // bit i set: pin cell i is unused
  lf_pin pins[LF_MAX_PINS] = {};
  std::string last_error;
  loraflip::client::DeviceMap devices;  // opened on the first pin of a device-placed adapter
  lf_pending_release pending[LF_MAX_PINS];
  uint32_t pending_count = 0;
  // Events of completed releases, recorded again by later ones (creating one per release
  // would cost a driver call each step).
  std::vector<std::pair<loraflip::device::Backend *, loraflip::device::Event>> spare_events;

  explicit lf_reader(loraflip::ipc::Arena a) : arena(std::move(a)) {}
  ~lf_reader();
};

namespace loraflip::client {

// Has the daemon claim a free entry of the reader table for this process (LF_E_TABLE_FULL
// when none is).
Status claim_entry(lf_reader &reader, Connection &connection);
// Clears every pin, then frees the entry.
void release_entry(lf_reader &reader);

Result<lf_adapter_ref_t> find_adapter(const lf_reader &reader, const char *name);

// The acquire handshake (design.md, "Reader pinning"): publish the pin, then look at the word
// that justified it once more; if it changed, the daemon may not have seen the pin: try again.
// `exact` pins exactly `version`; otherwise the newest version >= `version`.
int acquire(lf_reader &reader, lf_adapter_ref_t ref, uint64_t version, bool exact, lf_pin **out);
void release(lf_pin *pin);
// Ends `pin` once the work queued so far on `stream` (of device `device`; -1: the pin's own)
// is done, without waiting for it. The pin handle is dead on return, as after release().
int release_after(lf_pin *pin, int device, device::Stream stream);
// Releases the pins of lf_pin_release_after whose work is done; with `wait`, waits for all of
// them (bounded: see reader.cpp). Returns how many still wait.
uint32_t release_completed(lf_reader &reader, bool wait);

int wait_for_newer(lf_reader &reader, lf_adapter_ref_t ref, uint64_t version, int timeout_ms,
                   uint64_t *out);

}  // namespace loraflip::client
