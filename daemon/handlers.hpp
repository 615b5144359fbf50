// Control requests in, replies out: one declared schema per message (ipc/messages.hpp) decodes
// and checks the request, one call into the Registry acts on it, the reply is encoded from its
// declared struct. Kept apart from the ZeroMQ loop so that tests (and fuzzers) can feed any
// bytes straight in.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/access.hpp"
#include "daemon/registry.hpp"
#include "ipc/messages.hpp"

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

  // Answers one request from `peer`, the sender as the kernel names it (SO_PEERCRED, pid in
  // the daemon's pid namespace; nullopt when the transport gives none: then every request that
  // acts for a process is refused). Never throws; a reply is always produced, even for
  // garbage, and carries the request's id whenever the bytes let it be read. The one exception
  // is a commit whose device copies are still running: then *deferred is set, nothing changed,
  // and the caller hands the same request in again later. Flips that the request caused are
  // appended to `events` for the events socket.
  std::string handle(std::string_view request, const std::optional<PeerCredentials> &peer,
                     uint64_t now_ns, std::vector<FlipEvent> *events, bool *deferred = nullptr);

  // A request as the ROUTER received it, less the routing id. It must be the empty delimiter
  // (which REQ sockets send, and DEALERs must) and one body frame; any other shape gets an
  // LF_E_PROTOCOL reply (under the last frame's id, when it can be read) and nothing else is
  // done. Otherwise: handle(body, ...).
  std::string handle_frames(const std::vector<std::string_view> &frames,
                            const std::optional<PeerCredentials> &peer, uint64_t now_ns,
                            std::vector<FlipEvent> *events, bool *deferred = nullptr);

  // The error reply to a request the daemon will not serve (a peer outside the access lists,
  // a message of the wrong shape): it carries the request's id when one can be read, so the
  // client reports it instead of waiting for its reply. Nothing else of the request is used.
  std::string refuse(std::string_view request, const Error &error);

  uint64_t requests() const { return requests_; }
  uint64_t errors() const { return errors_; }
  // The first LF_E_DEVICE error a request met: a GPU's context failed for good (a sticky CUDA
  // error), so every later device call of this process fails too. The server then exits, and
  // the service manager starts a fresh daemon, which restores the adapters on new contexts.
  const std::optional<Error> &device_lost() const { return device_lost_; }

 private:
  std::string dispatch(const ipc::msg::Envelope &envelope, const msgpack::object &args,
                       const std::optional<PeerCredentials> &peer, uint64_t now_ns,
                       std::vector<FlipEvent> *events, bool *deferred);
  std::string hello(const ipc::msg::Hello &q, uint64_t id);
  std::string create(const ipc::msg::CreateAdapter &q, uint64_t id);
  std::string list(uint64_t id);
  std::string info(const ipc::msg::Info &q, uint64_t id);
  std::string stats(uint64_t id);
  std::string flip_reply(uint64_t id, Result<FlipEvent> flip, bool with_checksum,
                         std::vector<FlipEvent> *events);
  std::string error_reply(uint64_t id, const Error &error);

  Registry &registry_;
  DaemonIdentity identity_;
  uint64_t requests_ = 0;
  uint64_t errors_ = 0;
  uint64_t events_published_ = 0;  // flip events handed to the events socket
  std::optional<Error> device_lost_;
};

}  // namespace loraflip::daemon
