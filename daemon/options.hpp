// Command-line options of loraflipd.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ipc/arena.hpp"
#include "ipc/result.hpp"

namespace loraflip::daemon {

struct Options {
  ipc::ArenaConfig arena;
  std::string runtime_dir;     // empty: ipc::default_runtime_dir(arena.instance)
  std::string group;           // empty: the daemon's own group
  // Users and groups (names or ids) allowed to send control requests; both empty: everyone
  // who can open the control socket.
  std::vector<std::string> allow_users;
  std::vector<std::string> allow_groups;
  std::string log_level = "info";
  uint32_t reap_interval_ms = 100;  // design.md asks for at most 250
  std::vector<int> devices;           // GPU ordinals to serve; empty: host memory only
  std::string device_backend = "cuda";  // "cuda", or "host" (shared memory stands in for GPUs)
  uint64_t device_arena_bytes = uint64_t{1} << 30;  // per device
  bool remove_arena = false;        // remove the instance's arena and exit
  bool show_help = false;
  bool show_version = false;
};

// Parses argv; an error names the bad option. Does not touch the system.
Result<Options> parse_options(const std::vector<std::string> &args);
std::string usage();
// "64M", "1G", "4096" -> bytes.
Result<uint64_t> parse_size(const std::string &text);

}  // namespace loraflip::daemon
