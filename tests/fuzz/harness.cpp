#include "harness.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <optional>
#include <signal.h>
#include <stdexcept>
#include <unistd.h>

#include "daemon/devices.hpp"
#include "daemon/handlers.hpp"
#include "daemon/registry.hpp"
#include "device/device.hpp"
#include "ipc/arena.hpp"
#include "ipc/messages.hpp"
#include "ipc/protocol.hpp"
#include "loraflip.h"

namespace loraflip::fuzz {
namespace {

constexpr uint64_t kT0 = 1'000'000'000'000ULL;  // any monotonic time; leases count from it

ipc::ArenaConfig config_for(const std::string &instance) {
  ipc::ArenaConfig c;
  c.instance = instance;
  c.data_bytes = uint64_t{1} << 20;  // small: every input's adapters must fit or fail cleanly
  c.pool_bytes = uint64_t{64} << 10;
  c.max_adapters = 4;
  c.max_readers = 4;
  c.default_history = 2;
  return c;
}

// Two host stand-in devices, so that "cuda:0" and "cuda:0,1" (replication) are served. The
// count is fixed rather than taken from LORAFLIP_HOST_DEVICES: a corpus file must mean the same
// whatever the environment of the run that replays it.
constexpr int kDevices = 2;
// As small as the data arena, for the same reason: device adapters must fit or fail cleanly.
constexpr uint64_t kDeviceBytes = uint64_t{1} << 20;

// The daemon's device arenas over the host stand-in, as loraflipd --device-backend host makes
// them (daemon/server.cpp, open_devices). New, zeroed blocks every time: device memory dies with
// the daemon, so a fresh Registry starts with empty device arenas, as after a restart.
daemon::DeviceSet open_devices(const std::string &instance) {
  std::vector<int> ordinals;
  for (int d = 0; d < kDevices; ++d) ordinals.push_back(d);
  auto set = daemon::DeviceSet::open(device::make_host_backend(instance, kDevices), ordinals,
                                     kDeviceBytes, daemon::kDeviceArenaTag);
  if (!set) throw std::runtime_error("cannot make the fuzz device arenas: " + set.error().message);
  return std::move(set).value();
}

// Everything an instance of the harness puts in /dev/shm: the arena's two segments and the
// stand-in's device blocks.
void remove_instance(const std::string &instance) {
  ipc::Arena::remove(instance);
  device::remove_host_blocks(instance, daemon::kDeviceArenaTag);
}

// Segments "loraflip.fz-<pid>-<n>.*" of processes that are gone (a fuzzer killed by a crash, a
// timeout or -rss_limit_mb never runs its destructors). Names are at most 34 characters, so the
// stand-in never shortens a block's name to a hash (at 40) and every one is found here.
void remove_orphans() {
  DIR *d = ::opendir("/dev/shm");
  if (d == nullptr) return;
  const std::string prefix = "loraflip.fz-";
  std::vector<std::string> instances;
  while (dirent *e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string rest = name.substr(std::strlen("loraflip."));
    const size_t dot = rest.find('.');
    const long pid = std::strtol(rest.c_str() + 3, nullptr, 10);
    if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)
      instances.push_back(rest.substr(0, dot));
  }
  ::closedir(d);
  std::sort(instances.begin(), instances.end());
  instances.erase(std::unique(instances.begin(), instances.end()), instances.end());
  for (const std::string &i : instances) remove_instance(i);
}

bool known_code(int64_t code) { return code <= LF_E_INVALID_ARGUMENT && code >= LF_E_DEVICE; }

}  // namespace

std::vector<std::string_view> split_requests(std::string_view input) {
  std::vector<std::string_view> out;
  while (true) {
    const size_t at = input.find(kSeparator);
    out.push_back(input.substr(0, at));
    if (at == std::string_view::npos) break;
    input.remove_prefix(at + kSeparator.size());
  }
  return out;
}

// The sender of one request: a request may start with kPeerTag and one digit that names it
// ('0' this process, '1' another live process (pid 1), '2' none the kernel could name), so the
// corpus reaches leases and reader entries of other processes. No tag: this process.
std::optional<daemon::PeerCredentials> take_peer(std::string_view &request) {
  const auto me = daemon::PeerCredentials{static_cast<uint32_t>(::getuid()),
                                          static_cast<uint32_t>(::getgid()),
                                          static_cast<uint32_t>(::getpid())};
  if (request.size() < kPeerTag.size() + 1 || request.substr(0, kPeerTag.size()) != kPeerTag)
    return me;
  const char which = request[kPeerTag.size()];
  request.remove_prefix(kPeerTag.size() + 1);
  if (which == '1') return daemon::PeerCredentials{0, 0, 1};
  if (which == '2') return std::nullopt;
  return me;
}

// The frames of one request (see kFrameTag).
std::vector<std::string_view> take_frames(std::string_view request) {
  if (request.find(kFrameTag) == std::string_view::npos) return {std::string_view(), request};
  std::vector<std::string_view> frames;
  for (;;) {
    const size_t at = request.find(kFrameTag);
    frames.push_back(request.substr(0, at));
    if (at == std::string_view::npos) return frames;
    request.remove_prefix(at + kFrameTag.size());
  }
}

struct Harness::State {
  std::string instance;
  std::vector<std::byte> empty_control;  // the control segment of a new arena
  std::optional<daemon::Registry> registry;
};

Harness::Harness() : s_(std::make_unique<State>()) {
  static std::atomic<int> counter{0};
  s_->instance = "fz-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  remove_orphans();
  remove_instance(s_->instance);
  bool created = false;
  auto arena = ipc::Arena::open_or_create(config_for(s_->instance), &created);
  if (!arena) throw std::runtime_error("cannot make the fuzz arena: " + arena.error().message);
  const ipc::Segment &control = arena->control();
  s_->empty_control.assign(control.base(), control.base() + control.size());
}

Harness::~Harness() {
  s_->registry.reset();  // frees the device blocks with its DeviceSet
  remove_instance(s_->instance);
}

const std::string &Harness::instance() const { return s_->instance; }

Outcome Harness::run(std::string_view input) {
  Outcome out;
  // Back to the empty arena: the Registry rebuilds its allocators from the records, so it is
  // made anew over the restored segment (re-attached by name), with new device arenas (the
  // old Registry's DeviceSet frees its blocks first, so their names are free again).
  s_->registry.reset();
  {
    bool created = false;
    auto arena = ipc::Arena::open_or_create(config_for(s_->instance), &created);
    if (!arena) throw std::runtime_error("cannot re-attach the fuzz arena: " + arena.error().message);
    std::memcpy(arena->control().base(), s_->empty_control.data(), s_->empty_control.size());
    auto registry = daemon::Registry::open(std::move(arena).value(), open_devices(s_->instance));
    if (!registry) throw std::runtime_error("Registry::open: " + registry.error().message);
    s_->registry.emplace(std::move(registry).value());
  }
  daemon::Registry &registry = *s_->registry;
  daemon::RequestHandler handler(registry, {"fuzz", "/nonexistent", "fuzz", 1});
  const ipc::Segment &control = registry.arena().control();
  std::vector<std::byte> before(control.size());
  std::vector<daemon::FlipEvent> events;

  uint64_t now = kT0;
  for (std::string_view request : split_requests(input)) {
    ++out.requests;
    now += 1'000'000;  // 1 ms per request: a lease of a few ms expires within one input
    std::memcpy(before.data(), control.base(), before.size());
    std::vector<uint64_t> active_before(registry.arena().max_adapters());
    for (uint32_t a = 0; a < active_before.size(); ++a)
      active_before[a] = registry.arena().adapter(a).active.load();
    events.clear();
    bool deferred = false;
    const std::optional<daemon::PeerCredentials> peer = take_peer(request);
    const std::vector<std::string_view> frames = take_frames(request);
    request = frames.back();  // the body: its id is the reply's
    const std::string reply = handler.handle_frames(frames, peer, now, &events, &deferred);
    auto fail = [&](const std::string &what) {
      out.violations.push_back("request " + std::to_string(out.requests) + ": " + what);
    };
    if (deferred) {
      // A commit waiting on device copies: no reply yet, and nothing may have changed. (Not
      // reached by the fuzzer: a pending event needs a live host event, whose handle holds a
      // random nonce that no input can carry.)
      if (!events.empty() || std::memcmp(before.data(), control.base(), before.size()) != 0)
        fail("a deferred commit changed the control segment");
      continue;
    }

    auto decoded = ipc::decode(reply.data(), reply.size(), size_t{64} << 20);
    if (!decoded) {
      fail("the reply does not decode: " + decoded.error().message);
      continue;
    }
    auto map = ipc::MapView::of(decoded->get(), "reply");
    auto ok = map ? map->boolean("ok") : Result<bool>(make_error(LF_E_PROTOCOL, "not a map"));
    if (!map || !ok || !map->uint("id")) {
      fail("the reply is not {id, ok, ...}");
      continue;
    }
    // Every reply carries the request's id whenever the request lets it be read.
    if (map->uint("id").value() != ipc::msg::scan_request_id(request.data(), request.size()))
      fail("the reply's id is not the request's");
    if (ok.value()) {
      if (!map->map("result")) fail("an ok reply without a result map");
      continue;
    }
    ++out.errors;
    auto error = map->map("error");
    auto code = error ? error->integer("code") : Result<int64_t>(make_error(LF_E_PROTOCOL, ""));
    if (!error || !code || !error->str("message")) {
      fail("an error reply without {code, message}");
      continue;
    }
    if (!known_code(code.value())) fail("unknown error code " + std::to_string(code.value()));
    if (!events.empty()) fail("an error reply announced a flip");

    // Which op was it? Only a request that decoded as a map names one.
    std::string op;
    if (auto req = ipc::decode(request.data(), request.size())) {
      if (auto m = ipc::MapView::of(req->get(), "request")) {
        if (auto o = m->str("op")) op = std::string(o.value());
      }
    }
    // An error never flips anything.
    for (uint32_t a = 0; a < active_before.size(); ++a)
      if (registry.arena().adapter(a).active.load() != active_before[a])
        fail("error " + std::to_string(code.value()) + " to '" + op + "' changed the active word of adapter " +
             std::to_string(a));
    // A failed commit ends its lease by design (the slot returns, the adapter counts an
    // abort); every other error leaves the control segment exactly as it was.
    if (op != "commit" && std::memcmp(before.data(), control.base(), before.size()) != 0) {
      size_t first = 0;
      while (first < before.size() && before[first] == control.base()[first]) ++first;
      fail("error " + std::to_string(code.value()) + " to '" + op +
           "' changed the control segment (first at byte " + std::to_string(first) + ")");
    }
  }
  registry.reap(now + 3'600'000'000'000ULL);  // an hour later: every lease has expired
  return out;
}

}  // namespace loraflip::fuzz
