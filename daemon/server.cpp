#include "daemon/server.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <grp.h>
#include <optional>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include <spdlog/spdlog.h>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "daemon/access.hpp"
#include "daemon/handlers.hpp"
#include "daemon/memory.hpp"
#include "daemon/notify.hpp"
#include "daemon/registry.hpp"
#include "ipc/messages.hpp"
#include "ipc/paths.hpp"
#include "ipc/proc.hpp"
#include "ipc/protocol.hpp"
#include "kernels/validate.hpp"

#ifndef LORAFLIP_VERSION
#define LORAFLIP_VERSION "unknown"
#endif

namespace loraflip::daemon {
namespace {

constexpr uint64_t kDeferredPollNs = 100000;

Error os_error(const std::string &what) {
  const int err = errno;
  return make_error(err == EACCES || err == EPERM ? LF_E_PERMISSION : LF_E_SYSTEM,
                    what + ": " + std::strerror(err));
}

// Makes every missing parent of `path` (mode 0755), then `path` itself with exactly `mode`.
Status make_runtime_dir(const std::string &path, mode_t mode, int gid) {
  for (size_t pos = path.find('/', 1); pos != std::string::npos; pos = path.find('/', pos + 1)) {
    const std::string parent = path.substr(0, pos);
    if (::mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST)
      return os_error("cannot make directory " + parent);
  }
  if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST)
    return os_error("cannot make directory " + path);
  if (gid >= 0 && ::chown(path.c_str(), static_cast<uid_t>(-1), static_cast<gid_t>(gid)) != 0)
    return os_error("cannot give group " + std::to_string(gid) + " to " + path);
  // The setgid bit makes the sockets created inside inherit the directory's group.
  if (::chmod(path.c_str(), mode | (gid >= 0 ? S_ISGID : 0)) != 0)
    return os_error("cannot set the mode of " + path);
  return {};
}

// Close-on-exec file descriptor, closed on destruction.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd &&o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd &operator=(Fd &&o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

}  // namespace

// The device arenas asked for with --devices. Any failure (no GPU, a driver too old, no IPC)
// leaves the daemon serving host placements, with the reason kept for the log and for the
// error every device placement then gets.
DeviceSet open_devices(const Options &options, std::string *note) {
  if (options.devices.empty()) return DeviceSet::none("this daemon serves no devices (see --devices)");
  Result<std::unique_ptr<device::Backend>> backend =
      options.device_backend == "host"
          ? Result<std::unique_ptr<device::Backend>>(device::make_host_backend(options.arena.instance))
          : device::make_cuda_backend();
  if (!backend) {
    *note = backend.error().message;
    return DeviceSet::none(*note);
  }
  // The stand-in's blocks of a killed predecessor are still in /dev/shm (on a GPU they died
  // with it); this daemon holds the instance's lock, so they are its to remove.
  if (options.device_backend == "host") device::remove_host_blocks(options.arena.instance, kDeviceArenaTag);
  Result<DeviceSet> set = DeviceSet::open(std::move(backend).value(), options.devices,
                                          options.device_arena_bytes, kDeviceArenaTag);
  if (!set) {
    *note = set.error().message;
    return DeviceSet::none(*note);
  }
  return std::move(set).value();
}

Result<int> group_id(const std::string &name) {
  std::vector<char> buf(16384);
  group g{};
  group *found = nullptr;
  if (::getgrnam_r(name.c_str(), &g, buf.data(), buf.size(), &found) != 0 || found == nullptr)
    return make_error(LF_E_NOT_FOUND, "no group named '" + name + "'");
  return static_cast<int>(found->gr_gid);
}

struct Server::State {
  Options options;
  std::string runtime_dir;
  bool created = false;
  Fd lock_fd;
  Fd signal_fd;
  Fd stop_fd;
  std::optional<Registry> registry;
  std::optional<RequestHandler> handler;
  AccessPolicy access;
  zmq::context_t context{1};
  zmq::socket_t control{context, zmq::socket_type::router};
  zmq::socket_t events{context, zmq::socket_type::pub};
  std::vector<std::vector<zmq::message_t>> deferred;  // commits waiting on device copies
  std::string device_note;  // why device placement is unavailable, when devices were asked for
  sigset_t old_mask{};
};

Server::Server() : s_(std::make_unique<State>()) {}

Server::~Server() {
  if (s_ != nullptr) {
    s_->control.close();
    s_->events.close();
    ::sigprocmask(SIG_SETMASK, &s_->old_mask, nullptr);
  }
}

const std::string &Server::runtime_dir() const { return s_->runtime_dir; }
bool Server::arena_was_created() const { return s_->created; }

void Server::stop() {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(s_->stop_fd.get(), &one, sizeof one);
}

Result<std::unique_ptr<Server>> Server::start(const Options &options) {
  std::unique_ptr<Server> server(new Server());
  State &s = *server->s_;
  s.options = options;
  s.runtime_dir = options.runtime_dir.empty() ? ipc::default_runtime_dir(options.arena.instance)
                                              : options.runtime_dir;
  while (s.runtime_dir.size() > 1 && s.runtime_dir.back() == '/') s.runtime_dir.pop_back();
  if (s.runtime_dir.size() + std::strlen("/control") > ipc::kMaxSocketPath)
    return make_error(LF_E_TOO_LARGE, "runtime directory '" + s.runtime_dir +
                                          "' is too long for a socket path (max " +
                                          std::to_string(ipc::kMaxSocketPath - 8) + " bytes)");
  int gid = -1;
  if (!options.group.empty()) {
    auto g = group_id(options.group);
    if (!g) return g.error();
    gid = g.value();
  }
  std::vector<uint32_t> allowed_uids, allowed_gids;
  for (const std::string &user : options.allow_users) {
    Result<uint32_t> uid = user_id(user);
    if (!uid) return uid.error();
    allowed_uids.push_back(uid.value());
  }
  for (const std::string &group : options.allow_groups) {
    Result<uint32_t> id = group_id_of(group);
    if (!id) return id.error();
    allowed_gids.push_back(id.value());
  }
  s.access = AccessPolicy(std::move(allowed_uids), std::move(allowed_gids),
                          static_cast<uint32_t>(::geteuid()));
  if (Status st = make_runtime_dir(s.runtime_dir, 0770, gid); !st) return st.error();

  // One daemon per runtime directory: the lock dies with the process, even with kill -9.
  const std::string lock_path = s.runtime_dir + "/lock";
  s.lock_fd = Fd(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0660));
  if (s.lock_fd.get() < 0) return os_error("cannot open " + lock_path);
  if (::flock(s.lock_fd.get(), LOCK_EX | LOCK_NB) != 0) {
    char pid[32] = {0};
    [[maybe_unused]] ssize_t n = ::pread(s.lock_fd.get(), pid, sizeof pid - 1, 0);
    return make_error(LF_E_EXISTS, "another loraflipd (pid " + std::string(pid) +
                                       ") serves " + s.runtime_dir);
  }
  const std::string pid_text = std::to_string(::getpid());
  if (::ftruncate(s.lock_fd.get(), 0) != 0 ||
      ::pwrite(s.lock_fd.get(), pid_text.data(), pid_text.size(), 0) < 0)
    return os_error("cannot write " + lock_path);

  ipc::ArenaConfig arena_config = options.arena;
  arena_config.gid = gid;
  Result<ipc::Arena> arena = ipc::Arena::open_or_create(arena_config, &s.created);
  if (!arena) return arena.error();
  Result<Registry> registry = Registry::open(std::move(arena).value(), open_devices(options, &s.device_note));
  if (!registry) return registry.error();
  s.registry.emplace(std::move(registry).value());
  ipc::ArenaHeader &h = s.registry->arena().header();
  h.daemon_pid.store(static_cast<uint64_t>(::getpid()));
  h.daemon_start.store(ipc::process_start_time(::getpid()));
  s.handler.emplace(*s.registry, DaemonIdentity{options.arena.instance, s.runtime_dir,
                                                LORAFLIP_VERSION, ipc::unix_now_ns()});

  // Signals arrive as readable data on a descriptor the loop polls, never as handlers that
  // interrupt it halfway through a flip.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  if (::sigprocmask(SIG_BLOCK, &mask, &s.old_mask) != 0) return os_error("sigprocmask");
  s.signal_fd = Fd(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
  if (s.signal_fd.get() < 0) return os_error("signalfd");
  s.stop_fd = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (s.stop_fd.get() < 0) return os_error("eventfd");

  try {
    s.control.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(ipc::kMaxMessageBytes));
    s.control.set(zmq::sockopt::linger, 0);
    s.control.set(zmq::sockopt::sndhwm, 10000);
    s.events.set(zmq::sockopt::linger, 0);
    // The socket files must never exist with a wider mode, even for an instant: set the umask
    // before bind rather than chmod after. A stale file from a killed daemon is ours (we hold
    // the lock), so remove it first.
    const std::string control_path = s.runtime_dir + "/control";
    const std::string events_path = s.runtime_dir + "/events";
    ::unlink(control_path.c_str());
    ::unlink(events_path.c_str());
    const mode_t old_umask = ::umask(0007);
    try {
      s.control.bind(ipc::control_endpoint(s.runtime_dir));
      s.events.bind(ipc::events_endpoint(s.runtime_dir));
    } catch (...) {
      ::umask(old_umask);
      throw;
    }
    ::umask(old_umask);
  } catch (const zmq::error_t &e) {
    return make_error(LF_E_SYSTEM, std::string("cannot bind the sockets in ") + s.runtime_dir +
                                       ": " + e.what());
  }
  return server;
}

bool Server::serve(const std::vector<zmq::message_t> &frames) {
  State &s = *s_;
  const zmq::message_t &body = frames.back();
  const std::string_view request(static_cast<const char *>(body.data()), body.size());
  std::vector<FlipEvent> events;
  bool deferred = false;
  std::string reply;
  // libzmq fills Peer-Address from SO_PEERCRED for IPC connections: "<host>:<uid>:<gid>:<pid>",
  // the pid in this daemon's pid namespace. The one source of who sent a request.
  const char *address = zmq_msg_gets(body.handle(), "Peer-Address");
  const std::optional<PeerCredentials> peer =
      address != nullptr ? parse_peer_address(address) : std::nullopt;
  if (s.access.restricts() && (address == nullptr || !s.access.allows_address(address))) {
    const std::string why = s.access.refusal(address == nullptr ? "" : address);
    spdlog::warn("request refused: {}", why);
    reply = s.handler->refuse(request, make_error(LF_E_PERMISSION, why));
  } else {
    // Every frame after the routing id: the handler checks the request's shape.
    std::vector<std::string_view> rest;
    for (size_t i = 1; i < frames.size(); ++i)
      rest.emplace_back(static_cast<const char *>(frames[i].data()), frames[i].size());
    reply = s.handler->handle_frames(rest, peer, ipc::monotonic_now_ns(), &events, &deferred);
  }
  if (deferred) return true;
  // The routing id and the empty delimiter back, then the reply.
  try {
    zmq::message_t routing_id;
    routing_id.copy(const_cast<zmq::message_t &>(frames[0]));
    s.control.send(routing_id, zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    s.control.send(zmq::message_t(), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    s.control.send(zmq::buffer(reply), zmq::send_flags::dontwait);
  } catch (const zmq::error_t &e) {
    spdlog::warn("reply dropped: {}", e.what());
  }
  for (const FlipEvent &ev : events) {
    spdlog::info("{} '{}': version {} -> {}", ev.kind, ev.adapter, ev.previous, ev.version);
    const std::string body = ipc::msg::encode_map(ipc::msg::FlipEventMessage{
        ev.adapter, ev.kind, ev.version, ev.previous, ipc::unix_now_ns(), ev.seq});
    try {
      s.events.send(zmq::buffer(ipc::event_topic(ev.adapter)),
                    zmq::send_flags::sndmore | zmq::send_flags::dontwait);
      s.events.send(zmq::buffer(body), zmq::send_flags::dontwait);
    } catch (const zmq::error_t &err) {
      spdlog::warn("event dropped: {}", err.what());
    }
  }
  return false;
}

int Server::run() {
  State &s = *s_;
  Registry &registry = *s.registry;
  const ipc::ArenaHeader &h = registry.arena().header();
  spdlog::info("loraflipd {} serving instance '{}' in {} ({} arena: {} MiB data, {} adapters, "
               "{} readers)",
               LORAFLIP_VERSION, s.options.arena.instance, s.runtime_dir,
               s.created ? "new" : "re-attached", h.data_bytes >> 20, h.max_adapters,
               h.max_readers);
  // Which instruction-set variant the host commit checks run (chosen once, here at the latest).
  spdlog::info("commit checks on the CPU: {} variant", kernels::validate_isa());
  const DeviceSet &devices = registry.devices();
  if (s.access.restricts())
    spdlog::info("control requests accepted only from root, the daemon's user and --allow-user/"
                 "--allow-group ({} users, {} groups)",
                 s.options.allow_users.size(), s.options.allow_groups.size());
  if (!s.device_note.empty())
    spdlog::error("device placement unavailable, serving host memory only: {}", s.device_note);
  for (size_t d = 0; d < devices.size(); ++d)
    spdlog::info("device {} ({}): {} MiB arena", devices.ordinal(d), s.options.device_backend,
                 devices.allocator(d).size() >> 20);
  for (const Registry::RestartNote &note : registry.device_restarts()) {
    if (note.restored)
      spdlog::info("adapter '{}': version {} put back on its devices from its host copy (the "
                   "previous daemon's device memory is gone; older versions were not kept)",
                   note.adapter, note.version);
    else
      spdlog::warn("adapter '{}' lived in device memory of the previous daemon, which is gone, "
                   "and could not be put back ({}): dropped; create and publish it again",
                   note.adapter, note.why);
  }
  if (!s.created) {
    for (uint32_t index : registry.live_adapters()) {
      const ipc::AdapterRecord &r = registry.arena().adapter(index);
      spdlog::info("adapter '{}' serves version {}", r.name, ipc::active_version(r.active.load()));
    }
  }

  const uint64_t watchdog_ns = watchdog_interval_ns();
  const uint64_t reap_ns = uint64_t{s.options.reap_interval_ms} * 1000000ULL;
  uint64_t next_reap = ipc::monotonic_now_ns();
  uint64_t next_watchdog = next_reap;
  HeapTrimmer heap;  // a burst's freed memory goes back to the kernel (daemon/memory.hpp)
  sd_notify_send("READY=1\nSTATUS=serving " + s.runtime_dir);

  bool running = true;
  while (running) {
    if (const std::optional<Error> &lost = s.handler->device_lost()) {
      // Serving on would fail every device request: exit non-zero so that systemd
      // (Restart=on-failure) starts a daemon with fresh contexts, which puts the adapters back.
      spdlog::critical("a GPU's context failed for good, exiting to be restarted: {}",
                       lost->message);
      sd_notify_send("STOPPING=1");
      return 1;
    }
    uint64_t now = ipc::monotonic_now_ns();
    if (now >= next_reap) {
      const ReapReport r = registry.reap(now);
      if (r.any())
        spdlog::info("reclaimed: {} dead readers ({} pins), {} dead writers, {} expired leases, "
                     "{} dropped adapters freed",
                     r.dead_readers, r.pins_cleared, r.dead_writers, r.expired_leases,
                     r.adapters_freed);
      if (const uint64_t freed = heap.maybe_trim(now); freed != 0)
        spdlog::debug("gave {} KiB of freed heap back to the system", freed >> 10);
      next_reap = now + reap_ns;
    }
    if (watchdog_ns != 0 && now >= next_watchdog) {
      sd_notify_send("WATCHDOG=1");
      next_watchdog = now + watchdog_ns;
    }
    uint64_t wake = next_reap;
    if (watchdog_ns != 0) wake = std::min(wake, next_watchdog);
    // A deferred commit is polled about every 100 microseconds of idle time.
    if (!s.deferred.empty()) wake = std::min(wake, now + kDeferredPollNs);
    // Host copies of flipped device versions are made right after the replies went out.
    const auto timeout = registry.restart_copies_due()
                             ? std::chrono::milliseconds(0)
                             : std::chrono::milliseconds((wake - std::min(wake, now)) / 1000000 + 1);

    zmq::pollitem_t items[] = {
        {s.control.handle(), 0, ZMQ_POLLIN, 0},
        {nullptr, s.signal_fd.get(), ZMQ_POLLIN, 0},
        {nullptr, s.stop_fd.get(), ZMQ_POLLIN, 0},
    };
    try {
      zmq::poll(items, 3, timeout);
    } catch (const zmq::error_t &e) {
      if (e.num() == EINTR) continue;
      spdlog::error("poll failed: {}", e.what());
      return 1;
    }
    if (items[1].revents & ZMQ_POLLIN) {
      signalfd_siginfo info{};
      [[maybe_unused]] ssize_t n = ::read(s.signal_fd.get(), &info, sizeof info);
      spdlog::info("signal {} received, stopping", info.ssi_signo);
      running = false;
    }
    if (items[2].revents & ZMQ_POLLIN) running = false;

    // Host copies of device versions flipped since the last pass, after the replies went out.
    if (registry.restart_copies_due()) {
      for (const std::string &failure : registry.update_restart_copies())
        spdlog::error("host copy for restarts failed, a restart would drop the adapter: {}",
                      failure);
    }

    // Commits waiting for their writer's device copies: ask again, in arrival order.
    for (size_t i = 0; i < s.deferred.size();) {
      if (serve(s.deferred[i])) {
        ++i;
      } else {
        s.deferred.erase(s.deferred.begin() + static_cast<std::ptrdiff_t>(i));
      }
    }
    if (!(items[0].revents & ZMQ_POLLIN)) continue;

    // Drain what is queued, but come back to the timers after a bounded batch.
    for (int batch = 0; batch < 256; ++batch) {
      std::vector<zmq::message_t> frames;
      try {
        if (!zmq::recv_multipart(s.control, std::back_inserter(frames), zmq::recv_flags::dontwait))
          break;
      } catch (const zmq::error_t &e) {
        spdlog::warn("receive failed: {}", e.what());
        break;
      }
      if (frames.size() < 2) continue;  // a ROUTER always prepends the peer's routing id
      if (serve(frames)) s.deferred.push_back(std::move(frames));
    }
  }
  sd_notify_send("STOPPING=1");
  spdlog::info("stopped; the arena stays for the next start");
  return 0;
}

}  // namespace loraflip::daemon
