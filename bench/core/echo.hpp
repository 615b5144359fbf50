// The flip's baseline: a bare ZeroMQ DEALER -> ROUTER round trip over ipc:// to an echo process,
// the least any request to the daemon can cost.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

namespace lfbench::core {

// The echo process's body: a ROUTER bound at `endpoint` that sends every message back as it
// came. Sets `ready` (shared memory) once bound; runs until killed.
int echo_main(const std::string &endpoint, std::atomic<uint32_t> &ready);

// This process's side: a DEALER connected to the echo process, with its own ZeroMQ context.
class EchoRoundTrip {
 public:
  explicit EchoRoundTrip(const std::string &endpoint);
  ~EchoRoundTrip();
  EchoRoundTrip(const EchoRoundTrip &) = delete;
  EchoRoundTrip &operator=(const EchoRoundTrip &) = delete;

  // One message there and back: its wall time in ns.
  uint64_t time_ns();

 private:
  void *ctx_ = nullptr;
  void *dealer_ = nullptr;
  // About the size of a commit request (op, id, lease, flags as msgpack).
  const std::string payload_ = std::string(48, 'x');
};

}  // namespace lfbench::core
