// loraflipctl: look at and steer a running loraflipd from a shell, over the public C API.
//
// Exit codes (stable, for scripts): 0 ok; 1 the daemon answered with an error (message on
// stderr); 2 usage error; 3 the daemon cannot be reached.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ipc/paths.hpp"
#include "json.hpp"
#include "loraflip.h"
#include "render.hpp"
#include "tools/relay/keys.hpp"

namespace {

using loraflip::ctl::Json;

constexpr int kExitOk = 0;
constexpr int kExitDaemonError = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;

const char *kUsage =
    "usage: loraflipctl [options] COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  status                  the daemon's counters (adapters, readers, pins, flips, arena),\n"
    "                          and per followed adapter when loraflip-relay follows another node\n"
    "  list                    adapters and their active versions\n"
    "  info NAME               one adapter: config, counters, slots, tensors\n"
    "  watch [NAME]            print flips as they happen (all adapters without NAME), until\n"
    "                          Ctrl-C or --count N flips\n"
    "  rollback NAME VERSION   make a kept earlier version active again\n"
    "  drop NAME               drop an adapter (readers that pin it keep their pins)\n"
    "  metrics                 Prometheus text format, for node_exporter's textfile collector\n"
    "  keygen --out PREFIX     a CurveZMQ key pair for loraflip-relay: PREFIX.key (secret,\n"
    "                          mode 0600) and PREFIX.pub (public); never replaces a file\n"
    "\n"
    "options:\n"
    "  --runtime-dir DIR       the daemon's runtime directory (default: $LORAFLIP_RUNTIME_DIR,\n"
    "                          else the library's default for instance 'default')\n"
    "  --instance NAME         shorthand for --runtime-dir /run/loraflip/NAME (systemd layout)\n"
    "  --json                  print the daemon's JSON (one object per line for watch)\n"
    "  --timeout-ms N          bound on every request (default 5000)\n"
    "  --count N               watch: stop after N flips\n"
    "  --out PREFIX            keygen: where the key files go\n"
    "  -h, --help              this text\n"
    "\n"
    "exit codes: 0 ok, 1 the daemon answered with an error, 2 usage error,\n"
    "            3 the daemon cannot be reached\n";

struct Args {
  std::string command;
  std::vector<std::string> positional;
  std::optional<std::string> runtime_dir;
  std::string instance;  // for the metrics label when the daemon is down
  bool json = false;
  int timeout_ms = 5000;
  std::optional<uint64_t> count;
  std::string out;  // keygen's file prefix
};

int usage_error(const std::string &message) {
  std::fprintf(stderr, "loraflipctl: %s\n(see loraflipctl --help)\n", message.c_str());
  return kExitUsage;
}

bool parse_u64(const std::string &text, uint64_t *out) {
  if (text.empty() || text.size() > 20 || text.find_first_not_of("0123456789") != std::string::npos)
    return false;
  errno = 0;
  const unsigned long long v = std::strtoull(text.c_str(), nullptr, 10);
  if (errno != 0) return false;
  *out = v;
  return true;
}

const char *code_name(int code) {
  switch (code) {
    case LF_E_INVALID_ARGUMENT: return "LF_E_INVALID_ARGUMENT";
    case LF_E_NOT_FOUND: return "LF_E_NOT_FOUND";
    case LF_E_EXISTS: return "LF_E_EXISTS";
    case LF_E_ARENA_FULL: return "LF_E_ARENA_FULL";
    case LF_E_NO_FREE_SLOT: return "LF_E_NO_FREE_SLOT";
    case LF_E_TABLE_FULL: return "LF_E_TABLE_FULL";
    case LF_E_PROTOCOL: return "LF_E_PROTOCOL";
    case LF_E_PROTOCOL_VERSION: return "LF_E_PROTOCOL_VERSION";
    case LF_E_LAYOUT_MISMATCH: return "LF_E_LAYOUT_MISMATCH";
    case LF_E_TIMEOUT: return "LF_E_TIMEOUT";
    case LF_E_CONNECTION: return "LF_E_CONNECTION";
    case LF_E_LEASE: return "LF_E_LEASE";
    case LF_E_VALIDATION: return "LF_E_VALIDATION";
    case LF_E_NO_VERSION: return "LF_E_NO_VERSION";
    case LF_E_TOO_LARGE: return "LF_E_TOO_LARGE";
    case LF_E_SYSTEM: return "LF_E_SYSTEM";
    case LF_E_INTERNAL: return "LF_E_INTERNAL";
    case LF_E_PINS_FULL: return "LF_E_PINS_FULL";
    case LF_E_STALE: return "LF_E_STALE";
    case LF_E_UNSUPPORTED: return "LF_E_UNSUPPORTED";
    case LF_E_PERMISSION: return "LF_E_PERMISSION";
    case LF_E_UNKNOWN_OP: return "LF_E_UNKNOWN_OP";
    case LF_E_DEVICE: return "LF_E_DEVICE";
    default: return "LF_E_?";
  }
}

// The daemon did not answer (as opposed to answering with an error).
bool unreachable(int code) { return code == LF_E_CONNECTION || code == LF_E_TIMEOUT; }

int report(const std::string &what, int code, const char *detail) {
  std::fprintf(stderr, "loraflipctl: %s: %s (%s %d: %s)\n", what.c_str(),
               detail != nullptr && *detail ? detail : lf_strerror(code), code_name(code), code,
               lf_strerror(code));
  return unreachable(code) ? kExitUnreachable : kExitDaemonError;
}

struct ClientCloser {
  void operator()(lf_client_t *c) const { lf_client_close(c); }
};
using Client = std::unique_ptr<lf_client_t, ClientCloser>;

// Opens the control connection; on failure reports and sets *exit_code.
Client connect(const Args &a, int *exit_code) {
  lf_client_t *c = nullptr;
  const int rc = lf_client_open(a.runtime_dir ? a.runtime_dir->c_str() : nullptr, a.timeout_ms, &c);
  if (rc != LF_OK) {
    // Refused by the operating system is "cannot reach" too: nothing was asked of the daemon.
    const int code = report("cannot connect", rc, lf_last_error_message());
    *exit_code = rc == LF_E_PERMISSION ? kExitUnreachable : code;
    return nullptr;
  }
  return Client(c);
}

// One JSON-returning request; the parsed reply, or an exit code.
std::optional<Json> fetch(lf_client_t *c, const std::string &what,
                          const std::function<int(char **)> &call, std::string *raw,
                          int *exit_code, int *status = nullptr) {
  char *text = nullptr;
  const int rc = call(&text);
  if (status != nullptr) *status = rc;
  if (rc != LF_OK) {
    *exit_code = report(what, rc, lf_client_last_error(c));
    return std::nullopt;
  }
  std::string body(text);
  lf_free(text);
  std::string error;
  std::optional<Json> parsed = Json::parse(body, &error);
  if (!parsed) {
    std::fprintf(stderr, "loraflipctl: %s: the daemon's reply is not JSON (%s)\n", what.c_str(),
                 error.c_str());
    *exit_code = kExitDaemonError;
    return std::nullopt;
  }
  if (raw != nullptr) *raw = std::move(body);
  return parsed;
}

std::optional<Json> fetch_stats(lf_client_t *c, std::string *raw, int *exit_code) {
  return fetch(c, "stats", [c](char **out) { return lf_client_stats(c, out); }, raw, exit_code);
}
std::optional<Json> fetch_list(lf_client_t *c, std::string *raw, int *exit_code) {
  return fetch(c, "list", [c](char **out) { return lf_client_list(c, out); }, raw, exit_code);
}
std::optional<Json> fetch_info(lf_client_t *c, const std::string &name, std::string *raw,
                               int *exit_code, int *status = nullptr) {
  return fetch(c, "info '" + name + "'",
               [c, &name](char **out) { return lf_client_info(c, name.c_str(), out); }, raw,
               exit_code, status);
}

void print(const std::string &text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The status file `loraflip-relay follow` keeps in the daemon's runtime directory, when this
// node follows another (the daemon itself knows nothing of the network); nullopt when there is
// none or it does not parse (then it is not shown: it is rewritten whole, by rename, so a bad
// one is not a half-written one but someone else's file).
std::optional<Json> follower_status(const Args &a, std::string *raw) {
  const char *env = std::getenv("LORAFLIP_RUNTIME_DIR");
  const std::string dir = a.runtime_dir ? *a.runtime_dir
                          : env != nullptr && *env ? std::string(env)
                                                   : loraflip::ipc::default_runtime_dir("default");
  std::ifstream in(dir + "/relay-follow.json");
  if (!in) return std::nullopt;
  std::string text((std::istreambuf_iterator<char>(in)), {});
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  std::string error;
  std::optional<Json> parsed = Json::parse(text, &error);
  if (parsed && raw != nullptr) *raw = std::move(text);
  return parsed;
}

int cmd_status(const Args &a) {
  int exit_code = kExitOk;
  Client c = connect(a, &exit_code);
  if (!c) return exit_code;
  std::string raw;
  auto stats = fetch_stats(c.get(), &raw, &exit_code);
  if (!stats) return exit_code;
  std::string follower_raw;
  const std::optional<Json> follower = follower_status(a, &follower_raw);
  if (a.json) {
    // The daemon's object with the follower's beside its keys: {"...": ..., "follower": {...}}.
    if (follower && !raw.empty() && raw.back() == '}')
      raw = raw.substr(0, raw.size() - 1) + ",\"follower\":" + follower_raw + "}";
    print(raw + "\n");
  } else {
    print(loraflip::ctl::render_status(*stats));
    if (follower) print("\n" + loraflip::ctl::render_follower(*follower, unix_ms_now()));
  }
  return kExitOk;
}

int cmd_list(const Args &a) {
  int exit_code = kExitOk;
  Client c = connect(a, &exit_code);
  if (!c) return exit_code;
  std::string raw;
  auto list = fetch_list(c.get(), &raw, &exit_code);
  if (!list) return exit_code;
  print(a.json ? raw + "\n" : loraflip::ctl::render_list(*list));
  return kExitOk;
}

int cmd_info(const Args &a) {
  int exit_code = kExitOk;
  Client c = connect(a, &exit_code);
  if (!c) return exit_code;
  std::string raw;
  auto info = fetch_info(c.get(), a.positional[0], &raw, &exit_code);
  if (!info) return exit_code;
  print(a.json ? raw + "\n" : loraflip::ctl::render_info(*info));
  return kExitOk;
}

int cmd_rollback(const Args &a) {
  uint64_t version = 0;
  if (!parse_u64(a.positional[1], &version) || version == 0)
    return usage_error("rollback wants a version number >= 1, not '" + a.positional[1] + "'");
  int exit_code = kExitOk;
  Client c = connect(a, &exit_code);
  if (!c) return exit_code;
  const std::string &name = a.positional[0];
  const int rc = lf_client_rollback(c.get(), name.c_str(), version);
  if (rc != LF_OK)
    return report("rollback '" + name + "' to version " + a.positional[1], rc,
                  lf_client_last_error(c.get()));
  if (a.json)
    print("{\"adapter\":\"" + name + "\",\"version\":" + std::to_string(version) + "}\n");
  else
    print("'" + name + "' serves version " + std::to_string(version) + " again\n");
  return kExitOk;
}

int cmd_drop(const Args &a) {
  int exit_code = kExitOk;
  Client c = connect(a, &exit_code);
  if (!c) return exit_code;
  const std::string &name = a.positional[0];
  const int rc = lf_client_drop_adapter(c.get(), name.c_str());
  if (rc != LF_OK) return report("drop '" + name + "'", rc, lf_client_last_error(c.get()));
  if (a.json) print("{\"adapter\":\"" + name + "\",\"dropped\":true}\n");
  else print("dropped '" + name + "'; its memory returns once no reader pins it\n");
  return kExitOk;
}

std::string basename_of(const std::string &dir) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  const size_t slash = d.rfind('/');
  return slash == std::string::npos ? d : d.substr(slash + 1);
}

int cmd_metrics(const Args &a) {
  std::string instance = a.instance;
  if (instance.empty()) {
    const char *env = std::getenv("LORAFLIP_RUNTIME_DIR");
    instance = a.runtime_dir ? basename_of(*a.runtime_dir)
               : env != nullptr && *env ? basename_of(env) : "default";
  }
  int exit_code = kExitOk;
  const Json none;
  Client c = connect(a, &exit_code);
  std::optional<Json> stats, list;
  if (c) stats = fetch_stats(c.get(), nullptr, &exit_code);
  if (stats) list = fetch_list(c.get(), nullptr, &exit_code);
  if (!stats || !list) {
    // Still write a valid exposition, so that a textfile collector reports the daemon down.
    print(loraflip::ctl::render_metrics(false, instance, none, {}));
    return exit_code;
  }
  std::vector<Json> infos;
  for (const Json &adapter : (*list)["adapters"].items()) {
    int status = LF_OK;
    int ignored = kExitOk;
    auto info = fetch_info(c.get(), adapter["name"].str(), nullptr, &ignored, &status);
    if (info) {
      infos.push_back(std::move(*info));
    } else if (status != LF_E_NOT_FOUND) {  // dropped since the list: leave it out
      print(loraflip::ctl::render_metrics(false, instance, none, {}));
      return ignored;
    }
  }
  print(loraflip::ctl::render_metrics(true, instance, *stats, infos));
  if (const std::optional<Json> follower = follower_status(a, nullptr))
    print(loraflip::ctl::render_follower_metrics((*stats)["instance"].str(), *follower,
                                                 unix_ms_now()));
  return kExitOk;
}

std::atomic<bool> g_stop{false};
extern "C" void on_signal(int) { g_stop.store(true); }

int cmd_watch(const Args &a) {
  const std::optional<std::string> adapter =
      a.positional.empty() ? std::nullopt : std::optional<std::string>(a.positional[0]);
  int exit_code = kExitOk;
  Client c = connect(a, &exit_code);
  if (!c) return exit_code;
  lf_events_t *raw_events = nullptr;
  int rc = lf_events_open(a.runtime_dir ? a.runtime_dir->c_str() : nullptr,
                          adapter ? adapter->c_str() : nullptr, &raw_events);
  if (rc != LF_OK) return report("cannot subscribe to flips", rc, lf_last_error_message());
  std::unique_ptr<lf_events_t, void (*)(lf_events_t *)> events(raw_events, lf_events_close);

  c.reset();  // connected only to fail clearly when no daemon runs: the events suffice now

  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  if (!a.json) std::fprintf(stderr, "watching %s (Ctrl-C to stop)\n",
                            adapter ? ("'" + *adapter + "'").c_str() : "every adapter");
  uint64_t printed = 0;
  while (!g_stop.load() && (!a.count || printed < *a.count)) {
    lf_event_t e;
    rc = lf_events_next_event(events.get(), 200, &e);
    if (g_stop.load()) break;
    if (rc == LF_E_TIMEOUT) continue;
    if (rc != LF_OK) return report("waiting for flips", rc, nullptr);
    const char *kind = e.kind == LF_EVENT_COMMIT     ? "commit"
                       : e.kind == LF_EVENT_ROLLBACK ? "rollback"
                       : e.kind == LF_EVENT_DROP     ? "drop"
                                                     : "unknown";
    if (a.json) {
      print("{\"unix_ns\":" + std::to_string(e.unix_ns) + ",\"adapter\":\"" + e.adapter +
            "\",\"kind\":\"" + kind + "\",\"version\":" + std::to_string(e.version) +
            ",\"previous\":" + std::to_string(e.previous) + ",\"seq\":" + std::to_string(e.seq) +
            ",\"missed\":" + std::to_string(e.missed) + "}\n");
    } else {
      if (e.missed != 0)
        print("(missed " + std::to_string(e.missed) + " event(s) of " + e.adapter +
              ": the watch fell behind)\n");
      print(loraflip::ctl::utc_time(e.unix_ns) + "  " + e.adapter + "  " + kind + "  " +
            std::to_string(e.previous) + " -> " + std::to_string(e.version) + "\n");
    }
    if (std::ferror(stdout)) break;  // the reader of a pipe went away
    ++printed;
  }
  return kExitOk;
}

// Needs no daemon: the keys are for loraflip-relay (tools/relay/keys.hpp has the file rules).
int cmd_keygen(const Args &a) {
  auto keys = loraflip::relay::generate_keypair();
  if (!keys) {
    std::fprintf(stderr, "loraflipctl: %s\n", keys.error().message.c_str());
    return kExitDaemonError;
  }
  auto written = loraflip::relay::write_keypair(a.out, keys.value());
  if (!written) {
    std::fprintf(stderr, "loraflipctl: %s\n", written.error().message.c_str());
    return kExitDaemonError;
  }
  std::printf("%s.key (secret, mode 0600)\n%s (public: %s)\n", a.out.c_str(),
              written.value().c_str(), keys->public_z85.c_str());
  return kExitOk;
}

}  // namespace

int main(int argc, char **argv) {
  Args a;
  std::vector<std::string> words(argv + 1, argv + argc);
  for (size_t i = 0; i < words.size(); ++i) {
    std::string key = words[i];
    std::optional<std::string> inline_value;
    if (key.rfind("--", 0) == 0) {
      if (const size_t eq = key.find('='); eq != std::string::npos) {
        inline_value = key.substr(eq + 1);
        key = key.substr(0, eq);
      }
    }
    auto value = [&]() -> std::optional<std::string> {
      if (inline_value) return inline_value;
      if (i + 1 >= words.size()) return std::nullopt;
      return words[++i];
    };
    if (key == "-h" || key == "--help" || key == "help") {
      std::fputs(kUsage, stdout);
      return kExitOk;
    } else if (key == "--json") {
      a.json = true;
    } else if (key == "--runtime-dir") {
      auto v = value();
      if (!v || v->empty()) return usage_error("--runtime-dir needs a directory");
      a.runtime_dir = *v;
    } else if (key == "--instance") {
      auto v = value();
      if (!v || v->empty() || v->find('/') != std::string::npos)
        return usage_error("--instance needs an instance name");
      a.instance = *v;
      a.runtime_dir = "/run/loraflip/" + *v;
    } else if (key == "--timeout-ms") {
      auto v = value();
      uint64_t n = 0;
      if (!v || !parse_u64(*v, &n) || n == 0 || n > 3600000)
        return usage_error("--timeout-ms wants 1..3600000");
      a.timeout_ms = static_cast<int>(n);
    } else if (key == "--count") {
      auto v = value();
      uint64_t n = 0;
      if (!v || !parse_u64(*v, &n) || n == 0) return usage_error("--count wants a number >= 1");
      a.count = n;
    } else if (key == "--out") {
      auto v = value();
      if (!v || v->empty()) return usage_error("--out needs a file prefix");
      a.out = *v;
    } else if (key.size() > 1 && key[0] == '-') {
      return usage_error("unknown option '" + words[i] + "'");
    } else if (a.command.empty()) {
      a.command = key;
    } else {
      a.positional.push_back(words[i]);
    }
  }

  struct Command {
    const char *name;
    size_t min_args, max_args;
    int (*run)(const Args &);
  };
  static const Command commands[] = {
      {"status", 0, 0, cmd_status},   {"list", 0, 0, cmd_list},
      {"info", 1, 1, cmd_info},       {"watch", 0, 1, cmd_watch},
      {"rollback", 2, 2, cmd_rollback}, {"drop", 1, 1, cmd_drop},
      {"metrics", 0, 0, cmd_metrics}, {"keygen", 0, 0, cmd_keygen},
  };
  if (a.command.empty()) {
    std::fputs(kUsage, stderr);
    return kExitUsage;
  }
  for (const Command &c : commands) {
    if (a.command != c.name) continue;
    if (a.positional.size() < c.min_args || a.positional.size() > c.max_args)
      return usage_error("wrong number of arguments for '" + a.command + "'");
    if (a.count && a.command != "watch") return usage_error("--count is for watch only");
    if (a.out.empty() != (a.command != "keygen"))
      return usage_error(a.out.empty() ? "keygen needs --out PREFIX" : "--out is for keygen only");
    return c.run(a);
  }
  return usage_error("unknown command '" + a.command + "'");
}
