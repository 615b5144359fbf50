// The C ABI, the writer: a lease on one slot (lf_client_begin_write), filled in place or by
// copies, then committed or aborted. Every function catches everything (api_internal.hpp).
#include <algorithm>
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
#include "ipc/split_runs.hpp"
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
  // The streams this write's work went on, with their devices: those of
  // lf_writer_copy_in_async's copies and those named by lf_writer_commit_after. The commit's
  // event covers them all.
  std::vector<std::pair<int, loraflip::device::Stream>> streams;
  // A device slot's block, held while the writer lives: a daemon restart retires the client's
  // own hold, and the writer's views must stay mapped until it ends.
  client::BlockRef block;

  void uses(int on_device, loraflip::device::Stream stream) {
    const std::pair<int, loraflip::device::Stream> s{on_device, stream};
    if (std::find(streams.begin(), streams.end(), s) == streams.end()) streams.push_back(s);
  }
};

lf_client::~lf_client() {
  loraflip::device::Backend *b = devices.backend();
  if (b == nullptr) return;  // no device work was ever done
  for (auto &[device, event] : events) b->destroy_event(event);
  for (auto &[device, event] : fences) b->destroy_event(event);
  for (auto &[device, stream] : fence_streams) b->destroy_stream(device, stream);
}

namespace {

using loraflip::device::Backend;
using loraflip::device::Event;
using loraflip::device::Stream;

// The client's event or stream of `device` in `cache`, made by `make` at first use.
template <typename T, typename Make>
Result<T *> per_device(std::unordered_map<int32_t, T> &cache, int device, Make &&make) {
  auto found = cache.find(device);
  if (found == cache.end()) {
    Result<T> made = make();
    if (!made) return made.error();
    found = cache.emplace(device, made.value()).first;
  }
  return &found->second;
}

// Makes the client's interprocess event of the slot's device cover all the work of the write
// on `w->streams`, and returns it. One stream of the slot's device: the event is recorded
// there. Otherwise (several streams, or a copy issued on another device, such as a peer copy
// from the trainer's GPU): a local event is recorded on each, the client's fence stream on the
// slot's device waits for them all, and the interprocess event is recorded on that stream. The
// daemon sees it complete only after every copy landed.
Result<Event *> record_commit_event(lf_client *c, const lf_writer &w) {
  Backend &b = *c->devices.backend();
  const int slot_device = w.device;
  Result<Event *> event =
      per_device(c->events, slot_device, [&] { return b.create_event(slot_device); });
  if (!event) return event.error();
  if (w.streams.size() == 1 && w.streams[0].first == slot_device) {
    if (Status st = b.record(*event.value(), w.streams[0].second); !st) return st.error();
    return event;
  }
  Result<Stream *> fence_stream =
      per_device(c->fence_streams, slot_device, [&] { return b.create_stream(slot_device); });
  if (!fence_stream) return fence_stream.error();
  for (const auto &[device, stream] : w.streams) {
    Result<Event *> fence =
        per_device(c->fences, device, [&] { return b.create_local_event(device); });
    if (!fence) return fence.error();
    // A wait takes the record made before it: the same event serves the next stream.
    if (Status st = b.record(*fence.value(), stream); !st) return st.error();
    if (Status st = b.wait_event_on(slot_device, *fence_stream.value(), *fence.value()); !st)
      return st.error();
  }
  if (Status st = b.record(*event.value(), *fence_stream.value()); !st) return st.error();
  return event;
}

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
    client::BlockRef block;
    uint64_t region_bytes = arena.data_bytes();
    if (rec.placement == static_cast<uint32_t>(ipc::Placement::kDevices)) {
      // The writer writes to the adapter's first device (the daemon copies to the others),
      // which this process must see; its ordinal here is what the views report.
      Status st = c->devices.refresh(arena);
      // Writers hold their own block: the client's hold on a daemon that went can go at once.
      c->devices.drop_retired([](uint64_t) { return false; });
      Result<std::byte *> opened = st ? c->devices.base(rec.primary_device)
                                      : Result<std::byte *>(st.error());
      if (!opened) {
        // The lease is granted: give it back rather than hold the slot until it expires.
        auto aborted = c->connection.call<ipc::msg::Empty>(ipc::msg::Abort{lease->lease});
        if (!aborted && outcome_unknown(aborted.error().code))
          c->unsent_aborts.push_back(lease->lease);
        Error e = opened.error();
        e.message = "adapter '" + std::string(name) + "': " + e.message;
        return fail(&c->last_error, e);
      }
      base = opened.value();
      device = c->devices.ordinal(rec.primary_device);
      block = c->devices.hold(rec.primary_device);
      region_bytes = arena.header().devices[rec.primary_device].bytes;
    } else {
      base = arena.data_at(0);
    }
    if (lease->data_offset > region_bytes || lease->slot_bytes > region_bytes - lease->data_offset) {
      return fail(&c->last_error, make_error(LF_E_PROTOCOL, "begin_write reply names memory outside the arena"));
    }
    std::byte *slot = base + lease->data_offset;
    auto *w = new lf_writer{c,      lease->lease, slot, slot, arena.tensors(rec), rec.tensor_count,
                            lease->slot_bytes, device, {}, std::move(block)};
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
    // One core writes memory at about the speed the daemon's check reads it; a slot of tens of
    // MiB is copied on several cores, as the check is, each taking the next tensor as it
    // finishes one (a core busy with the trainer's other threads leaves its share to the rest).
    uint64_t total = 0;
    for (size_t i = 0; i < w->tensor_count; ++i) total += srcs[i] != nullptr ? nbytes[i] : 0;
    ipc::for_each_item_shared(w->tensor_count, ipc::runs_for(total, w->tensor_count),
                              [&](size_t i) {
                                if (srcs[i] != nullptr)
                                  ipc::stream_copy(w->writable + w->tensors[i].offset, srcs[i],
                                                   nbytes[i]);
                                return true;
                              });
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

size_t lf_writer_slot_bytes(const lf_writer_t *w) { return w == nullptr ? 0 : w->slot_bytes; }

int lf_writer_copy_in_slot(lf_writer_t *w, const void *src, size_t nbytes) {
  if (w == nullptr) return LF_E_INVALID_ARGUMENT;
  if (src == nullptr) return invalid(&w->client->last_error, "src is NULL");
  if (nbytes != w->slot_bytes)
    return fail(&w->client->last_error,
                make_error(LF_E_INVALID_ARGUMENT, "the image is " + std::to_string(nbytes) +
                                                      " bytes, the slot " +
                                                      std::to_string(w->slot_bytes)));
  const auto *from = static_cast<const std::byte *>(src);
  if (w->device < 0) {
    // On several cores for a large slot, as lf_writer_copy_in_all.
    ipc::copy_in_runs(w->writable, from, nbytes, ipc::stream_copy);
    return LF_OK;
  }
  // The adapter's first device, on its default stream, waited for: as lf_writer_copy_in, so the
  // commit needs no event for it and the daemon's checks read exactly these bytes.
  return guarded(&w->client->last_error, [&] {
    Backend *b = w->client->devices.backend();
    Status st = b->copy(w->writable, from, nbytes, loraflip::device::CopyKind::kHostToDevice,
                        w->device, nullptr);
    if (st) st = b->synchronize(w->device, nullptr);
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
    Backend *b = w->client->devices.backend();
    const bool peer = src_device >= 0 && src_device != w->device;
    // Where the copy runs, which the commit must fence: a copy from host memory or from the
    // slot's device runs on `stream` of the slot's device; a peer copy on `stream`'s device,
    // or on the source device's default stream for NULL.
    int issuer = peer ? src_device : w->device;
    if (stream != nullptr) {
      Result<int> on = b->stream_device(stream);
      if (!on) return fail(&w->client->last_error, on.error());
      issuer = on.value();
      if (!peer && issuer != w->device)
        return fail(&w->client->last_error,
                    make_error(LF_E_INVALID_ARGUMENT,
                               "the stream belongs to device " + std::to_string(issuer) +
                                   ", but a copy into a slot of device " +
                                   std::to_string(w->device) + " from " +
                                   (src_device < 0 ? "host memory" : "that device") +
                                   " runs on a stream of the slot's device (or NULL)"));
    }
    const auto kind = src_device < 0 ? loraflip::device::CopyKind::kHostToDevice
                                     : loraflip::device::CopyKind::kDeviceToDevice;
    Status st = peer ? b->copy_peer(w->writable + d.offset, w->device, src, src_device, nbytes, stream)
                     : b->copy(w->writable + d.offset, src, nbytes, kind, w->device, stream);
    if (!st) return fail(&w->client->last_error, st.error());
    w->uses(issuer, stream);
    return LF_OK;
  });
}

int lf_writer_commit_after(lf_writer_t *w, int device, void *stream) {
  if (w == nullptr) return LF_E_INVALID_ARGUMENT;
  if (w->device < 0) return LF_OK;  // host views: the CPU's stores are done when they return
  return guarded(&w->client->last_error, [&] {
    Backend *b = w->client->devices.backend();
    int on = device;
    if (stream != nullptr) {
      Result<int> owner = b->stream_device(stream);
      if (!owner) return fail(&w->client->last_error, owner.error());
      if (device >= 0 && owner.value() != device)
        return fail(&w->client->last_error,
                    make_error(LF_E_INVALID_ARGUMENT,
                               "the stream belongs to device " + std::to_string(owner.value()) +
                                   ", not to device " + std::to_string(device)));
      on = owner.value();
    }
    if (on < 0) on = w->device;  // NULL and -1: the slot device's default stream
    Result<int> count = b->device_count();
    if (!count) return fail(&w->client->last_error, count.error());
    if (on >= count.value())
      return fail(&w->client->last_error,
                  make_error(LF_E_INVALID_ARGUMENT, "device " + std::to_string(on) +
                                                        " does not exist in this process"));
    w->uses(on, stream);
    return LF_OK;
  });
}

}  // extern "C"

namespace {

// Gives lease `lease` back to the daemon (the caller holds the client's mutex). When the
// daemon cannot be reached, the abort is sent again before the client's next begin_write.
int abort_lease(lf_client *c, uint64_t lease) {
  auto reply = c->connection.call<ipc::msg::Empty>(ipc::msg::Abort{lease});
  if (!reply && outcome_unknown(reply.error().code)) c->unsent_aborts.push_back(lease);
  return reply ? LF_OK : fail(&c->last_error, reply.error());
}

// lf_writer_commit and lf_writer_commit_as: `version` and `expected` (the checksum the slot
// must have) are absent for the daemon's next number and the writer's own checksum.
int commit_writer(lf_writer_t *w, unsigned flags, std::optional<uint64_t> version,
                  std::optional<uint64_t> expected, uint64_t *version_out) {
  if (w == nullptr) return LF_E_INVALID_ARGUMENT;
  lf_client *c = w->client;
  std::lock_guard lock(c->mutex);
  bool sent = false;  // whether the commit left for the daemon
  const int status = guarded(&c->last_error, [&] {
    ipc::msg::Commit q{w->lease, flags, std::nullopt, std::nullopt, version};
    if (!w->streams.empty()) {
      // The daemon waits on this event (without blocking) before it checks and flips.
      Result<Event *> event = record_commit_event(c, *w);
      if (!event) return fail(&c->last_error, event.error());
      ipc::msg::Binary64 handle;
      std::memcpy(handle.bytes.data(), event.value()->handle.bytes, handle.bytes.size());
      q.event = handle;
    }
    if (flags & LF_COMMIT_CHECKSUM) {
      // A checksum this library would compute reads the slot on the CPU: host slots only. One
      // the caller gives (lf_writer_commit_as) the daemon compares on the slot's device.
      if (w->device >= 0 && !expected)
        return fail(&c->last_error, make_error(LF_E_UNSUPPORTED, "LF_COMMIT_CHECKSUM covers "
                                               "host-placed adapters; device slots are checked "
                                               "with LF_COMMIT_CHECK_FINITE, or against a "
                                               "checksum given to lf_writer_commit_as"));
      q.checksum = expected ? *expected : loraflip::kernels::checksum_parallel(w->base, w->slot_bytes);
    }
    sent = true;
    auto reply = c->connection.call<ipc::msg::FlipResult>(q);
    if (!reply) return fail(&c->last_error, reply.error());
    if (version_out != nullptr) *version_out = reply->version;
    return LF_OK;
  });
  // Refused here, before the daemon heard of the commit: the lease would otherwise hold its
  // slot until it expires, with no writer left to end it. Given back as lf_writer_abort does
  // (the refusal stays the error the caller reads).
  if (status != LF_OK && !sent) {
    const std::string refusal = c->last_error;
    (void)guarded(&c->last_error, [&] { return abort_lease(c, w->lease); });
    c->last_error = refusal;
  }
  // The outcome is unknown: the writer stays, so that the caller can ask again (a repeated
  // commit answers the version the first one made) or abort.
  if (!outcome_unknown(status)) delete w;
  return status;
}

}  // namespace

extern "C" {

int lf_writer_commit(lf_writer_t *w, unsigned flags, uint64_t *version_out) {
  return commit_writer(w, flags, std::nullopt, std::nullopt, version_out);
}

int lf_writer_commit_as(lf_writer_t *w, uint64_t version, unsigned flags, uint64_t checksum,
                        uint64_t *version_out) {
  return commit_writer(w, flags, version,
                       (flags & LF_COMMIT_CHECKSUM) ? std::optional<uint64_t>(checksum)
                                                    : std::nullopt,
                       version_out);
}

int lf_writer_abort(lf_writer_t *w) {
  if (w == nullptr) return LF_OK;
  lf_client *c = w->client;
  std::lock_guard lock(c->mutex);
  const int status = guarded(&c->last_error, [&] { return abort_lease(c, w->lease); });
  delete w;
  return status;
}

}  // extern "C"
