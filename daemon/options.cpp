#include "daemon/options.hpp"

#include <charconv>

#include "ipc/schema.hpp"

namespace loraflip::daemon {
namespace {

Result<uint64_t> parse_uint(const std::string &option, const std::string &text, uint64_t min,
                            uint64_t max) {
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || v < min || v > max)
    return make_error(LF_E_INVALID_ARGUMENT, option + " wants a whole number from " +
                                                 std::to_string(min) + " to " +
                                                 std::to_string(max) + ", not '" + text + "'");
  return v;
}

std::vector<std::string> split_list(const std::string &text) {
  std::vector<std::string> items;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    items.push_back(text.substr(start, comma - start));
    if (comma == std::string::npos) return items;
    start = comma + 1;
  }
}

}  // namespace

Result<uint64_t> parse_size(const std::string &text) {
  if (text.empty()) return make_error(LF_E_INVALID_ARGUMENT, "empty size");
  uint64_t scale = 1;
  std::string digits = text;
  switch (text.back()) {
    case 'K': case 'k': scale = 1ULL << 10; digits.pop_back(); break;
    case 'M': case 'm': scale = 1ULL << 20; digits.pop_back(); break;
    case 'G': case 'g': scale = 1ULL << 30; digits.pop_back(); break;
    default: break;
  }
  auto v = parse_uint("size", digits, 1, UINT64_MAX / scale);
  if (!v) return make_error(LF_E_INVALID_ARGUMENT, "bad size '" + text + "' (e.g. 512M, 8G)");
  return v.value() * scale;
}

std::string usage() {
  return "usage: loraflipd [options]\n"
         "  --instance NAME        instance name (default: default)\n"
         "  --runtime-dir DIR      sockets and lock file (default: $LORAFLIP_RUNTIME_DIR, or\n"
         "                         $XDG_RUNTIME_DIR/loraflip/NAME, or /run/loraflip/NAME)\n"
         "  --arena-size SIZE      bytes of tensor data, e.g. 4G (default: 1G)\n"
         "  --pool-size SIZE       bytes for tensor descriptors and configs (default: 16M)\n"
         "  --group NAME           group that may use the sockets and the arena\n"
         "  --allow-user LIST      only these users (names or uids, comma-separated) may send\n"
         "                         control requests; root and the daemon's user always may\n"
         "  --allow-group LIST     ... or members of these groups (default: anyone who can\n"
         "                         open the socket, i.e. the --group)\n"
         "  --max-adapters N       adapter table size (default: 64)\n"
         "  --max-readers N        reader table size (default: 256)\n"
         "  --history N            versions kept besides the active one (default: 2)\n"
         "  --reap-interval-ms N   how often dead clients are reclaimed (default: 100, max 250)\n"
         "  --devices LIST         GPU ordinals to serve, e.g. 0,1 (default: none, host only)\n"
         "  --device-arena-size SIZE  bytes of each GPU's arena (default: 1G)\n"
         "  --device-backend NAME  cuda (default), or host: shared memory stands in for GPUs\n"
         "  --log-level LEVEL      trace, debug, info, warn, error (default: info)\n"
         "  --remove-arena         remove the instance's shared memory and exit\n"
         "  --version, --help\n";
}

Result<Options> parse_options(const std::vector<std::string> &args) {
  Options o;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string key = args[i];
    std::string value;
    bool has_value = false;
    if (const size_t eq = key.find('='); key.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
      has_value = true;
    }
    auto next = [&]() -> Result<std::string> {
      if (has_value) return value;
      if (i + 1 >= args.size()) return make_error(LF_E_INVALID_ARGUMENT, key + " needs a value");
      return args[++i];
    };
#define LF_NEXT(var)        \
  auto var##_r = next();    \
  if (!var##_r) return var##_r.error(); \
  const std::string var = var##_r.value()

    if (key == "--help" || key == "-h") {
      o.show_help = true;
    } else if (key == "--version") {
      o.show_version = true;
    } else if (key == "--remove-arena") {
      o.remove_arena = true;
    } else if (key == "--instance") {
      LF_NEXT(v);
      if (Status s = ipc::check_adapter_name(v); !s || v.size() > 40)
        return make_error(LF_E_INVALID_ARGUMENT,
                          "--instance wants 1-40 letters, digits or . _ - : (not '" + v + "')");
      o.arena.instance = v;
    } else if (key == "--runtime-dir") {
      LF_NEXT(v);
      o.runtime_dir = v;
    } else if (key == "--arena-size") {
      LF_NEXT(v);
      auto n = parse_size(v);
      if (!n) return n.error();
      o.arena.data_bytes = n.value();
    } else if (key == "--pool-size") {
      LF_NEXT(v);
      auto n = parse_size(v);
      if (!n) return n.error();
      o.arena.pool_bytes = n.value();
    } else if (key == "--group") {
      LF_NEXT(v);
      o.group = v;
    } else if (key == "--allow-user" || key == "--allow-group") {
      LF_NEXT(v);
      std::vector<std::string> &list = key == "--allow-user" ? o.allow_users : o.allow_groups;
      for (const std::string &item : split_list(v)) {
        if (item.empty()) return make_error(LF_E_INVALID_ARGUMENT, key + " got an empty name in '" + v + "'");
        list.push_back(item);
      }
    } else if (key == "--max-adapters") {
      LF_NEXT(v);
      auto n = parse_uint(key, v, 1, ipc::kMaxAdapters);
      if (!n) return n.error();
      o.arena.max_adapters = static_cast<uint32_t>(n.value());
    } else if (key == "--max-readers") {
      LF_NEXT(v);
      auto n = parse_uint(key, v, 1, 1u << 20);
      if (!n) return n.error();
      o.arena.max_readers = static_cast<uint32_t>(n.value());
    } else if (key == "--history") {
      LF_NEXT(v);
      auto n = parse_uint(key, v, 0, ipc::kMaxSlots - 2);
      if (!n) return n.error();
      o.arena.default_history = static_cast<uint32_t>(n.value());
    } else if (key == "--reap-interval-ms") {
      LF_NEXT(v);
      auto n = parse_uint(key, v, 1, 250);
      if (!n) return n.error();
      o.reap_interval_ms = static_cast<uint32_t>(n.value());
    } else if (key == "--devices") {
      LF_NEXT(v);
      o.devices.clear();
      for (const std::string &item : split_list(v)) {
        auto n = parse_uint(key, item, 0, 1023);
        if (!n) return n.error();
        o.devices.push_back(static_cast<int>(n.value()));
      }
      if (o.devices.size() > ipc::kMaxDevices)
        return make_error(LF_E_INVALID_ARGUMENT, "--devices takes at most 8 devices");
    } else if (key == "--device-arena-size") {
      LF_NEXT(v);
      auto n = parse_size(v);
      if (!n) return n.error();
      o.device_arena_bytes = n.value();
    } else if (key == "--device-backend") {
      LF_NEXT(v);
      if (v != "cuda" && v != "host")
        return make_error(LF_E_INVALID_ARGUMENT, "--device-backend wants cuda or host");
      o.device_backend = v;
    } else if (key == "--log-level") {
      LF_NEXT(v);
      if (v != "trace" && v != "debug" && v != "info" && v != "warn" && v != "error")
        return make_error(LF_E_INVALID_ARGUMENT, "--log-level wants trace, debug, info, warn or error");
      o.log_level = v;
    } else {
      return make_error(LF_E_INVALID_ARGUMENT, "unknown option '" + args[i] + "' (see --help)");
    }
#undef LF_NEXT
  }
  return o;
}

}  // namespace loraflip::daemon
