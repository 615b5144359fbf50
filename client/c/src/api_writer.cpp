// The C ABI, the writer: a lease on one slot (lf_client_begin_write), filled in place or by
// copies, then committed or aborted. Every function catches everything (api_internal.hpp).
#include <cstddef>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "api_internal.hpp"
#include "devices.hpp"
#include "ipc/arena.hpp"
#include "ipc/messages.hpp"
#include "ipc/stream_copy.hpp"
#include "kernels/validate.hpp"
#include "loraflip.h"

struct lf_writer {
  lf_client *client;
  uint64_t lease;
  const std::byte *base;
  std::byte *writable;
  const ipc::TensorDesc *tensors;
  uint32_t tensor_count;
  uint64_t slot_bytes;
  int32_t device = -1;              // ordinal of the slot's device; -1: host memory
  bool async_pending = false;       // copies queued by lf_writer_copy_in_async
  loraflip::device::Stream stream = nullptr;  // the stream they were queued on
};

namespace {

// Sends the aborts that could not be sent before. One that still cannot waits for the next
// write; any answer of the daemon (done, or the lease ended already) settles it.
void flush_unsent_aborts(lf_client *c) {
  for (size_t i = 0; i < c->unsent_aborts.size();) {
    auto reply = c->connection.call<ipc::msg::Empty>(ipc::msg::Abort{c->unsent_aborts[i]});
    if (!reply && outcome_unknown(reply.error().code)) return;
    c->unsent_aborts.erase(c->unsent_aborts.begin() + static_cast<std::ptrdiff_t>(i));
  }
}

}  // namespace

extern "C" {

int lf_client_begin_write(lf_client_t *c, const char *name, int lease_ms, lf_writer_t **out) {
  if (c == nullptr) return LF_E_INVALID_ARGUMENT;
  std::lock_guard lock(c->mutex);
  return guarded(&c->last_error, [&] {
    if (name == nullptr || out == nullptr) return invalid(&c->last_error, "name or out is NULL");
    if (!c->arena) {
      auto arena = ipc::Arena::attach(c->connection.hello().control_segment,
                                      ipc::Segment::Access::kReadWrite);
      if (!arena) return fail(&c->last_error, arena.error());
      c->arena.emplace(std::move(arena).value());
    }
    flush_unsent_aborts(c);
    auto unanswered = c->unanswered_begins.find(name);
    const uint64_t token = unanswered != c->unanswered_begins.end() ? unanswered->second
                                                                    : (c->next_token += 2);
    auto lease = c->connection.call<ipc::msg::BeginWriteResult>(ipc::msg::BeginWrite{
        name, lease_ms > 0 ? static_cast<uint64_t>(lease_ms) : 30000, token});
    if (!lease && outcome_unknown(lease.error().code)) c->unanswered_begins[name] = token;
    else c->unanswered_begins.erase(name);
    if (!lease) return fail(&c->last_error, lease.error());
    const ipc::Arena &arena = *c->arena;
    if (lease->adapter >= arena.max_adapters())
      return fail(&c->last_error, make_error(LF_E_PROTOCOL, "begin_write reply names no adapter"));
    const ipc::AdapterRecord &rec = arena.adapter(static_cast<uint32_t>(lease->adapter));
    if (rec.incarnation.load() != lease->incarnation)
      return fail(&c->last_error, make_error(LF_E_STALE, "the adapter was dropped during begin_write"));
    // The slot lies in the data segment, or in the arena of the adapter's first device.
    std::byte *base = nullptr;
    int32_t device = -1;
    uint64_t region_bytes = arena.data_bytes();
    if (rec.placement == static_cast<uint32_t>(ipc::Placement::kDevices)) {
      if (Status st = c->devices.refresh(arena); !st) return fail(&c->last_error, st.error());
      base = c->devices.base(rec.primary_device);
      device = c->devices.ordinal(rec.primary_device);
      region_bytes = arena.header().devices[rec.primary_device].bytes;
    } else {
      base = arena.data_at(0);
    }
    if (lease->data_offset > region_bytes || lease->slot_bytes > region_bytes - lease->data_offset) {
      return fail(&c->last_error, make_error(LF_E_PROTOCOL, "begin_write reply names memory outside the arena"));
    }
    std::byte *slot = base + lease->data_offset;
    auto *w = new lf_writer{c, lease->lease, slot, slot, arena.tensors(rec), rec.tensor_count,
                            lease->slot_bytes};
    w->device = device;
    *out = w;
    return LF_OK;
  });
}

size_t lf_writer_tensor_count(const lf_writer_t *w) { return w == nullptr ? 0 : w->tensor_count; }

int lf_writer_tensor(const lf_writer_t *w, size_t index, lf_tensor_view_t *out) {
  if (w == nullptr || out == nullptr) return LF_E_INVALID_ARGUMENT;
  if (index >= w->tensor_count) return LF_E_NOT_FOUND;
  return fill_view(w->tensors[index], w->base, 0, w->device, out);
}

int lf_writer_tensor_by_name(const lf_writer_t *w, const char *name, lf_tensor_view_t *out) {
  if (w == nullptr || name == nullptr || out == nullptr) return LF_E_INVALID_ARGUMENT;
  const int64_t i = tensor_index(w->tensors, w->tensor_count, name);
  if (i < 0) return LF_E_NOT_FOUND;
  return fill_view(w->tensors[i], w->base, 0, w->device, out);
}

int lf_writer_copy_in(lf_writer_t *w, size_t index, const void *src, size_t nbytes) {
  if (w == nullptr || (src == nullptr && nbytes != 0)) return LF_E_INVALID_ARGUMENT;
  if (index >= w->tensor_count) return LF_E_NOT_FOUND;
  const ipc::TensorDesc &d = w->tensors[index];
  if (nbytes != d.nbytes) return LF_E_INVALID_ARGUMENT;
  if (w->device < 0) {
    ipc::stream_copy(w->writable + d.offset, src, nbytes);  // the slot is read next elsewhere
    return LF_OK;
  }
  return guarded(&w->client->last_error, [&] {
    loraflip::device::Backend *b = w->client->devices.backend();
    Status st = b->copy(w->writable + d.offset, src, nbytes, loraflip::device::CopyKind::kHostToDevice,
                        w->device, nullptr);
    if (st) st = b->synchronize(w->device, nullptr);
    return st ? LF_OK : fail(&w->client->last_error, st.error());
  });
}

int lf_writer_copy_in_all(lf_writer_t *w, const void *const *srcs, const size_t *nbytes) {
  if (w == nullptr || srcs == nullptr || nbytes == nullptr) return LF_E_INVALID_ARGUMENT;
  for (size_t i = 0; i < w->tensor_count; ++i)
    if (srcs[i] != nullptr && nbytes[i] != w->tensors[i].nbytes) return LF_E_INVALID_ARGUMENT;
  if (w->device < 0) {
    for (size_t i = 0; i < w->tensor_count; ++i)
      if (srcs[i] != nullptr)
        ipc::stream_copy(w->writable + w->tensors[i].offset, srcs[i], nbytes[i]);
    return LF_OK;
  }
  return guarded(&w->client->last_error, [&] {
    loraflip::device::Backend *b = w->client->devices.backend();
    for (size_t i = 0; i < w->tensor_count; ++i) {
      if (srcs[i] == nullptr) continue;
      Status st = b->copy(w->writable + w->tensors[i].offset, srcs[i], nbytes[i],
                          loraflip::device::CopyKind::kHostToDevice, w->device, nullptr);
      if (!st) return fail(&w->client->last_error, st.error());
    }
    Status st = b->synchronize(w->device, nullptr);  // the sources may go once this returns
    return st ? LF_OK : fail(&w->client->last_error, st.error());
  });
}

int lf_writer_copy_in_async(lf_writer_t *w, size_t index, const void *src, size_t nbytes,
                            int src_device, void *stream) {
  if (w == nullptr || (src == nullptr && nbytes != 0)) return LF_E_INVALID_ARGUMENT;
  if (index >= w->tensor_count) return LF_E_NOT_FOUND;
  const ipc::TensorDesc &d = w->tensors[index];
  if (nbytes != d.nbytes) return LF_E_INVALID_ARGUMENT;
  if (w->device < 0) {
    if (src_device >= 0) return invalid(&w->client->last_error, "host-placed adapters take host memory");
    ipc::stream_copy(w->writable + d.offset, src, nbytes);  // the slot is read next elsewhere
    return LF_OK;
  }
  return guarded(&w->client->last_error, [&] {
    loraflip::device::Backend *b = w->client->devices.backend();
    // One write's copies travel on one stream, so that one event covers them all.
    if (w->async_pending && stream != w->stream) {
      if (Status st = b->synchronize(w->device, w->stream); !st)
        return fail(&w->client->last_error, st.error());
    }
    const auto kind = src_device < 0 ? loraflip::device::CopyKind::kHostToDevice
                                     : loraflip::device::CopyKind::kDeviceToDevice;
    Status st = src_device < 0 || src_device == w->device
                    ? b->copy(w->writable + d.offset, src, nbytes, kind, w->device, stream)
                    : b->copy_peer(w->writable + d.offset, w->device, src, src_device, nbytes, stream);
    if (!st) return fail(&w->client->last_error, st.error());
    w->async_pending = true;
    w->stream = stream;
    return LF_OK;
  });
}

int lf_writer_commit(lf_writer_t *w, unsigned flags, uint64_t *version_out) {
  if (w == nullptr) return LF_E_INVALID_ARGUMENT;
  lf_client *c = w->client;
  std::lock_guard lock(c->mutex);
  const int status = guarded(&c->last_error, [&] {
    ipc::msg::Commit q{w->lease, flags, std::nullopt, std::nullopt};
    if (w->async_pending) {
      // The daemon waits on this event (without blocking) before it checks and flips.
      loraflip::device::Backend *b = c->devices.backend();
      auto found = c->events.find(w->device);
      if (found == c->events.end()) {
        auto made = b->create_event(w->device);
        if (!made) return fail(&c->last_error, made.error());
        found = c->events.emplace(w->device, made.value()).first;
      }
      loraflip::device::Event &event = found->second;
      if (Status st = b->record(event, w->stream); !st) return fail(&c->last_error, st.error());
      ipc::msg::Binary64 handle;
      std::memcpy(handle.bytes.data(), event.handle.bytes, handle.bytes.size());
      q.event = handle;
    }
    if (flags & LF_COMMIT_CHECKSUM) {
      if (w->device >= 0)
        return fail(&c->last_error, make_error(LF_E_UNSUPPORTED, "LF_COMMIT_CHECKSUM covers "
                                               "host-placed adapters; device slots are checked "
                                               "with LF_COMMIT_CHECK_FINITE"));
      q.checksum = loraflip::kernels::checksum(w->base, w->slot_bytes);
    }
    auto reply = c->connection.call<ipc::msg::FlipResult>(q);
    if (!reply) return fail(&c->last_error, reply.error());
    if (version_out != nullptr) *version_out = reply->version;
    return LF_OK;
  });
  // The outcome is unknown: the writer stays, so that the caller can ask again (a repeated
  // commit answers the version the first one made) or abort.
  if (!outcome_unknown(status)) delete w;
  return status;
}

int lf_writer_abort(lf_writer_t *w) {
  if (w == nullptr) return LF_OK;
  lf_client *c = w->client;
  std::lock_guard lock(c->mutex);
  const int status = guarded(&c->last_error, [&] {
    auto reply = c->connection.call<ipc::msg::Empty>(ipc::msg::Abort{w->lease});
    if (!reply && outcome_unknown(reply.error().code)) c->unsent_aborts.push_back(w->lease);
    return reply ? LF_OK : fail(&c->last_error, reply.error());
  });
  delete w;
  return status;
}

}  // extern "C"
