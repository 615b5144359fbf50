// One control connection to a daemon: a ZeroMQ DEALER that sends a request and waits for the
// reply with the same id. A DEALER (not REQ) so that a timed-out request does not wedge the
// socket: a late reply is recognised by its id and dropped.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <msgpack.hpp>
#include <zmq.hpp>

#include "ipc/messages.hpp"
#include "ipc/protocol.hpp"
#include "ipc/result.hpp"

namespace loraflip::client {

struct Hello {
  std::string instance;
  std::string version;
  std::string control_segment;
  std::string data_segment;
};

// The msgpack object for "result" inside a reply handle (valid while the handle lives).
const msgpack::object &result_of(const msgpack::object_handle &reply);

class Connection {
 public:
  // Connects and says hello (protocol check). timeout_ms bounds every request.
  static Result<Connection> open(const std::string &runtime_dir, int timeout_ms);

  // Sends {op, id, args} (args: a complete msgpack map) and returns the decoded reply's
  // "result" map, or the daemon's error as an Error. A request over the daemon's message limit
  // fails here with LF_E_TOO_LARGE, unsent (the daemon would drop the connection).
  Result<msgpack::object_handle> request(std::string_view op, std::string_view args);

  // The typed form: request Q (ipc/messages.hpp), its result decoded as R by the same schema
  // the daemon encoded it with.
  template <ipc::msg::Message R, ipc::msg::Message Q>
  Result<R> call(const Q &args) {
    Result<msgpack::object_handle> reply = request(Q::kOp, ipc::msg::encode_map(args));
    if (!reply) return reply.error();
    return ipc::msg::decode_map<R>(result_of(reply.value()), std::string(Q::kOp) + " result");
  }

  const Hello &hello() const { return hello_; }
  const std::string &runtime_dir() const { return runtime_dir_; }

 private:
  Connection() = default;
  std::string runtime_dir_;
  int timeout_ms_ = 5000;
  uint64_t next_id_ = 1;
  Hello hello_;
  // Declared in this order so the socket closes before its context.
  std::unique_ptr<zmq::context_t> context_;
  std::unique_ptr<zmq::socket_t> socket_;
};

// The runtime directory a NULL argument means.
std::string resolve_runtime_dir(const char *runtime_dir);


}  // namespace loraflip::client
