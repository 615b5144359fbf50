// What the relay tests share: relays and daemons as child processes, keys, an upstream with
// followers on loopback (Mesh), and a follower's reader that looks for torn or backward
// versions (Watch). Header only: each relay test binary compiles it once.
#pragma once

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <netinet/in.h>
#include <sstream>
#include <string>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

#include "loraflip.h"
#include "support.hpp"

namespace lftest::relay {


using lftest::Daemon;

inline std::string env_path(const char *name) {
  const char *p = std::getenv(name);
  REQUIRE_MESSAGE(p != nullptr, "set ", name, " (meson does)");
  return p;
}

// A port nobody listens on now (the kernel's choice for port 0). Another process could take
// it before the relay binds; on a test machine's loopback that does not happen in practice.
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

inline std::string read_file(const std::string &path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A loraflip-relay child; SIGTERM and reaped on destruction. `env`: NAME=VALUE pairs added to
// its environment (the test hooks). Its log is appended to, so that a restarted relay's log
// follows the killed one's. `prefix`: a command that runs the relay by exec'ing it (`ip netns
// exec NS`), so that pid is still the relay's.
struct Relay {
  pid_t pid = -1;
  std::string log;
  Relay(const std::vector<std::string> &args, std::string log_path,
        const std::vector<std::string> &env = {}, const std::vector<std::string> &prefix = {})
      : log(std::move(log_path)) {
    const std::string binary = env_path("LORAFLIP_RELAY");
    pid = lftest::spawn([&] {
      for (const std::string &e : env) ::putenv(const_cast<char *>(e.c_str()));
      std::vector<char *> argv;
      for (const std::string &p : prefix) argv.push_back(const_cast<char *>(p.c_str()));
      argv.push_back(const_cast<char *>(binary.c_str()));
      for (const std::string &a : args) argv.push_back(const_cast<char *>(a.c_str()));
      argv.push_back(nullptr);
      if (!std::freopen(log.c_str(), "a", stderr)) return 98;
      ::execvp(argv[0], argv.data());  // the binary's own path, or the prefix's command
      return 97;
    });
    REQUIRE(pid > 0);
  }
  ~Relay() { stop(); }
  void kill9() {
    if (pid <= 0) return;
    ::kill(pid, SIGKILL);
    lftest::wait_child(pid);
    pid = -1;
  }
  int stop() {
    if (pid <= 0) return -1;
    ::kill(pid, SIGTERM);
    const int code = lftest::wait_child(pid);
    pid = -1;
    return code;
  }
};

// Runs a command line; its exit code.
inline int run(const std::string &command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/lf-relay-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() { run("rm -rf '" + path + "'"); }
};

inline std::string keygen(const TempDir &dir, const std::string &name) {
  const std::string prefix = dir.path + "/" + name;
  REQUIRE(run(env_path("LORAFLIPCTL") + " keygen --out " + prefix + " >/dev/null") == 0);
  return prefix;
}

inline std::string public_key(const std::string &prefix) {
  std::string text = read_file(prefix + ".pub");
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

// The keys of one serving relay and its followers, made in a TempDir: the server's key pair,
// one pair per follower, and the allow file that lets exactly those followers in. A key pair is
// the prefix keygen wrote it under (PREFIX.key, PREFIX.pub).
struct Keys {
  std::string upstream;
  std::vector<std::string> followers;
  std::string allow;

  // `count` new pairs named `follower_name` and their index; the allow file `follower_name`.allow.
  // `upstream_key`: a pair made already (a middle node serves under the key it follows with), or
  // "" for a new one named "upstream".
  Keys(const TempDir &dir, int count, const std::string &follower_name = "follower",
       std::string upstream_key = "")
      : upstream(upstream_key.empty() ? keygen(dir, "upstream") : std::move(upstream_key)),
        allow(dir.path + "/" + follower_name + ".allow") {
    std::ofstream out(allow);
    // The relay skips comment lines: every allow file here starts with one to show it does.
    out << "# the followers' public keys\n";
    for (int i = 0; i < count; ++i) {
      followers.push_back(keygen(dir, follower_name + std::to_string(i)));
      out << public_key(followers.back()) << "\n";
    }
  }
};

inline lf_client_t *open_client(const Daemon &d) {
  lf_client_t *c = nullptr;
  REQUIRE(lf_client_open(d.dir().c_str(), 5000, &c) == LF_OK);
  return c;
}

inline uint64_t last_version(lf_client_t *c, const char *name) {
  char *json = nullptr;
  if (lf_client_info(c, name, &json) != LF_OK) return 0;
  const std::string text(json);
  lf_free(json);
  return static_cast<uint64_t>(lftest::json_number(text, "last_version"));
}

// The "tensors" part of an info reply: names, dtypes, shapes and offsets, to compare schemas.
inline std::string tensors_of(lf_client_t *c, const char *name) {
  char *json = nullptr;
  if (lf_client_info(c, name, &json) != LF_OK) return "";
  const std::string text(json);
  lf_free(json);
  const size_t at = text.find("\"tensors\":");
  return at == std::string::npos ? "" : text.substr(at);
}

// What a follower's readers saw: versions in the order seen, torn words, and backward steps.
struct Watch {
  lf_reader_t *reader = nullptr;
  lf_adapter_ref_t ref = 0;
  bool found = false;
  uint64_t last = 0, torn = 0, backward = 0, seen = 0;
  explicit Watch(const Daemon &d) { REQUIRE(lf_reader_open(d.dir().c_str(), &reader) == LF_OK); }
  ~Watch() { lf_reader_close(reader); }
  void poll(const char *name) {
    if (!found) found = lf_reader_find(reader, name, &ref) == LF_OK;
    if (!found) return;
    lf_pin_t *pin = nullptr;
    if (const int st = lf_reader_acquire(reader, ref, 0, &pin); st != LF_OK) {
      // Dropped (and perhaps re-created, with its numbers started again): looked up anew.
      if (st == LF_E_STALE) found = false, last = 0;
      return;
    }
    const uint64_t v = lf_pin_version(pin);
    torn += lftest::count_torn(pin);
    if (v < last) ++backward;
    if (v != last) ++seen;
    last = v;
    lf_pin_release(pin);
  }
};

inline uint64_t publish(lf_client_t *c, const char *name, uint64_t generation) {
  lf_writer_t *w = nullptr;
  const int st = lf_client_begin_write(c, name, 0, &w);
  REQUIRE_MESSAGE(st == LF_OK, lf_client_last_error(c));
  lftest::fill_pattern(w, generation);
  uint64_t v = 0;
  REQUIRE(lf_writer_commit(w, LF_COMMIT_CHECKSUM, &v) == LF_OK);
  return v;
}



// An adapter of `tensors` f32 tensors of rows x 16 with slots for history 3 and the serving
// relay's pin (history + 3), so that a trainer publishing fast never waits for a slot; placed
// on `placement` ("host", or "cuda:N[,M]" on a daemon with devices).
inline void create_adapter(lf_client_t *c, const char *name, int tensors, int64_t rows,
                           const char *placement = "host") {
  lf_spec_t *spec = nullptr;
  REQUIRE(lf_spec_new(&spec) == LF_OK);
  for (int t = 0; t < tensors; ++t) {
    const int64_t shape[2] = {rows, 16};
    const std::string tensor = "base_model.model.model.layers." + std::to_string(t) +
                               ".self_attn.q_proj.lora_" + (t % 2 ? "B" : "A") + ".weight";
    REQUIRE(lf_spec_add_tensor(spec, tensor.c_str(), LF_DTYPE_F32, 2, shape) == LF_OK);
  }
  REQUIRE(lf_spec_set_lora(spec, 16, 32.0, "q_proj", 0) == LF_OK);
  REQUIRE(lf_spec_set_slots(spec, 6, 3) == LF_OK);
  REQUIRE(lf_spec_set_placement(spec, placement) == LF_OK);
  REQUIRE_MESSAGE(lf_client_create_adapter(c, name, spec) == LF_OK, lf_client_last_error(c));
  lf_spec_free(spec);
}

inline bool log_has(const std::string &path, const std::string &text) {
  return read_file(path).find(text) != std::string::npos;
}

// How many times `text` occurs in the file at `path` (a log said once, or again and again).
inline size_t log_count(const std::string &path, const std::string &text) {
  const std::string all = read_file(path);
  size_t n = 0;
  for (size_t at = all.find(text); at != std::string::npos; at = all.find(text, at + text.size()))
    ++n;
  return n;
}

// How many wants a following relay had answered while at least `ms` passed on its own clock,
// read from its status file at `status_path` (wants_answered, updated_unix_ms). A follower
// waiting on long polls asks a few times; one offered a version it cannot take again and again
// asks thousands of times. -1 when the file never got that far.
inline int64_t wants_during(const std::string &status_path, int64_t ms) {
  const std::string before = read_file(status_path);
  const int64_t since = lftest::json_number(before, "updated_unix_ms");
  const int64_t wants = lftest::json_number(before, "wants_answered");
  if (lftest::wait_until(
          [&] { return lftest::json_number(read_file(status_path), "updated_unix_ms") >= since + ms; },
          30000) < 0)
    return -1;
  return lftest::json_number(read_file(status_path), "wants_answered") - wants;
}

// The active version of `name` on `d` and its whole slot image (tensors and the padding
// between them), copied out under a pin: what a node serves, to compare nodes byte for byte.
// Version 0 and no bytes when it has none.
struct ActiveImage {
  uint64_t version = 0;
  std::vector<unsigned char> bytes;
};
inline ActiveImage active_image(const Daemon &d, const char *name) {
  ActiveImage out;
  lf_reader_t *reader = nullptr;
  REQUIRE(lf_reader_open(d.dir().c_str(), &reader) == LF_OK);
  lf_adapter_ref_t ref = 0;
  lf_pin_t *pin = nullptr;
  if (lf_reader_find(reader, name, &ref) == LF_OK && lf_reader_acquire(reader, ref, 0, &pin) == LF_OK) {
    out.version = lf_pin_version(pin);
    out.bytes.resize(lf_pin_slot_bytes(pin));
    CHECK(lf_pin_copy_slot(pin, out.bytes.data(), out.bytes.size()) == LF_OK);
    lf_pin_release(pin);
  }
  lf_reader_close(reader);
  return out;
}

// How a Mesh starts its nodes, where a test needs more than the defaults; tests name only the
// fields they set (designated initializers, hence a default on every field). A per-follower
// list may stop short of the last follower (or be empty): the followers past its end get the
// default.
struct MeshOptions {
  // NAME=VALUE pairs added to the upstream relay's environment (its test hooks).
  std::vector<std::string> serve_env{};
  // What every follower's relay gets after its addresses and keys.
  std::vector<std::string> follow_options = {"--chunk-bytes", "65536", "--window", "4"};
  // Extra arguments of the upstream's daemon, and of each follower's.
  std::vector<std::string> upstream_daemon{};
  std::vector<std::vector<std::string>> follower_daemons{};
  // Each follower relay's --placement; "" leaves it at the relay's default.
  std::vector<std::string> placements{};
};

// One upstream daemon and its serving relay, and followers each with a daemon and a relay, on
// loopback under CurveZMQ. Relays can be killed and started again on the same addresses.
struct Mesh {
  TempDir dir;
  Keys keys;
  MeshOptions options;
  std::string listen;
  Daemon upstream;
  lf_client_t *up = nullptr;
  std::unique_ptr<Relay> serve;
  std::vector<std::unique_ptr<Daemon>> daemons;
  std::vector<std::unique_ptr<Relay>> relays;

  explicit Mesh(int followers, MeshOptions mesh_options = {})
      : keys(dir, followers),
        options(std::move(mesh_options)),
        upstream("relay-up", options.upstream_daemon) {
    upstream.start();
    up = open_client(upstream);
    listen = "tcp://127.0.0.1:" + std::to_string(free_port());
    start_serve();
    for (int i = 0; i < followers; ++i) {
      daemons.push_back(std::make_unique<Daemon>("relay-f" + std::to_string(i),
                                                 for_follower(options.follower_daemons, i)));
      daemons.back()->start();
      relays.emplace_back();
      start_follower(i);
    }
  }
  ~Mesh() {
    relays.clear();
    serve.reset();
    lf_client_close(up);
  }
  std::string serve_log() const { return upstream.dir() + ".relay.log"; }
  std::string follow_log(int i) const { return daemons[i]->dir() + ".relay.log"; }
  void start_serve() {
    serve = std::make_unique<Relay>(
        std::vector<std::string>{"serve", "--runtime-dir", upstream.dir(), "--listen", listen,
                                 "--secret-key", keys.upstream + ".key", "--allow", keys.allow},
        serve_log(), options.serve_env);
  }
  void start_follower(int i) {
    std::vector<std::string> args{"follow", "--runtime-dir", daemons[i]->dir(), "--upstream",
                                  listen, "--server-key", keys.upstream + ".pub", "--secret-key",
                                  keys.followers[i] + ".key"};
    args.insert(args.end(), options.follow_options.begin(), options.follow_options.end());
    if (const std::string placement = for_follower(options.placements, i); !placement.empty())
      args.insert(args.end(), {"--placement", placement});
    relays[i] = std::make_unique<Relay>(args, follow_log(i));
  }

 private:
  // Follower i's entry of a per-follower list of MeshOptions.
  template <typename T>
  static T for_follower(const std::vector<T> &list, int i) {
    return static_cast<size_t>(i) < list.size() ? list[i] : T{};
  }
};

// Polls every follower's reader until each shows `version` of `name`; the time it took, or -1
// after 60 s (a deadline only: nothing here depends on how fast it goes).
inline int64_t wait_all(std::vector<std::unique_ptr<Watch>> &watches, const char *name,
                        uint64_t version) {
  return lftest::wait_until(
      [&] {
        bool all = true;
        for (auto &w : watches) {
          w->poll(name);
          all = all && w->last == version;
        }
        return all;
      },
      60000);
}

}  // namespace lftest::relay
