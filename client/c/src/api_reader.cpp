// The C ABI, the reader: a reader-table entry, pins and their tensors, and waiting for a
// newer version. The work is in reader.cpp; these are its guarded entry points.
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "api_internal.hpp"
#include "connection.hpp"
#include "ipc/arena.hpp"
#include "ipc/split_runs.hpp"
#include "loraflip.h"
#include "reader.hpp"

extern "C" {

int lf_reader_open(const char *runtime_dir, lf_reader_t **out) {
  return guarded(&t_last_error, [&] {
    if (out == nullptr) return invalid(&t_last_error, "out is NULL");
    auto connection = client::Connection::open(client::resolve_runtime_dir(runtime_dir), 0);
    if (!connection) return fail(&t_last_error, connection.error());
    auto arena = ipc::Arena::attach(connection->hello().control_segment,
                                    ipc::Segment::Access::kReadOnly);
    if (!arena) return fail(&t_last_error, arena.error());
    auto reader = std::make_unique<lf_reader>(std::move(arena).value());
    if (Status s = client::claim_entry(*reader, connection.value()); !s) return fail(&t_last_error, s.error());
    *out = reader.release();
    return LF_OK;
  });
}

void lf_reader_close(lf_reader_t *reader) {
  if (reader == nullptr) return;
  client::release_entry(*reader);
  delete reader;
}

const char *lf_reader_last_error(const lf_reader_t *reader) {
  return reader == nullptr ? "reader is NULL" : reader->last_error.c_str();
}

int lf_reader_find(lf_reader_t *reader, const char *name, lf_adapter_ref_t *out) {
  if (reader == nullptr || name == nullptr || out == nullptr) return LF_E_INVALID_ARGUMENT;
  return guarded(&reader->last_error, [&] {
    auto ref = client::find_adapter(*reader, name);
    if (!ref) return fail(&reader->last_error, ref.error());
    *out = ref.value();
    return LF_OK;
  });
}

// The hot path: no allocation, no exception source, no system call.
int lf_reader_acquire(lf_reader_t *reader, lf_adapter_ref_t ref, uint64_t min_version, lf_pin_t **out) {
  if (reader == nullptr || out == nullptr) return LF_E_INVALID_ARGUMENT;
  return guarded(&reader->last_error,
                 [&] { return client::acquire(*reader, ref, min_version, false, out); });
}

int lf_reader_acquire_version(lf_reader_t *reader, lf_adapter_ref_t ref, uint64_t version,
                              lf_pin_t **out) {
  if (reader == nullptr || out == nullptr || version == 0) return LF_E_INVALID_ARGUMENT;
  return guarded(&reader->last_error,
                 [&] { return client::acquire(*reader, ref, version, true, out); });
}

void lf_pin_release(lf_pin_t *pin) {
  if (pin != nullptr && pin->owner != nullptr) client::release(pin);
}

int lf_pin_release_after(lf_pin_t *pin, int device, void *stream) {
  if (pin == nullptr || pin->owner == nullptr) return LF_E_INVALID_ARGUMENT;
  lf_reader_t *reader = pin->owner;
  return guarded(&reader->last_error, [&] { return client::release_after(pin, device, stream); });
}

int lf_reader_release_completed(lf_reader_t *reader, size_t *pending_out) {
  if (reader == nullptr) return LF_E_INVALID_ARGUMENT;
  return guarded(&reader->last_error, [&] {
    const uint32_t pending = client::release_completed(*reader, false);
    if (pending_out != nullptr) *pending_out = pending;
    return LF_OK;
  });
}

uint64_t lf_pin_version(const lf_pin_t *pin) { return pin == nullptr ? 0 : pin->version; }

size_t lf_pin_tensor_count(const lf_pin_t *pin) { return pin == nullptr ? 0 : pin->tensor_count; }

int lf_pin_tensor(const lf_pin_t *pin, size_t index, lf_tensor_view_t *out) {
  if (pin == nullptr || pin->owner == nullptr || out == nullptr) return LF_E_INVALID_ARGUMENT;
  if (index >= pin->tensor_count) return LF_E_NOT_FOUND;
  return fill_view(pin->tensors[index], pin->base, pin->version, pin->device, out);
}

size_t lf_pin_slot_bytes(const lf_pin_t *pin) {
  return pin == nullptr || pin->owner == nullptr ? 0 : pin->record->slot_bytes;
}

int lf_pin_copy_slot(const lf_pin_t *pin, void *dst, size_t nbytes) {
  if (pin == nullptr || pin->owner == nullptr) return LF_E_INVALID_ARGUMENT;
  lf_reader_t *reader = pin->owner;
  if (dst == nullptr) return invalid(&reader->last_error, "dst is NULL");
  const uint64_t slot_bytes = pin->record->slot_bytes;
  if (nbytes != slot_bytes)
    return fail(&reader->last_error,
                make_error(LF_E_INVALID_ARGUMENT, "the buffer is " + std::to_string(nbytes) +
                                                      " bytes, the slot " +
                                                      std::to_string(slot_bytes)));
  // The pin keeps these bytes unchanged until it is released.
  if (pin->device < 0) {
    // On several cores for a large slot. Ordinary stores: the caller reads the copy next.
    ipc::copy_in_runs(static_cast<std::byte *>(dst), pin->base, nbytes,
                      [](std::byte *to, const std::byte *from, size_t n) { std::memcpy(to, from, n); });
    return LF_OK;
  }
  return guarded(&reader->last_error, [&] {
    // The pin's own copy (the adapter's first device this process sees), on that device's
    // default stream, waited for: `dst` holds the bytes when this returns.
    loraflip::device::Backend *b = reader->devices.backend();
    Status st = b->copy(dst, pin->base, nbytes, loraflip::device::CopyKind::kDeviceToHost,
                        pin->device, nullptr);
    if (st) st = b->synchronize(pin->device, nullptr);
    return st ? LF_OK : fail(&reader->last_error, st.error());
  });
}

int lf_pin_tensor_on_device(const lf_pin_t *pin, size_t index, int device, lf_tensor_view_t *out) {
  if (pin == nullptr || pin->owner == nullptr || out == nullptr) return LF_E_INVALID_ARGUMENT;
  if (index >= pin->tensor_count) return LF_E_NOT_FOUND;
  // `device` is the caller's ordinal, as the pin's are (the daemon's numbering may differ);
  // copies on devices this process does not see are not in the pin: LF_E_NOT_FOUND.
  if (pin->device == device)
    return fill_view(pin->tensors[index], pin->base, pin->version, pin->device, out);
  for (uint32_t c = 0; c < pin->copies; ++c) {
    if (pin->copy_ordinal[c] == device)
      return fill_view(pin->tensors[index], pin->copy_base[c], pin->version, device, out);
  }
  return LF_E_NOT_FOUND;
}

int lf_pin_tensor_by_name(const lf_pin_t *pin, const char *name, lf_tensor_view_t *out) {
  if (pin == nullptr || pin->owner == nullptr || name == nullptr || out == nullptr)
    return LF_E_INVALID_ARGUMENT;
  const int64_t i = tensor_index(pin->tensors, pin->tensor_count, name);
  if (i < 0) return LF_E_NOT_FOUND;
  return fill_view(pin->tensors[i], pin->base, pin->version, pin->device, out);
}

int lf_reader_active_version(lf_reader_t *reader, lf_adapter_ref_t ref, uint64_t *out) {
  if (reader == nullptr || out == nullptr) return LF_E_INVALID_ARGUMENT;
  const uint32_t index = static_cast<uint32_t>(ref & 0xffff);
  if (index >= reader->arena.max_adapters()) return LF_E_INVALID_ARGUMENT;
  const ipc::AdapterRecord &r = reader->arena.adapter(index);
  const uint64_t active = r.active.load();
  if (r.incarnation.load() != (ref >> 16) ||
      r.state.load() != static_cast<uint32_t>(ipc::AdapterState::kLive))
    return LF_E_STALE;
  *out = ipc::active_version(active);
  return LF_OK;
}

int lf_reader_wait(lf_reader_t *reader, lf_adapter_ref_t ref, uint64_t version, int timeout_ms,
                   uint64_t *version_out) {
  if (reader == nullptr || version_out == nullptr) return LF_E_INVALID_ARGUMENT;
  return guarded(&reader->last_error, [&] {
    return client::wait_for_newer(*reader, ref, version, timeout_ms, version_out);
  });
}

}  // extern "C"
