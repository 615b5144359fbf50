// The C ABI, part one: status texts, the client handle, adapter specs and the control calls
// (create, drop, rollback, list, info, stats). The writer, the reader and its pins, and the
// event subscription live in api_writer.cpp, api_reader.cpp and api_events.cpp; the discipline
// they all follow is in api_internal.hpp. Every function catches everything: no exception
// crosses into the caller.
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "api_internal.hpp"
#include "connection.hpp"
#include "ipc/dtype.hpp"
#include "ipc/messages.hpp"
#include "ipc/protocol.hpp"
#include "ipc/schema.hpp"
#include "loraflip.h"

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

namespace loraflip::client::detail {
thread_local std::string t_last_error;
}  // namespace loraflip::client::detail

namespace {

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
    case LF_E_DEVICE: return "GPU context failed";
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

}  // extern "C"
