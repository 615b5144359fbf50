#include "ipc/paths.hpp"

#include <cstdlib>
#include <unistd.h>

namespace loraflip::ipc {

std::string default_runtime_dir(const std::string &instance) {
  if (const char *dir = std::getenv("LORAFLIP_RUNTIME_DIR"); dir != nullptr && *dir != '\0')
    return dir;
  if (const char *xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0')
    return std::string(xdg) + "/loraflip/" + instance;
  if (::geteuid() == 0) return "/run/loraflip/" + instance;
  return "/tmp/loraflip-" + std::to_string(::geteuid()) + "/" + instance;
}

}  // namespace loraflip::ipc
