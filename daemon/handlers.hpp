// Control requests in, replies out: decoding with limits, argument checks, one call into the
// Registry, encoding. Kept apart from the ZeroMQ loop so that tests (and fuzzers) can feed any
// bytes straight in.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/registry.hpp"
#include "ipc/protocol.hpp"

namespace loraflip::daemon {

struct DaemonIdentity {
  std::string instance;
  std::string runtime_dir;
  std::string version;
  uint64_t started_unix_ns = 0;
};

class RequestHandler {
 public:
  RequestHandler(Registry &registry, DaemonIdentity identity)
      : registry_(registry), identity_(std::move(identity)) {}

  // Answers one request. Never throws; a reply is always produced, even for garbage, except
  // for a commit whose device copies are still running: then *deferred is set, nothing changed,
  // and the caller hands the same request in again later. Flips that the request caused are
  // appended to `events` for the events socket.
  std::string handle(std::string_view request, uint64_t now_ns, std::vector<FlipEvent> *events,
                     bool *deferred = nullptr);

  // The error reply to a request the daemon will not serve (a peer outside the access lists):
  // it carries the request's id, so the client reports it instead of waiting for its reply.
  // Nothing else of the request is looked at.
  std::string refuse(std::string_view request, const Error &error);

  uint64_t requests() const { return requests_; }
  uint64_t errors() const { return errors_; }

 private:
  std::string dispatch(std::string_view op, const ipc::MapView &args, uint64_t id,
                       uint64_t now_ns, std::vector<FlipEvent> *events, bool *deferred);
  std::string hello(const ipc::MapView &args, uint64_t id);
  std::string create(const ipc::MapView &args, uint64_t id);
  std::string list(uint64_t id);
  std::string info(const ipc::MapView &args, uint64_t id);
  std::string stats(uint64_t id);
  std::string error_reply(uint64_t id, const Error &error);

  Registry &registry_;
  DaemonIdentity identity_;
  uint64_t requests_ = 0;
  uint64_t errors_ = 0;
  uint64_t events_published_ = 0;  // flip events handed to the events socket
};

}  // namespace loraflip::daemon
