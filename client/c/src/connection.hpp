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

#include "ipc/protocol.hpp"
#include "ipc/result.hpp"

namespace loraflip::client {

struct Hello {
  std::string instance;
  std::string version;
  std::string control_segment;
  std::string data_segment;
};

class Connection {
 public:
  // Connects and says hello (protocol check). timeout_ms bounds every request.
  static Result<Connection> open(const std::string &runtime_dir, int timeout_ms);

  // Sends {op, id, args} (args: a complete msgpack map) and returns the decoded reply's
  // "result" map, or the daemon's error as an Error.
  Result<msgpack::object_handle> request(std::string_view op, std::string_view args);

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

// The msgpack object for "result" inside a reply handle (valid while the handle lives).
const msgpack::object &result_of(const msgpack::object_handle &reply);

}  // namespace loraflip::client
