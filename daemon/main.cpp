// loraflipd: parses options, starts the server, runs it. Everything else lives in files the
// tests link.
#include <cstdio>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "daemon/devices.hpp"
#include "daemon/memory.hpp"
#include "daemon/options.hpp"
#include "daemon/server.hpp"
#include "ipc/arena.hpp"

int main(int argc, char **argv) {
  using namespace loraflip::daemon;
  auto options = parse_options(std::vector<std::string>(argv + 1, argv + argc));
  if (!options) {
    std::fprintf(stderr, "loraflipd: %s\n%s", options.error().message.c_str(), usage().c_str());
    return 2;
  }
  if (options->show_help) {
    std::fputs(usage().c_str(), stdout);
    return 0;
  }
  if (options->show_version) {
    std::printf("loraflipd %s\n", LORAFLIP_VERSION);
    return 0;
  }
  if (options->remove_arena) {
    loraflip::ipc::Arena::remove(options->arena.instance);
    loraflip::device::remove_host_blocks(options->arena.instance, kDeviceArenaTag);
    std::printf("removed the arena of instance '%s'\n", options->arena.instance.c_str());
    return 0;
  }
  limit_malloc_arenas();  // before Server::start starts ZeroMQ's threads
  spdlog::set_level(spdlog::level::from_str(options->log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  auto server = Server::start(options.value());
  if (!server) {
    spdlog::error("cannot start: {}", server.error().message);
    return 1;
  }
  return server.value()->run();
}
