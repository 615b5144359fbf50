// Where an instance lives on disk: one runtime directory holding the control socket, the
// events socket and the daemon's lock file. Shared by the daemon and the clients so that both
// pick the same default.
#pragma once

#include <string>

namespace loraflip::ipc {

// $LORAFLIP_RUNTIME_DIR when set; else <base>/loraflip/<instance> where base is
// $XDG_RUNTIME_DIR, or /run for root, or /tmp/loraflip-<uid> as a last resort.
std::string default_runtime_dir(const std::string &instance);

inline std::string control_endpoint(const std::string &dir) { return "ipc://" + dir + "/control"; }
inline std::string events_endpoint(const std::string &dir) { return "ipc://" + dir + "/events"; }

// The longest socket path the kernel takes (sizeof sockaddr_un::sun_path - 1).
inline constexpr size_t kMaxSocketPath = 107;

}  // namespace loraflip::ipc
