#include "daemon/access.hpp"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <grp.h>
#include <pwd.h>
#include <sstream>

namespace loraflip::daemon {
namespace {

// Remembered decisions are dropped wholesale past this many peers: connections come and go
// (every short-lived client is a new pid), and a decision is cheap to make again.
constexpr size_t kMaxRemembered = 4096;

std::optional<uint32_t> parse_u32(std::string_view text) {
  uint32_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return v;
}

bool contains(const std::vector<uint32_t> &ids, uint32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

}  // namespace

std::optional<PeerCredentials> parse_peer_address(std::string_view address) {
  // The last three colon-separated fields; the host before them may itself hold colons.
  uint32_t fields[3];
  for (int i = 2; i >= 0; --i) {
    const size_t colon = address.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    auto v = parse_u32(address.substr(colon + 1));
    if (!v) return std::nullopt;
    fields[i] = *v;
    address = address.substr(0, colon);
  }
  return PeerCredentials{fields[0], fields[1], fields[2]};
}

std::optional<std::vector<uint32_t>> process_groups(uint32_t pid, uint32_t uid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  if (!status) return std::nullopt;
  std::optional<std::vector<uint32_t>> groups;
  bool same_user = false;
  std::string line;
  while (std::getline(status, line)) {
    std::istringstream fields(line);
    std::string key;
    fields >> key;
    if (key == "Uid:") {
      uint32_t real = 0, effective = 0;
      fields >> real >> effective;
      same_user = effective == uid;
    } else if (key == "Groups:") {
      groups.emplace();
      uint32_t g = 0;
      while (fields >> g) groups->push_back(g);
    }
  }
  if (!same_user) return std::nullopt;
  return groups ? groups : std::vector<uint32_t>{};
}

Result<uint32_t> user_id(const std::string &name_or_number) {
  if (auto v = parse_u32(name_or_number)) return *v;
  std::vector<char> buf(16384);
  passwd pw{};
  passwd *found = nullptr;
  if (::getpwnam_r(name_or_number.c_str(), &pw, buf.data(), buf.size(), &found) != 0 ||
      found == nullptr)
    return make_error(LF_E_NOT_FOUND, "no user named '" + name_or_number + "'");
  return static_cast<uint32_t>(found->pw_uid);
}

Result<uint32_t> group_id_of(const std::string &name_or_number) {
  if (auto v = parse_u32(name_or_number)) return *v;
  std::vector<char> buf(16384);
  group g{};
  group *found = nullptr;
  if (::getgrnam_r(name_or_number.c_str(), &g, buf.data(), buf.size(), &found) != 0 ||
      found == nullptr)
    return make_error(LF_E_NOT_FOUND, "no group named '" + name_or_number + "'");
  return static_cast<uint32_t>(found->gr_gid);
}

AccessPolicy::AccessPolicy(std::vector<uint32_t> uids, std::vector<uint32_t> gids,
                           uint32_t daemon_uid)
    : uids_(std::move(uids)), gids_(std::move(gids)), daemon_uid_(daemon_uid) {}

bool AccessPolicy::allows(const PeerCredentials &peer, const std::vector<uint32_t> &groups) const {
  if (!restricts() || peer.uid == 0 || peer.uid == daemon_uid_) return true;
  if (contains(uids_, peer.uid) || contains(gids_, peer.gid)) return true;
  return std::any_of(groups.begin(), groups.end(), [&](uint32_t g) { return contains(gids_, g); });
}

bool AccessPolicy::allows_address(std::string_view peer_address) {
  if (!restricts()) return true;
  const std::string key(peer_address);
  if (auto it = decided_.find(key); it != decided_.end()) return it->second;
  bool allowed = false;
  if (std::optional<PeerCredentials> peer = parse_peer_address(peer_address)) {
    // Supplementary groups only count while the pid still runs as the connecting user.
    std::optional<std::vector<uint32_t>> groups = process_groups(peer->pid, peer->uid);
    allowed = allows(*peer, groups.value_or(std::vector<uint32_t>{}));
  }
  if (decided_.size() >= kMaxRemembered) decided_.clear();
  decided_.emplace(key, allowed);
  return allowed;
}

std::string AccessPolicy::refusal(std::string_view peer_address) const {
  std::optional<PeerCredentials> peer = parse_peer_address(peer_address);
  if (!peer)
    return "this daemon only serves local users it can identify (see --allow-user, --allow-group)";
  return "this daemon does not serve uid " + std::to_string(peer->uid) + " (gid " +
         std::to_string(peer->gid) + "): see its --allow-user and --allow-group";
}

}  // namespace loraflip::daemon
