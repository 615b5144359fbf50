#include "reader.hpp"

#include <algorithm>
#include <cstring>
#include <unistd.h>

#include "ipc/futex.hpp"
#include "ipc/proc.hpp"

namespace loraflip::client {
namespace {

constexpr auto kSeqCst = std::memory_order_seq_cst;
// How long closing a reader waits for the GPU work behind its pending releases.
constexpr int kCloseWaitMs = 10000;

uint32_t ref_index(lf_adapter_ref_t ref) { return static_cast<uint32_t>(ref & 0xffff); }
uint64_t ref_incarnation(lf_adapter_ref_t ref) { return ref >> 16; }

bool same_adapter(const ipc::AdapterRecord &r, lf_adapter_ref_t ref) {
  return r.incarnation.load(kSeqCst) == ref_incarnation(ref) &&
         r.state.load(kSeqCst) == static_cast<uint32_t>(ipc::AdapterState::kLive);
}

int fail(lf_reader &reader, int code, std::string message) {
  reader.last_error = std::move(message);
  return code;
}

}  // namespace

Status claim_entry(lf_reader &reader, Connection &connection) {
  // The daemon claims the entry: it names this process as its own pid namespace sees it (from
  // the socket's credentials), which is what its reaper checks. A reader in a container, whose
  // own getpid() means nothing to the daemon, is then reclaimed like any other.
  Result<ipc::msg::OpenReaderResult> claimed =
      connection.call<ipc::msg::OpenReaderResult>(ipc::msg::OpenReader{});
  if (!claimed) return claimed.error();
  if (claimed->entry >= reader.arena.max_readers() || claimed->owner == 0)
    return make_error(LF_E_PROTOCOL, "the daemon's open_reader reply names no reader entry");
  ipc::ReaderEntry &e = reader.arena.reader(static_cast<uint32_t>(claimed->entry));
  if (e.owner_pid.load(kSeqCst) != claimed->owner)
    return make_error(LF_E_PROTOCOL, "the reader entry the daemon claimed is not this reader's");
  reader.entry = &e;
  reader.owner = claimed->owner;
  return {};
}

void release_entry(lf_reader &reader) {
  if (reader.entry == nullptr) return;
  release_completed(reader, true);
  for (auto &cell : reader.entry->pins) cell.store(0, kSeqCst);
  reader.entry->owner_start.store(0, kSeqCst);
  uint64_t owner = reader.owner;
  // A CAS, not a store: if the daemon took the entry (it believed us dead), it is not ours.
  reader.entry->owner_pid.compare_exchange_strong(owner, 0, kSeqCst);
  reader.entry = nullptr;
}

Result<lf_adapter_ref_t> find_adapter(const lf_reader &reader, const char *name) {
  for (uint32_t i = 0; i < reader.arena.max_adapters(); ++i) {
    const ipc::AdapterRecord &r = reader.arena.adapter(i);
    if (r.state.load(kSeqCst) != static_cast<uint32_t>(ipc::AdapterState::kLive)) continue;
    const uint64_t incarnation = r.incarnation.load(kSeqCst);
    if (std::strncmp(r.name, name, sizeof r.name) != 0) continue;
    // The name was read while the record could change under us: it counts only if the record
    // is still the same incarnation, live, afterwards.
    if (r.incarnation.load(kSeqCst) != incarnation ||
        r.state.load(kSeqCst) != static_cast<uint32_t>(ipc::AdapterState::kLive))
      continue;
    return lf_adapter_ref_t{incarnation << 16 | i};
  }
  return make_error(LF_E_NOT_FOUND, std::string("no adapter '") + name + "'");
}

namespace {

// The acquire handshake (design.md, "Reader pinning"), the heart of guarantee 1: publish in
// `cell` a pin of the active version when it satisfies the request, else of the best kept
// one, then look at the word that justified it once more; if it changed, the daemon may not
// have seen the pin: try again. In the single total order of these seq_cst operations either
// the daemon's scan sees the pin, or this second look sees the word the daemon retired.
// Returns the pinned pack_active(version, slot), or 0 (cell cleared) when no active or kept
// version satisfies the request.
uint64_t pin_handshake(const ipc::AdapterRecord &r, uint32_t index, uint64_t version, bool exact,
                       std::atomic<uint64_t> &cell) {
  for (;;) {
    const uint64_t active = r.active.load(kSeqCst);
    const uint64_t active_v = ipc::active_version(active);
    if (active != 0 && (exact ? active_v == version : active_v >= version)) {
      cell.store(ipc::pack_pin(active, index), kSeqCst);
      if (r.active.load(kSeqCst) == active) return active;
      continue;  // flipped meanwhile: the pin may be unseen
    }
    // Not the active version: look among the kept ones (possible after a rollback, or when
    // asking for an exact older version).
    uint64_t best_word = 0;
    uint32_t best_slot = 0;
    for (uint32_t s = 0; s < r.slot_count && s < ipc::kMaxSlots; ++s) {
      const uint64_t w = r.slots[s].word.load(kSeqCst);
      if (ipc::slot_word_state(w) != ipc::SlotState::kCommitted) continue;
      const uint64_t v = ipc::slot_word_version(w);
      if (exact ? v == version : (v >= version && v > ipc::slot_word_version(best_word))) {
        best_word = w;
        best_slot = s;
      }
    }
    if (best_word == 0) {
      cell.store(0, std::memory_order_release);
      return 0;
    }
    const uint64_t pinned = ipc::pack_active(ipc::slot_word_version(best_word), best_slot);
    cell.store(ipc::pack_pin(pinned, index), kSeqCst);
    if (r.slots[best_slot].word.load(kSeqCst) == best_word) return pinned;
    // evicted meanwhile: try again
  }
}

// Lets go of the device memory of earlier daemons that no pin of this reader names any more
// (a pin in use: its cell is not free, which includes pins waiting in release_after). Their
// blocks close when no other handle of the process holds them either.
void drop_unpinned_epochs(lf_reader &reader) {
  reader.devices.drop_retired([&reader](uint64_t epoch) {
    for (uint32_t c = 0; c < LF_MAX_PINS; ++c)
      if (!(reader.free_cells & (1u << c)) && reader.pins[c].device_epoch == epoch) return true;
    return false;
  });
}

}  // namespace

int acquire(lf_reader &reader, lf_adapter_ref_t ref, uint64_t version, bool exact, lf_pin **out) {
  // Pins whose GPU work has finished go back first: a generation loop that releases each
  // step's pins after its stream has them back here, one step later at most.
  if (reader.pending_count != 0) release_completed(reader, false);
  if (reader.devices.has_retired()) drop_unpinned_epochs(reader);
  const uint32_t index = ref_index(ref);
  if (index >= reader.arena.max_adapters())
    return fail(reader, LF_E_INVALID_ARGUMENT, "adapter reference out of range");
  if (reader.free_cells == 0)
    return fail(reader, LF_E_PINS_FULL, "this reader holds " + std::to_string(LF_MAX_PINS) +
                                            " pins already; release one first");
  const uint32_t cell = static_cast<uint32_t>(__builtin_ctz(reader.free_cells));
  std::atomic<uint64_t> &pin_cell = reader.entry->pins[cell];
  const ipc::AdapterRecord &r = reader.arena.adapter(index);

  uint64_t pinned_word = 0;
  const std::byte *base = nullptr;
  int32_t device = -1;
  uint32_t copies = 0;
  int32_t copy_ordinal[ipc::kMaxDevices];
  const std::byte *copy_base[ipc::kMaxDevices];
  for (;;) {
    pinned_word = pin_handshake(r, index, version, exact, pin_cell);
    // Checked after the pin is published: a drop that happened before it is seen here, and
    // one after it keeps the memory until this pin is released.
    if (!same_adapter(r, ref)) {
      pin_cell.store(0, std::memory_order_release);
      return fail(reader, LF_E_STALE, "the adapter was dropped");
    }
    if (pinned_word == 0)
      return fail(reader, LF_E_NO_VERSION,
                  (exact ? "version " : "no version >= ") + std::to_string(version) +
                      (exact ? " is neither active nor kept" : " is active or kept"));
    const uint32_t slot = ipc::active_slot(pinned_word);
    if (r.placement != static_cast<uint32_t>(ipc::Placement::kDevices)) {
      base = reader.arena.data_at(r.slots[slot].data_offset);
      break;
    }
    if (Status st = reader.devices.refresh(reader.arena); !st) {
      pin_cell.store(0, std::memory_order_release);
      return fail(reader, st.code(), st.error().message);
    }
    if (reader.devices.has_retired()) drop_unpinned_epochs(reader);  // the daemon restarted
    // The record's device offsets hold only while it belongs to the devices this process
    // mapped: a restarted daemon serves new device memory and re-points each record before
    // storing its epoch (last).
    if (r.device_epoch.load(kSeqCst) != reader.devices.epoch()) {
      pin_cell.store(0, std::memory_order_release);
      return fail(reader, LF_E_NO_VERSION,
                  "the daemon restarted and is putting this adapter back on its devices (or "
                  "dropping it); try again");
    }
    // Re-pointed after the pin was published? Then the slot's word changed with it (a restore
    // frees every slot but the restored one): start over.
    if (r.slots[slot].word.load(kSeqCst) !=
        ipc::pack_slot_word(ipc::active_version(pinned_word), ipc::SlotState::kCommitted))
      continue;
    // The copies on the devices this process sees (opened at their first use), by this
    // process's ordinals; the daemon's devices it does not see are skipped. The pin's own
    // address is the first device's copy, or where this process does not see that device
    // (one GPU per tensor-parallel rank), the first copy it sees.
    Error open_failed{LF_OK, {}};
    for (uint32_t d = 0; d < ipc::kMaxDevices; ++d) {
      if (!(r.device_mask & (1u << d)) || reader.devices.ordinal(d) < 0) continue;
      Result<std::byte *> block = reader.devices.base(d);
      if (!block) {
        open_failed = block.error();
        break;
      }
      copy_ordinal[copies] = reader.devices.ordinal(d);
      copy_base[copies] = block.value() + r.device_offset[d] + uint64_t{slot} * r.slot_bytes;
      if (d == r.primary_device || base == nullptr) {
        base = copy_base[copies];
        device = copy_ordinal[copies];
      }
      ++copies;
    }
    if (open_failed.code == LF_OK && copies == 0)
      open_failed = reader.devices.invisible(r.primary_device);
    if (open_failed.code != LF_OK) {
      pin_cell.store(0, std::memory_order_release);
      return fail(reader, open_failed.code, "adapter '" + std::string(r.name) + "': " +
                                                open_failed.message);
    }
    break;
  }
  reader.free_cells &= ~(1u << cell);
  lf_pin &pin = reader.pins[cell];
  pin.owner = &reader;
  pin.cell = cell;
  pin.adapter = index;
  pin.version = ipc::active_version(pinned_word);
  pin.base = base;
  pin.tensors = reader.arena.tensors(r);
  pin.tensor_count = r.tensor_count;
  pin.slot = ipc::active_slot(pinned_word);
  pin.device = device;
  pin.record = &r;
  pin.copies = copies;
  std::copy(copy_ordinal, copy_ordinal + copies, pin.copy_ordinal);
  std::copy(copy_base, copy_base + copies, pin.copy_base);
  pin.device_epoch = device >= 0 ? reader.devices.epoch() : 0;
  *out = &pin;
  return LF_OK;
}

void release(lf_pin *pin) {
  lf_reader &reader = *pin->owner;
  // Release order: every read of the pinned bytes happens before the daemon can see the cell
  // empty and lend the slot to a writer.
  reader.entry->pins[pin->cell].store(0, std::memory_order_release);
  reader.free_cells |= 1u << pin->cell;
  pin->owner = nullptr;
}

int release_after(lf_pin *pin, int device, device::Stream stream) {
  lf_reader &reader = *pin->owner;
  if (device < 0) device = pin->device;
  if (device < 0)
    return fail(reader, LF_E_INVALID_ARGUMENT,
                "the pin is in host memory: name the device whose stream reads it");
  Result<device::Backend *> backend = stream_backend(reader.arena, reader.devices);
  if (!backend) return fail(reader, backend.error().code, backend.error().message);
  // Inside a graph capture the record would run at each replay, not now: its query fails until
  // then (cudaErrorCapturedEvent), and a pin that ended on that failure would let the daemon
  // lend the slot while the graph still reads it. A graph must hold its pin across replays
  // and release it outside the capture.
  Result<bool> capturing = backend.value()->capturing(device, stream);
  if (!capturing) return fail(reader, capturing.error().code, capturing.error().message);
  if (capturing.value())
    return fail(reader, LF_E_INVALID_ARGUMENT,
                "lf_pin_release_after on a stream that is being captured into a CUDA graph: "
                "keep the pin for as long as the graph is replayed, and release it outside "
                "the capture");
  device::Event event;
  bool reused = false;
  for (auto it = reader.spare_events.begin(); it != reader.spare_events.end(); ++it) {
    if (it->first == backend.value() && it->second.device == device) {
      event = it->second;
      reader.spare_events.erase(it);
      reused = true;
      break;
    }
  }
  if (!reused) {
    // A local event: only this process queries it, and one without IPC is cheaper to record.
    Result<device::Event> made = backend.value()->create_local_event(device);
    if (!made) return fail(reader, made.error().code, made.error().message);
    event = made.value();
  }
  if (Status st = backend.value()->record(event, stream); !st) {
    reader.spare_events.emplace_back(backend.value(), event);
    return fail(reader, st.code(), st.error().message);  // the pin is still held and valid
  }
  reader.pending[reader.pending_count++] = {pin->cell, backend.value(), event};
  pin->owner = nullptr;  // the handle is dead; the cell stays set until the event completes
  return LF_OK;
}

uint32_t release_completed(lf_reader &reader, bool wait) {
  uint32_t kept = 0;
  for (uint32_t i = 0; i < reader.pending_count; ++i) {
    lf_pending_release &p = reader.pending[i];
    bool done = true;
    if (wait) {
      // Closing: the reader's own streams finish their queued work unless the GPU hangs, and
      // then nothing of this process reads the pin any more either.
      (void)device::wait_event(*p.backend, p.event, kCloseWaitMs);
    } else {
      // Only a sticky error (LF_E_DEVICE: the context is broken, no more work of this process
      // will run on it) leaves the pin nothing to cover. Any other failure says nothing about
      // the work that reads the pin, which may still run: the pin stays, and the error is
      // kept for lf_reader_last_error.
      Result<bool> q = p.backend->query(p.event);
      if (!q && q.error().code != LF_E_DEVICE) reader.last_error = q.error().message;
      done = q ? q.value() : q.error().code == LF_E_DEVICE;
    }
    if (!done) {
      reader.pending[kept++] = p;
      continue;
    }
    reader.entry->pins[p.cell].store(0, std::memory_order_release);
    reader.free_cells |= 1u << p.cell;
    reader.spare_events.emplace_back(p.backend, p.event);
  }
  reader.pending_count = kept;
  return kept;
}

int wait_for_newer(lf_reader &reader, lf_adapter_ref_t ref, uint64_t version, int timeout_ms,
                   uint64_t *out) {
  const uint32_t index = ref_index(ref);
  if (index >= reader.arena.max_adapters())
    return fail(reader, LF_E_INVALID_ARGUMENT, "adapter reference out of range");
  const ipc::AdapterRecord &r = reader.arena.adapter(index);
  std::atomic<uint32_t> &seq = reader.arena.header().flip_seq;
  const uint64_t deadline =
      timeout_ms < 0 ? UINT64_MAX : ipc::monotonic_now_ns() + uint64_t(timeout_ms) * 1000000ULL;
  for (;;) {
    // Read the sequence before the condition: a flip after this load changes the word, so the
    // futex wait below returns at once instead of sleeping through it.
    const uint32_t observed = seq.load(kSeqCst);
    if (!same_adapter(r, ref)) return fail(reader, LF_E_STALE, "the adapter was dropped");
    const uint64_t active = ipc::active_version(r.active.load(kSeqCst));
    if (active > version) {
      *out = active;
      return LF_OK;
    }
    const uint64_t now = ipc::monotonic_now_ns();
    if (now >= deadline)
      return fail(reader, LF_E_TIMEOUT, "no version newer than " + std::to_string(version) +
                                            " within " + std::to_string(timeout_ms) + " ms");
    ipc::futex_wait(&seq, observed,
                    deadline == UINT64_MAX ? -1 : static_cast<int64_t>(deadline - now));
  }
}

}  // namespace loraflip::client

lf_reader::~lf_reader() {
  for (uint32_t i = 0; i < pending_count; ++i) pending[i].backend->destroy_event(pending[i].event);
  for (auto &[backend, event] : spare_events) backend->destroy_event(event);
}
