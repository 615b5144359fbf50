// Who may send control requests. The sockets' file mode and group already keep out everyone
// outside the group; --allow-user / --allow-group narrow it further to named users and groups,
// checked per connection from the kernel's credentials of the peer (SO_PEERCRED, which libzmq
// reports in each message's "Peer-Address" property), so a client cannot claim another id.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ipc/result.hpp"

namespace loraflip::daemon {

struct PeerCredentials {
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t pid = 0;
};

// Parses libzmq's Peer-Address of an IPC connection, "<host>:<uid>:<gid>:<pid>" (the host
// part may be empty). nullopt for anything else, such as a TCP address.
std::optional<PeerCredentials> parse_peer_address(std::string_view address);

// The supplementary groups of process `pid` from /proc/<pid>/status, or nullopt when the
// process is gone or now runs as another user than `uid` (a reused pid).
std::optional<std::vector<uint32_t>> process_groups(uint32_t pid, uint32_t uid);

// A user or group given by name or number, as a numeric id; an error names the unknown one.
Result<uint32_t> user_id(const std::string &name_or_number);
Result<uint32_t> group_id_of(const std::string &name_or_number);

class AccessPolicy {
 public:
  // No lists: everyone who can open the socket may send requests.
  AccessPolicy() = default;
  // `daemon_uid` (the daemon's own user) and root are always allowed: both can reach the
  // arena's files anyway, and an operator must never lock themselves out.
  AccessPolicy(std::vector<uint32_t> uids, std::vector<uint32_t> gids, uint32_t daemon_uid);

  bool restricts() const { return !uids_.empty() || !gids_.empty(); }
  // Whether this peer may send requests: its uid is listed, or its primary or one of its
  // supplementary groups is.
  bool allows(const PeerCredentials &peer, const std::vector<uint32_t> &groups) const;
  // allows() for the peer behind a Peer-Address, with the decision remembered per address
  // (the address carries the pid, so the /proc read happens once per connection, not per
  // request). An address that cannot be parsed is refused.
  bool allows_address(std::string_view peer_address);
  // Why a peer was refused, for its error reply and the log.
  std::string refusal(std::string_view peer_address) const;

 private:
  std::vector<uint32_t> uids_;
  std::vector<uint32_t> gids_;
  uint32_t daemon_uid_ = 0;
  std::unordered_map<std::string, bool> decided_;
};

}  // namespace loraflip::daemon
