// Internal to the C ABI's sources (api.cpp, api_writer.cpp, api_reader.cpp, api_events.cpp),
// which together implement include/loraflip.h: the client handle that the control calls and the
// writer share, and the discipline every exported function follows (catch everything, report a
// status, leave outputs untouched on failure). Nothing else includes this header.
#pragma once

#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "connection.hpp"
#include "devices.hpp"
#include "ipc/arena.hpp"
#include "ipc/result.hpp"
#include "loraflip.h"

// The names the api files use unqualified (this header is theirs alone).
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
  // What a commit of asynchronous work uses, per device ordinal, made at the first commit that
  // needs it (a client may write adapters placed on different devices, and cudaEventRecord
  // refuses an event of one device on a stream of another):
  //   events: the interprocess event the daemon waits on, recorded on a stream of the slot's
  //     device after the write's work;
  //   fences: a local event recorded on each stream the write used, which `fence_streams`
  //     waits on, when the work went on more than one stream or on another device's;
  //   fence_streams: a stream of the slot's device that waits for all of them, where the
  //     interprocess event is then recorded.
  std::unordered_map<int32_t, loraflip::device::Event> events, fences;
  std::unordered_map<int32_t, loraflip::device::Stream> fence_streams;
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
  ~lf_client();  // destroys the events and streams above (api_writer.cpp)
  lf_client(const lf_client &) = delete;
  lf_client &operator=(const lf_client &) = delete;
};

namespace loraflip::client::detail {

// The message of the last failed call that has no handle to hold it (the opens, the spec
// calls): lf_last_error_message. Defined in api.cpp.
extern thread_local std::string t_last_error;

// Whether a request's outcome is unknown: it may or may not have reached the daemon (the
// daemon was restarting, or slow). Anything else is the daemon's answer.
inline bool outcome_unknown(int status) {
  return status == LF_E_TIMEOUT || status == LF_E_CONNECTION;
}

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

inline int fail(std::string *last_error, const Error &e) {
  if (last_error) *last_error = e.message;
  return e.code;
}

inline int invalid(std::string *last_error, const char *message) {
  if (last_error) *last_error = message;
  return LF_E_INVALID_ARGUMENT;
}

// A writer's or a pin's view of tensor `d` in the slot at `base`.
inline int fill_view(const ipc::TensorDesc &d, const std::byte *base, uint64_t version,
                     int32_t device, lf_tensor_view_t *out) {
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
inline int64_t tensor_index(const ipc::TensorDesc *tensors, uint32_t count, const char *name) {
  for (uint32_t i = 0; i < count; ++i)
    if (std::strncmp(tensors[i].name, name, sizeof tensors[i].name) == 0) return i;
  return -1;
}

}  // namespace loraflip::client::detail

using loraflip::client::detail::fail;
using loraflip::client::detail::fill_view;
using loraflip::client::detail::guarded;
using loraflip::client::detail::invalid;
using loraflip::client::detail::outcome_unknown;
using loraflip::client::detail::t_last_error;
using loraflip::client::detail::tensor_index;
