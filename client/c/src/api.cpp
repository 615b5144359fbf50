// The C ABI. Every function catches everything: no exception crosses into the caller.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <unistd.h>
#include <unordered_map>
#include <vector>

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "connection.hpp"
#include "devices.hpp"
#include "ipc/arena.hpp"
#include "ipc/dtype.hpp"
#include "ipc/paths.hpp"
#include "ipc/proc.hpp"
#include "ipc/schema.hpp"
#include "kernels/validate.hpp"
#include "loraflip.h"
#include "reader.hpp"

using loraflip::Error;
using loraflip::make_error;
using loraflip::Result;
using loraflip::Status;
namespace ipc = loraflip::ipc;
namespace client = loraflip::client;

struct lf_client {
  std::mutex mutex;  // serializes every call: one socket, one reply at a time
  client::Connection connection;
  std::optional<ipc::Arena> arena;  // data mapped read-write, made at the first begin_write
  client::DeviceMap devices;        // opened at the first write of a device-placed adapter
  std::optional<loraflip::device::Event> event;  // recorded after asynchronous copies
  // Leases whose abort could not reach the daemon: sent again before the next write, so a
  // slot never stays held for a writer that gave it up (caller holds `mutex`).
  std::vector<uint64_t> unsent_aborts;
  // Begins whose reply was lost, per adapter: the next begin of that adapter sends the same
  // token, and the daemon answers the lease it made then (caller holds `mutex`).
  std::unordered_map<std::string, uint64_t> unanswered_begins;
  // Odd and stepped by 2: never 0 (no token), never the same twice on one client.
  uint64_t next_token = std::random_device{}() | uint64_t{std::random_device{}()} << 32 | 1;
  std::string last_error;
  explicit lf_client(client::Connection c) : connection(std::move(c)) {}
};

struct lf_spec {
  std::vector<ipc::TensorSpec> tensors;
  int rank = 0;
  double alpha = 0;
  bool rank_set = false;
  std::string target_modules;
  bool use_rslora = false;
  std::string metadata;
  int slots = 0;
  int history = -1;
  std::string placement = "host";
};

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

struct lf_events {
  zmq::context_t context{1};
  zmq::socket_t socket{context, zmq::socket_type::sub};
  std::unordered_map<std::string, uint64_t> last_seq;  // per adapter, for lf_event_t::missed
};

namespace {

thread_local std::string t_last_error;

// Whether a request's outcome is unknown: it may or may not have reached the daemon (the
// daemon was restarting, or slow). Anything else is the daemon's answer.
bool outcome_unknown(int status) { return status == LF_E_TIMEOUT || status == LF_E_CONNECTION; }

// Runs `body` (which returns a status), turning any exception into LF_E_INTERNAL.
template <typename F>
int guarded(std::string *last_error, F &&body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc &) {
    if (last_error) *last_error = "out of memory";
    return LF_E_SYSTEM;
  } catch (const std::exception &e) {
    if (last_error) *last_error = std::string("internal error: ") + e.what();
    return LF_E_INTERNAL;
  } catch (...) {
    if (last_error) *last_error = "internal error";
    return LF_E_INTERNAL;
  }
}

int fail(std::string *last_error, const Error &e) {
  if (last_error) *last_error = e.message;
  return e.code;
}

int invalid(std::string *last_error, const char *message) {
  if (last_error) *last_error = message;
  return LF_E_INVALID_ARGUMENT;
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

char *dup_string(const std::string &s) {
  char *p = static_cast<char *>(std::malloc(s.size() + 1));
  if (p != nullptr) std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

// Sends a request and returns its result as JSON.
template <class Q>
int request_json(lf_client *c, const Q &args, char **json_out) {
  auto reply = c->connection.request(Q::kOp, ipc::msg::encode_map(args));
  if (!reply) return fail(&c->last_error, reply.error());
  char *json = dup_string(ipc::to_json(client::result_of(reply.value())));
  if (json == nullptr) return fail(&c->last_error, make_error(LF_E_SYSTEM, "out of memory"));
  *json_out = json;
  return LF_OK;
}

int fill_view(const ipc::TensorDesc &d, const std::byte *base, uint64_t version, int32_t device,
              lf_tensor_view_t *out) {
  lf_tensor_view_t v{};
  v.data = const_cast<std::byte *>(base + d.offset);
  v.name = d.name;
  v.dtype = d.dtype;
  v.ndim = d.ndim;
  for (int i = 0; i < d.ndim && i < LF_MAX_DIMS; ++i) v.shape[i] = d.shape[i];
  v.nbytes = d.nbytes;
  v.version = version;
  v.device = device;
  *out = v;
  return LF_OK;
}

// Index of tensor `name`, or -1.
int64_t tensor_index(const ipc::TensorDesc *tensors, uint32_t count, const char *name) {
  for (uint32_t i = 0; i < count; ++i)
    if (std::strncmp(tensors[i].name, name, sizeof tensors[i].name) == 0) return i;
  return -1;
}

// A request that names an adapter and answers with a flip (drop, rollback).
template <class Q>
int flip_request(lf_client_t *c, const char *name, Q q) {
  if (c == nullptr) return LF_E_INVALID_ARGUMENT;
  std::lock_guard lock(c->mutex);
  return guarded(&c->last_error, [&] {
    if (name == nullptr) return invalid(&c->last_error, "name is NULL");
    q.name = name;
    auto reply = c->connection.call<ipc::msg::FlipResult>(q);
    return reply ? LF_OK : fail(&c->last_error, reply.error());
  });
}

// list and stats: a request without arguments whose result comes back as JSON.
template <class Q>
int request_json_no_args(lf_client_t *c, char **json_out) {
  if (c == nullptr) return LF_E_INVALID_ARGUMENT;
  std::lock_guard lock(c->mutex);
  return guarded(&c->last_error, [&] {
    if (json_out == nullptr) return invalid(&c->last_error, "json_out is NULL");
    return request_json(c, Q{}, json_out);
  });
}
}  // namespace

extern "C" {

const char *lf_strerror(int status) {
  switch (status) {
    case LF_OK: return "success";
    case LF_E_INVALID_ARGUMENT: return "invalid argument";
    case LF_E_NOT_FOUND: return "not found";
    case LF_E_EXISTS: return "already exists";
    case LF_E_ARENA_FULL: return "arena full";
    case LF_E_NO_FREE_SLOT: return "no free slot";
    case LF_E_TABLE_FULL: return "table full";
    case LF_E_PROTOCOL: return "malformed message";
    case LF_E_PROTOCOL_VERSION: return "protocol version mismatch";
    case LF_E_LAYOUT_MISMATCH: return "arena layout mismatch";
    case LF_E_TIMEOUT: return "timed out";
    case LF_E_CONNECTION: return "daemon unreachable";
    case LF_E_LEASE: return "write lease unknown or expired";
    case LF_E_VALIDATION: return "validation failed";
    case LF_E_NO_VERSION: return "no such version";
    case LF_E_TOO_LARGE: return "too large";
    case LF_E_SYSTEM: return "system error";
    case LF_E_INTERNAL: return "internal error";
    case LF_E_PINS_FULL: return "reader holds too many pins";
    case LF_E_STALE: return "adapter dropped";
    case LF_E_UNSUPPORTED: return "unsupported";
    case LF_E_PERMISSION: return "permission denied";
    case LF_E_UNKNOWN_OP: return "unknown operation";
    default: return "unknown error";
  }
}

size_t lf_dtype_size(int dtype) { return ipc::dtype_size(dtype); }
const char *lf_dtype_name(int dtype) { return ipc::dtype_name(dtype); }
void lf_free(void *p) { std::free(p); }
const char *lf_last_error_message(void) { return t_last_error.c_str(); }

/* ---- client ---- */

int lf_client_open(const char *runtime_dir, int timeout_ms, lf_client_t **out) {
  return guarded(&t_last_error, [&] {
    if (out == nullptr) return invalid(&t_last_error, "out is NULL");
    auto connection = client::Connection::open(client::resolve_runtime_dir(runtime_dir), timeout_ms);
    if (!connection) return fail(&t_last_error, connection.error());
    *out = new lf_client(std::move(connection).value());
    return LF_OK;
  });
}

void lf_client_close(lf_client_t *c) { delete c; }

const char *lf_client_last_error(const lf_client_t *c) {
  return c == nullptr ? "client is NULL" : c->last_error.c_str();
}

int lf_spec_new(lf_spec_t **out) {
  return guarded(&t_last_error, [&] {
    if (out == nullptr) return invalid(&t_last_error, "out is NULL");
    *out = new lf_spec();
    return LF_OK;
  });
}

void lf_spec_free(lf_spec_t *spec) { delete spec; }

int lf_spec_add_tensor(lf_spec_t *spec, const char *name, int dtype, int ndim, const int64_t *shape) {
  return guarded(&t_last_error, [&] {
    if (spec == nullptr || name == nullptr) return invalid(&t_last_error, "spec or name is NULL");
    if (ndim < 0 || ndim > LF_MAX_DIMS || (ndim > 0 && shape == nullptr))
      return invalid(&t_last_error, "ndim must be 0..LF_MAX_DIMS with a shape array");
    if (Status s = ipc::check_tensor_name(name); !s) return fail(&t_last_error, s.error());
    std::vector<int64_t> dims(shape, shape + ndim);
    if (auto bytes = ipc::tensor_bytes(dtype, dims); !bytes) return fail(&t_last_error, bytes.error());
    spec->tensors.push_back({name, dtype, std::move(dims)});
    return LF_OK;
  });
}

int lf_spec_set_lora(lf_spec_t *spec, int rank, double alpha, const char *target_modules,
                     int use_rslora) {
  return guarded(&t_last_error, [&] {
    if (spec == nullptr) return invalid(&t_last_error, "spec is NULL");
    if (rank < 0 || rank > 65536) return invalid(&t_last_error, "rank must be 0..65536");
    spec->rank = rank;
    spec->alpha = alpha;
    spec->rank_set = true;
    spec->target_modules = target_modules == nullptr ? "" : target_modules;
    spec->use_rslora = use_rslora != 0;
    return LF_OK;
  });
}

int lf_spec_set_metadata(lf_spec_t *spec, const char *metadata) {
  return guarded(&t_last_error, [&] {
    if (spec == nullptr || metadata == nullptr) return invalid(&t_last_error, "spec or metadata is NULL");
    if (std::strlen(metadata) > 65536)
      return fail(&t_last_error, make_error(LF_E_TOO_LARGE, "metadata is over 64 KiB"));
    spec->metadata = metadata;
    return LF_OK;
  });
}

int lf_spec_set_slots(lf_spec_t *spec, int slots, int history) {
  return guarded(&t_last_error, [&] {
    if (spec == nullptr) return invalid(&t_last_error, "spec is NULL");
    if (slots < 0 || slots > 64 || history < -1 || history > 62)
      return invalid(&t_last_error, "slots must be 0..64 and history -1..62");
    spec->slots = slots;
    spec->history = history;
    return LF_OK;
  });
}

int lf_spec_set_placement(lf_spec_t *spec, const char *placement) {
  return guarded(&t_last_error, [&] {
    if (spec == nullptr || placement == nullptr) return invalid(&t_last_error, "spec or placement is NULL");
    if (std::strlen(placement) > 64) return invalid(&t_last_error, "placement is too long");
    spec->placement = placement;
    return LF_OK;
  });
}

int lf_client_create_adapter(lf_client_t *c, const char *name, const lf_spec_t *spec) {
  if (c == nullptr) return LF_E_INVALID_ARGUMENT;
  std::lock_guard lock(c->mutex);
  return guarded(&c->last_error, [&] {
    if (name == nullptr || spec == nullptr) return invalid(&c->last_error, "name or spec is NULL");
    ipc::msg::CreateAdapter q;
    q.name = name;
    q.placement = spec->placement;
    for (const ipc::TensorSpec &t : spec->tensors)
      q.tensors.push_back({t.name, ipc::msg::DType{t.dtype}, t.shape});
    q.metadata = spec->metadata;
    q.slots = static_cast<uint64_t>(spec->slots);
    q.history = spec->history;
    if (spec->rank_set) {
      ipc::msg::LoraArg lora;
      lora.rank = static_cast<uint64_t>(spec->rank);
      lora.alpha = spec->alpha;
      lora.use_rslora = spec->use_rslora;
      lora.target_modules = ipc::msg::ModuleList::split(spec->target_modules);
      q.lora = std::move(lora);
    }
    auto reply = c->connection.call<ipc::msg::CreateResult>(q);
    return reply ? LF_OK : fail(&c->last_error, reply.error());
  });
}


int lf_client_drop_adapter(lf_client_t *c, const char *name) {
  return flip_request(c, name, ipc::msg::DropAdapter{});
}

int lf_client_rollback(lf_client_t *c, const char *name, uint64_t version) {
  return flip_request(c, name, ipc::msg::Rollback{{}, version});
}

int lf_client_list(lf_client_t *c, char **json_out) {
  return request_json_no_args<ipc::msg::List>(c, json_out);
}

int lf_client_info(lf_client_t *c, const char *name, char **json_out) {
  if (c == nullptr) return LF_E_INVALID_ARGUMENT;
  std::lock_guard lock(c->mutex);
  return guarded(&c->last_error, [&] {
    if (name == nullptr || json_out == nullptr) return invalid(&c->last_error, "name or json_out is NULL");
    return request_json(c, ipc::msg::Info{name}, json_out);
  });
}

int lf_client_stats(lf_client_t *c, char **json_out) {
  return request_json_no_args<ipc::msg::Stats>(c, json_out);
}

/* ---- writer ---- */

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
    std::memcpy(w->writable + d.offset, src, nbytes);
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

int lf_writer_copy_in_async(lf_writer_t *w, size_t index, const void *src, size_t nbytes,
                            int src_device, void *stream) {
  if (w == nullptr || (src == nullptr && nbytes != 0)) return LF_E_INVALID_ARGUMENT;
  if (index >= w->tensor_count) return LF_E_NOT_FOUND;
  const ipc::TensorDesc &d = w->tensors[index];
  if (nbytes != d.nbytes) return LF_E_INVALID_ARGUMENT;
  if (w->device < 0) {
    if (src_device >= 0) return invalid(&w->client->last_error, "host-placed adapters take host memory");
    std::memcpy(w->writable + d.offset, src, nbytes);
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
      if (!c->event) {
        auto made = b->create_event(w->device);
        if (!made) return fail(&c->last_error, made.error());
        c->event = made.value();
      }
      if (Status st = b->record(*c->event, w->stream); !st) return fail(&c->last_error, st.error());
      ipc::msg::Binary64 handle;
      std::memcpy(handle.bytes.data(), c->event->handle.bytes, handle.bytes.size());
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

/* ---- reader ---- */

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

int lf_pin_tensor_on_device(const lf_pin_t *pin, size_t index, int device, lf_tensor_view_t *out) {
  if (pin == nullptr || pin->owner == nullptr || out == nullptr) return LF_E_INVALID_ARGUMENT;
  if (index >= pin->tensor_count) return LF_E_NOT_FOUND;
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

/* ---- events ---- */

int lf_events_open(const char *runtime_dir, const char *adapter, lf_events_t **out) {
  return guarded(&t_last_error, [&] {
    if (out == nullptr) return invalid(&t_last_error, "out is NULL");
    if (adapter != nullptr) {
      if (Status s = ipc::check_adapter_name(adapter); !s) return fail(&t_last_error, s.error());
    }
    const std::string dir = client::resolve_runtime_dir(runtime_dir);
    if (::access((dir + "/events").c_str(), F_OK) != 0)
      return fail(&t_last_error, make_error(LF_E_CONNECTION, "no loraflipd events socket in " + dir));
    auto events = std::make_unique<lf_events>();
    events->socket.set(zmq::sockopt::linger, 0);
    events->socket.set(zmq::sockopt::maxmsgsize, int64_t{1} << 20);
    events->socket.set(zmq::sockopt::subscribe,
                       adapter == nullptr ? std::string(ipc::kEventTopicAll) : ipc::event_topic(adapter));
    events->socket.connect(ipc::events_endpoint(dir));
    *out = events.release();
    return LF_OK;
  });
}

void lf_events_close(lf_events_t *events) { delete events; }

int lf_events_next_event(lf_events_t *events, int timeout_ms, lf_event_t *out) {
  if (events == nullptr || out == nullptr) return LF_E_INVALID_ARGUMENT;
  return guarded(nullptr, [&] {
    zmq::pollitem_t item{events->socket.handle(), 0, ZMQ_POLLIN, 0};
    for (;;) {
      if (zmq::poll(&item, 1, std::chrono::milliseconds(timeout_ms)) == 0) return LF_E_TIMEOUT;
      std::vector<zmq::message_t> frames;
      if (!zmq::recv_multipart(events->socket, std::back_inserter(frames), zmq::recv_flags::dontwait))
        continue;
      // Anything that is not a well-formed event (from a newer or broken sender) is skipped.
      if (frames.size() != 2) continue;
      auto decoded = ipc::decode(frames[1].data(), frames[1].size());
      if (!decoded) continue;
      auto view = ipc::MapView::of(decoded->get(), "event");
      if (!view) continue;
      auto name = view->str("adapter");
      auto version = view->uint("version");
      if (!name || !version || name->size() > LF_MAX_ADAPTER_NAME) continue;
      lf_event_t e{};
      std::memcpy(e.adapter, name->data(), name->size());
      e.version = version.value();
      e.previous = view->uint_or("previous", 0).value_or(0);
      e.unix_ns = view->uint_or("unix_ns", 0).value_or(0);
      e.seq = view->uint_or("seq", 0).value_or(0);
      const std::string_view kind = view->str("kind").value_or(std::string_view());
      e.kind = kind == "commit" ? LF_EVENT_COMMIT
               : kind == "rollback" ? LF_EVENT_ROLLBACK
               : kind == "drop" ? LF_EVENT_DROP
                                : 0;
      // A gap in this adapter's numbers is what the socket dropped; a smaller number means the
      // adapter was re-created (numbering starts again), not that anything was lost.
      uint64_t &last = events->last_seq[std::string(name.value())];
      if (e.seq != 0 && last != 0 && e.seq > last + 1) e.missed = e.seq - last - 1;
      if (e.seq != 0) last = e.seq;
      *out = e;
      return LF_OK;
    }
  });
}

}  // extern "C"
