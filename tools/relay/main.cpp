// loraflip-relay: options only; the logic is in relay.cpp.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "tools/relay/relay.hpp"

namespace {

std::atomic<bool> g_stop{false};
extern "C" void on_signal(int) { g_stop.store(true); }

const char *kUsage =
    "usage:\n"
    "  loraflip-relay serve  --runtime-dir DIR --listen tcp://ADDR:PORT --secret-key FILE\n"
    "                        --allow FILE [--adapters a,b] [--insecure]\n"
    "  loraflip-relay follow --runtime-dir DIR --upstream tcp://HOST:PORT --server-key FILE\n"
    "                        --secret-key FILE [--adapters a,b] [--chunk-bytes N] [--window N]\n"
    "                        [--status-file FILE] [--placement host|cuda:N[,M]] [--insecure]\n"
    "\n"
    "serve answers followers with the versions the local daemon commits; follow writes them\n"
    "into the local daemon under the same version numbers. Keys: `loraflipctl keygen --out\n"
    "PREFIX` makes PREFIX.key (secret, mode 0600) and PREFIX.pub. --allow lists the followers'\n"
    "public keys, one per line; --server-key is the upstream's PREFIX.pub. --insecure: plain\n"
    "TCP without keys, on a loopback address only (tests). --status-file: where follow writes\n"
    "its status for loraflipctl (default RUNTIME_DIR/relay-follow.json). --placement: where\n"
    "the adapters follow creates live (default host; cuda:N[,M] for the local daemon's devices,\n"
    "the first written to); an adapter that exists already must be placed so, or is skipped.\n"
    "exit codes: 0 stopped by a signal, 1 could not run, 2 usage error\n";

int usage_error(const std::string &message) {
  std::fprintf(stderr, "loraflip-relay: %s\n(see loraflip-relay --help)\n", message.c_str());
  return 2;
}

std::vector<std::string> split_names(const std::string &joined) {
  std::vector<std::string> names;
  size_t start = 0;
  while (start <= joined.size()) {
    size_t comma = joined.find(',', start);
    if (comma == std::string::npos) comma = joined.size();
    if (comma > start) names.push_back(joined.substr(start, comma - start));
    start = comma + 1;
  }
  return names;
}

bool parse_u64(const std::string &text, uint64_t *out) {
  if (text.empty() || text.size() > 19 || text.find_first_not_of("0123456789") != std::string::npos)
    return false;
  *out = std::stoull(text);
  return true;
}

}  // namespace

int main(int argc, char **argv) {
  std::vector<std::string> words(argv + 1, argv + argc);
  if (words.empty()) return usage_error("serve or follow?");
  if (words[0] == "-h" || words[0] == "--help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  const std::string mode = words[0];
  if (mode != "serve" && mode != "follow") return usage_error("unknown command '" + mode + "'");
  loraflip::relay::ServeOptions s;
  loraflip::relay::FollowOptions f;
  for (size_t i = 1; i < words.size(); ++i) {
    const std::string &key = words[i];
    if (key == "--insecure") {
      s.insecure = f.insecure = true;
      continue;
    }
    if (i + 1 >= words.size()) return usage_error(key + " needs a value (or is unknown)");
    const std::string value = words[++i];
    uint64_t n = 0;
    if (key == "--runtime-dir") s.runtime_dir = f.runtime_dir = value;
    else if (key == "--secret-key") s.secret_key = f.secret_key = value;
    else if (key == "--adapters") s.adapters = f.adapters = split_names(value);
    else if (mode == "serve" && key == "--listen") s.listen = value;
    else if (mode == "serve" && key == "--allow") s.allow = value;
    else if (mode == "follow" && key == "--upstream") f.upstream = value;
    else if (mode == "follow" && key == "--server-key") f.server_key = value;
    else if (mode == "follow" && key == "--status-file") f.status_file = value;
    else if (mode == "follow" && key == "--placement") {
      if (loraflip::Status s = loraflip::relay::check_placement(value); !s)
        return usage_error("--placement: " + s.error().message);
      f.placement = value;
    }
    else if (mode == "follow" && key == "--chunk-bytes") {
      if (!parse_u64(value, &n)) return usage_error("--chunk-bytes wants a number");
      f.chunk_bytes = n;
    } else if (mode == "follow" && key == "--window") {
      if (!parse_u64(value, &n) || n < 1 || n > 256) return usage_error("--window wants 1..256");
      f.window = static_cast<uint32_t>(n);
    } else {
      return usage_error("unknown option '" + key + "' for " + mode);
    }
  }
  if (s.runtime_dir.empty()) return usage_error("--runtime-dir is required");
  const bool insecure = s.insecure;
  if (insecure && (!s.secret_key.empty() || !s.allow.empty() || !f.server_key.empty()))
    return usage_error("--insecure takes no keys: it is plain TCP");
  if (mode == "serve") {
    if (s.listen.empty()) return usage_error("--listen is required");
    if (!insecure && (s.secret_key.empty() || s.allow.empty()))
      return usage_error("--secret-key and --allow are required (or --insecure on loopback)");
  } else {
    if (f.upstream.empty()) return usage_error("--upstream is required");
    if (!insecure && (f.secret_key.empty() || f.server_key.empty()))
      return usage_error("--server-key and --secret-key are required (or --insecure on loopback)");
  }
  // Logs go to stderr (journald takes it under systemd); stdout stays free.
  spdlog::set_default_logger(spdlog::stderr_logger_mt("loraflip-relay"));
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::signal(SIGPIPE, SIG_IGN);
  return mode == "serve" ? loraflip::relay::serve(s, g_stop) : loraflip::relay::follow(f, g_stop);
}
