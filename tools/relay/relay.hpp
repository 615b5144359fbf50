// loraflip-relay: mirrors adapters from one node's loraflipd to others over ZeroMQ TCP with
// CurveZMQ. `serve` runs beside the upstream daemon and answers followers; `follow` runs beside
// a follower's daemon and writes each version it receives through the normal writer API, under
// the upstream's version number (lf_writer_commit_as) and checksum. The daemons stay unaware
// of the network. main.cpp parses options; the logic is here so that tests could link it.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "ipc/result.hpp"

namespace loraflip::relay {

struct ServeOptions {
  std::string runtime_dir;          // the local (upstream) daemon's
  std::string listen;               // tcp://ADDR:PORT
  std::string secret_key;           // this node's key file (PREFIX.key)
  std::string allow;                // the followers' public keys
  std::vector<std::string> adapters;  // empty: every adapter of the daemon
  bool insecure = false;            // plain TCP, loopback only
};

struct FollowOptions {
  std::string runtime_dir;          // the local (follower) daemon's
  std::string upstream;             // tcp://HOST:PORT
  std::string server_key;           // the upstream's public key file
  std::string secret_key;           // this node's key file
  std::vector<std::string> adapters;  // empty: every adapter the upstream serves
  bool insecure = false;
  uint64_t chunk_bytes = uint64_t{1} << 20;  // per fetch: sized for the link
  uint32_t window = 8;              // fetches in flight: the credit a follower grants itself
  std::string status_file;          // empty: <runtime_dir>/relay-follow.json
  // Where the adapters this follower creates live: "host", or "cuda:N[,M...]" (the local
  // daemon's devices; the first is written to). An adapter that exists already must be placed
  // so too, or it is not followed.
  std::string placement = "host";
};

// Refuses anything but tcp://, and plain TCP (insecure) anywhere but on a loopback address.
Status check_endpoint(const std::string &endpoint, bool insecure);
// Refuses a placement that is not "host" or "cuda:N[,M...]" (as lf_spec_set_placement takes
// it, "device:" included), naming what is wrong.
Status check_placement(const std::string &placement);
// Whether two placements are the same devices with the same first one: the daemon's info lists
// the copies in its own order ("cuda:0,2,1" is shown as "cuda:0,1,2").
bool same_placement(const std::string &a, const std::string &b);

// Run until `stop` is set (a signal); the exit code of the program.
int serve(const ServeOptions &options, const std::atomic<bool> &stop);
int follow(const FollowOptions &options, const std::atomic<bool> &stop);

}  // namespace loraflip::relay
