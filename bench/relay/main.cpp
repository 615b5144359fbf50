// lf-bench-relay: issue 15's figure, all in one run so that ratios compare like with like.
//
//   relay: an adapter of --mib MiB (32) flips on an upstream daemon; loraflip-relay serve beside
//          it and loraflip-relay follow beside each of 1, 2 and 4 follower daemons carry it; the
//          figure is the time from the upstream's flip to the last follower's flip, both seen
//          by a reader of this process waiting on the daemons' flip futex (lf_reader_wait).
//          With CurveZMQ (keys and allow list, as in service) and with --insecure (plain TCP):
//          the difference is the cost of encryption.
//   bare:  the same bytes in the same 1 MiB chunks from one ZeroMQ ROUTER of this process to as
//          many DEALER receiver processes (this program again, `--receive`), each copying the
//          chunks into one buffer; the figure is from the first send to the last receiver's
//          last byte. Plain TCP and CurveZMQ.
//
// The bare transfer is the floor of what any relay can do over ZeroMQ; the relay adds a copy
// out of the upstream's arena, a checksum on each side, the write into the follower's slot and
// its daemon's checksum, and a request per chunk (a window of 8). All processes share this
// machine's cores: with 4 followers, 4 daemons and 5 relays compete for them.
//
// Not a test: it prints figures and judges them against the 1.3x target, and exits 0 either way.
#include <algorithm>
#include <arpa/inet.h>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <zmq.hpp>

#include "bench_support.hpp"
#include "loraflip.h"
#include "tools/relay/keys.hpp"

namespace lfbench::relay_bench {

namespace {

constexpr uint64_t kChunk = uint64_t{1} << 20;  // the relay's default --chunk-bytes

struct Options {
  bool quick = false;
  int rounds = 10;
  uint64_t mib = 32;
  std::vector<int> followers{1, 2, 4};
  std::string daemon = LF_BENCH_DAEMON_PATH, relay = LF_BENCH_RELAY_PATH;
};

void usage() {
  std::puts(
      "usage: lf-bench-relay [--quick] [--rounds N] [--mib N] [--daemon PATH] [--relay PATH]\n"
      "  --quick   3 rounds per figure (a smoke run; the default is 10)\n"
      "  --mib     the adapter's size (32)\n"
      "Starts its own daemons and relays on 127.0.0.1 and removes them at the end.");
}

std::string self_path() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) fail("readlink /proc/self/exe");
  return std::string(buf, static_cast<size_t>(n));
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len) != 0)
    fail("no free port on 127.0.0.1");
  ::close(fd);
  return ntohs(a.sin_port);
}

// A child that execs `argv` with its stderr in `log`; SIGTERM and reaped on destruction.
struct Child {
  pid_t pid = -1;
  Child(std::vector<std::string> argv, const std::string &log) {
    pid = spawn(
        [&] {
          std::vector<char *> v;
          for (std::string &a : argv) v.push_back(a.data());
          v.push_back(nullptr);
          if (!log.empty() && !std::freopen(log.c_str(), "w", stderr)) return 98;
          ::execv(v[0], v.data());
          return 97;
        },
        "lf-bench-relay");
  }
  ~Child() {
    if (pid <= 0) return;
    ::kill(pid, SIGTERM);
    wait_child(pid);
  }
  Child(const Child &) = delete;
  Child &operator=(const Child &) = delete;
};

// ---------------------------------------------------------------------------------------------
// bare: ROUTER here, DEALER receivers in child processes

// `--receive ENDPOINT BYTES [SERVER_PUBLIC_KEY]`: says "ready", then per round takes BYTES in
// kChunk messages into one buffer and answers the CLOCK_MONOTONIC time of the last byte; an
// empty message ends it.
int receive_main(const std::string &endpoint, uint64_t bytes, const std::string &server_key) {
  zmq::context_t context(1);
  zmq::socket_t s(context, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  if (!server_key.empty()) {
    char pub[41], sec[41];
    if (zmq_curve_keypair(pub, sec) != 0) return 3;
    s.set(zmq::sockopt::curve_serverkey, server_key);
    s.set(zmq::sockopt::curve_publickey, std::string(pub));
    s.set(zmq::sockopt::curve_secretkey, std::string(sec));
  }
  s.connect(endpoint);
  (void)s.send(zmq::str_buffer("ready"));
  std::vector<std::byte> image(bytes);
  while (true) {
    uint64_t got = 0;
    while (got < bytes) {
      zmq::message_t m;
      if (!s.recv(m)) return 4;
      if (m.size() == 0) return 0;
      std::memcpy(image.data() + got, m.data(), std::min<uint64_t>(m.size(), bytes - got));
      got += m.size();
    }
    const uint64_t done = now_ns();
    (void)s.send(zmq::buffer(&done, sizeof done));
  }
}

// One figure per round: first send to the last receiver's last byte, in ms.
std::vector<double> bare(const Options &o, int receivers, bool curve) {
  const uint64_t bytes = o.mib << 20;
  char pub[41] = {}, sec[41] = {};
  if (curve && zmq_curve_keypair(pub, sec) != 0) fail("zmq_curve_keypair: no CURVE in this libzmq");
  const std::string endpoint = "tcp://127.0.0.1:" + std::to_string(free_port());
  // The receivers first, before this process has a ZeroMQ context (and its threads) to fork;
  // they connect before the bind and ZeroMQ retries until it is there.
  std::vector<std::unique_ptr<Child>> children;
  for (int i = 0; i < receivers; ++i) {
    std::vector<std::string> argv{self_path(), "--receive", endpoint, std::to_string(bytes)};
    if (curve) argv.push_back(pub);
    children.push_back(std::make_unique<Child>(argv, ""));
  }
  std::vector<std::byte> image(bytes, std::byte{0x5a});
  zmq::context_t context(1);
  zmq::socket_t router(context, zmq::socket_type::router);
  router.set(zmq::sockopt::linger, 0);
  router.set(zmq::sockopt::sndhwm, 0);  // every chunk of every round queued: a bare transfer
  if (curve) {
    router.set(zmq::sockopt::curve_server, true);
    router.set(zmq::sockopt::curve_secretkey, std::string(sec));
  }
  router.bind(endpoint);
  std::vector<std::string> peers;
  while (static_cast<int>(peers.size()) < receivers) {
    zmq::message_t id, body;
    if (!router.recv(id) || !router.recv(body)) fail("bare: a receiver's ready");
    peers.push_back(id.to_string());
  }
  std::vector<double> ms;
  for (int r = 0; r < o.rounds; ++r) {
    const uint64_t start = now_ns();
    // Chunk by chunk across the receivers, so that they all progress at once, as the
    // followers do; each message points into `image` (no copy, as the relay sends).
    for (uint64_t off = 0; off < bytes; off += kChunk)
      for (const std::string &peer : peers) {
        (void)router.send(zmq::buffer(peer), zmq::send_flags::sndmore);
        zmq::message_t chunk(image.data() + off, std::min(kChunk, bytes - off),
                             [](void *, void *) {}, nullptr);
        (void)router.send(chunk, zmq::send_flags::none);
      }
    uint64_t last = 0;
    for (int i = 0; i < receivers; ++i) {
      zmq::message_t id, body;
      if (!router.recv(id) || !router.recv(body) || body.size() != sizeof(uint64_t))
        fail("bare: a receiver's answer");
      uint64_t done = 0;
      std::memcpy(&done, body.data(), sizeof done);
      last = std::max(last, done);
    }
    ms.push_back(static_cast<double>(last - start) / 1e6);
  }
  for (const std::string &peer : peers) {
    (void)router.send(zmq::buffer(peer), zmq::send_flags::sndmore);
    zmq::message_t end;
    (void)router.send(end, zmq::send_flags::none);
  }
  for (auto &c : children) {
    wait_child(c->pid);
    c->pid = -1;
  }
  return ms;
}

// ---------------------------------------------------------------------------------------------
// relay: daemons and loraflip-relay processes

// A reader on one daemon, waiting for one version at a time.
struct Waiter {
  lf_reader_t *reader = nullptr;
  lf_adapter_ref_t ref = 0;
  explicit Waiter(const std::string &dir) {
    check(lf_reader_open(dir.c_str(), &reader), "lf_reader_open " + dir);
  }
  ~Waiter() { lf_reader_close(reader); }
  // CLOCK_MONOTONIC when `version` (or newer) became active; 0 after 120 s without it.
  uint64_t wait(uint64_t version) {
    const uint64_t deadline = now_ns() + 120'000'000'000ULL;
    while (now_ns() < deadline) {
      if (ref == 0 && lf_reader_find(reader, "policy", &ref) != LF_OK) {
        ref = 0;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      uint64_t active = 0;
      if (lf_reader_active_version(reader, ref, &active) == LF_OK && active >= version)
        return now_ns();
      (void)lf_reader_wait(reader, ref, active, 100, &active);
      if (active >= version) return now_ns();
    }
    return 0;
  }
};

void publish(lf_client_t *c, uint64_t round) {
  lf_writer_t *w = nullptr;
  check(lf_client_begin_write(c, "policy", 0, &w), "begin_write", c);
  for (size_t t = 0; t < lf_writer_tensor_count(w); ++t) {
    lf_tensor_view_t v{};
    lf_writer_tensor(w, t, &v);
    std::memset(v.data, static_cast<int>(round * 7 + t), v.nbytes);
  }
  uint64_t version = 0;
  check(lf_writer_commit(w, 0, &version), "commit", c);
}

std::vector<double> relay(const Options &o, int followers, bool curve, const std::string &tmp) {
  const std::string tag = tmp + "/" + (curve ? "curve" : "plain") + std::to_string(followers);
  const std::string pid = std::to_string(::getpid());
  std::vector<std::string> secret, pub;
  const auto make_key = [&](const std::string &name) {
    auto keys = loraflip::relay::generate_keypair();
    if (!keys) fail(keys.error().message);
    auto written = loraflip::relay::write_keypair(tag + "-" + name, keys.value());
    if (!written) fail(written.error().message);
    secret.push_back(tag + "-" + name + ".key");
    pub.push_back(written.value());
    return keys->public_z85;
  };
  std::vector<std::string> instances;
  // BenchDaemon removes the arena of the daemon started last only (one per benchmark, so far):
  // the others' are removed here, on every way out.
  struct RemoveArenas {
    const Options &o;
    std::vector<std::string> &instances;
    ~RemoveArenas() {
      for (const std::string &i : instances) {
        const std::string cmd = o.daemon + " --instance " + i + " --remove-arena >/dev/null 2>&1";
        [[maybe_unused]] int rc = std::system(cmd.c_str());
      }
    }
  } remove_arenas{o, instances};
  std::vector<std::unique_ptr<BenchDaemon>> daemons;  // stopped before the arenas go
  for (int i = 0; i <= followers; ++i) {
    const std::string name = i == 0 ? "up" : "f" + std::to_string(i);
    instances.push_back("lf-bench-relay-" + pid + "-" + name + (curve ? "c" : "p"));
    daemons.push_back(std::make_unique<BenchDaemon>(o.daemon, instances.back(),
                                                    tag + "-" + name + ".run",
                                                    std::vector<std::string>{}, 30));
    daemons.back()->start();
  }
  std::vector<std::unique_ptr<Child>> relays;
  const std::string endpoint = "tcp://127.0.0.1:" + std::to_string(free_port());
  {
    std::vector<std::string> args{o.relay, "serve", "--runtime-dir", daemons[0]->dir(),
                                  "--listen", endpoint};
    if (curve) {
      make_key("up");
      std::ofstream allow(tag + ".allow");
      for (int i = 1; i <= followers; ++i) allow << make_key("f" + std::to_string(i)) << "\n";
      args.insert(args.end(), {"--secret-key", secret[0], "--allow", tag + ".allow"});
    } else {
      args.push_back("--insecure");
    }
    relays.push_back(std::make_unique<Child>(args, daemons[0]->dir() + ".relay.log"));
  }
  for (int i = 1; i <= followers; ++i) {
    std::vector<std::string> args{o.relay, "follow", "--runtime-dir", daemons[i]->dir(),
                                  "--upstream", endpoint};
    if (curve)
      args.insert(args.end(), {"--server-key", pub[0], "--secret-key", secret[i]});
    else
      args.push_back("--insecure");
    relays.push_back(std::make_unique<Child>(args, daemons[i]->dir() + ".relay.log"));
  }

  lf_client_t *up = nullptr;
  check(lf_client_open(daemons[0]->dir().c_str(), 5000, &up), "lf_client_open");
  {
    // f16 LoRA factors, 16 tensors of 4096 x (mib / 16 * 128): --mib MiB in all. Slots for
    // history 3, the relay's pin and the writer (docs/operations.md).
    lf_spec_t *spec = nullptr;
    check(lf_spec_new(&spec), "lf_spec_new");
    const int64_t cols = static_cast<int64_t>(o.mib) * 8;
    for (int t = 0; t < 16; ++t) {
      const int64_t shape[2] = {4096, cols};
      const std::string name = "base_model.model.model.layers." + std::to_string(t / 2) +
                               ".self_attn.q_proj.lora_" + (t % 2 ? "B" : "A") + ".weight";
      check(lf_spec_add_tensor(spec, name.c_str(), LF_DTYPE_F16, 2, shape), "add_tensor");
    }
    check(lf_spec_set_slots(spec, 6, 3), "set_slots");
    check(lf_client_create_adapter(up, "policy", spec), "create_adapter", up);
    lf_spec_free(spec);
  }
  std::vector<std::unique_ptr<Waiter>> waiters;
  for (auto &d : daemons) waiters.push_back(std::make_unique<Waiter>(d->dir()));
  // Version 1 makes the followers create the adapter; not measured.
  publish(up, 1);
  for (auto &w : waiters)
    if (w->wait(1) == 0) fail("followers did not reach version 1; see " + tag + "-*.run.relay.log");
  std::vector<double> ms;
  for (int r = 0; r < o.rounds; ++r) {
    const uint64_t version = static_cast<uint64_t>(r) + 2;
    std::vector<uint64_t> stamps(waiters.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < waiters.size(); ++i)
      threads.emplace_back([&, i] { stamps[i] = waiters[i]->wait(version); });
    publish(up, version);
    for (auto &t : threads) t.join();
    if (std::count(stamps.begin(), stamps.end(), uint64_t{0}) != 0)
      fail("a follower did not reach version " + std::to_string(version));
    const uint64_t last = *std::max_element(stamps.begin() + 1, stamps.end());
    ms.push_back(static_cast<double>(last - stamps[0]) / 1e6);
  }
  lf_client_close(up);
  waiters.clear();
  relays.clear();  // before the daemons
  daemons.clear();
  return ms;
}

int run(const Options &o) {
  install_signal_cleanup("lf-bench-relay");
  char tmpl[] = "/tmp/lf-bench-relay-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) fail("mkdtemp");
  const std::string tmp = tmpl;
  std::printf("lf-bench-relay: %llu MiB adapter, 1 MiB chunks, loopback; %d rounds per figure "
              "(medians, ms)\ncpu: %s; load: %s\n\n",
              static_cast<unsigned long long>(o.mib), o.rounds, cpu_model().c_str(),
              loadavg().c_str());
  std::printf("%-9s %10s %10s %12s %12s %12s %12s %10s %12s\n", "followers", "bare tcp",
              "bare curve", "relay plain", "relay curve", "curve cost", "curve/bare", "plain/bare",
              "curve/curve");
  for (int n : o.followers) {
    const double bare_tcp = stats_of(bare(o, n, false)).median;
    const double bare_curve = stats_of(bare(o, n, true)).median;
    const double plain = stats_of(relay(o, n, false, tmp)).median;
    const double curve = stats_of(relay(o, n, true, tmp)).median;
    std::printf("%-9d %10.1f %10.1f %12.1f %12.1f %12.1f %11.2fx %9.2fx %11.2fx\n", n, bare_tcp,
                bare_curve, plain, curve, curve - plain, curve / bare_tcp, plain / bare_tcp,
                curve / bare_curve);
    std::fflush(stdout);
  }
  std::printf("\ncurve cost: relay curve - relay plain. curve/bare: relay with CurveZMQ against "
              "the bare plain-TCP transfer (target: at most 1.3x). plain/bare: both plain TCP "
              "(the relay's own cost). curve/curve: both with CurveZMQ.\n");
  std::string cmd = "rm -rf '" + tmp + "'";
  [[maybe_unused]] int rc = std::system(cmd.c_str());
  return 0;
}

}  // namespace

}  // namespace lfbench::relay_bench

int main(int argc, char **argv) {
  using namespace lfbench::relay_bench;
  try {
    if (argc >= 4 && std::string(argv[1]) == "--receive")
      return receive_main(argv[2], std::stoull(argv[3]), argc >= 5 ? argv[4] : "");
    Options o;
    lfbench::Args args(argc, argv, usage);
    while (args.next()) {
      if (args.is("--quick")) o.quick = true, o.rounds = 3;
      else if (args.is("--rounds")) o.rounds = std::max(1, std::stoi(args.value()));
      else if (args.is("--mib")) o.mib = std::max<uint64_t>(1, std::stoull(args.value()));
      else if (args.is("--daemon")) o.daemon = args.value();
      else if (args.is("--relay")) o.relay = args.value();
      else args.unknown();
    }
    return run(o);
  } catch (const std::exception &e) {
    std::fprintf(stderr, "lf-bench-relay: %s\n", e.what());
    return 1;
  }
}
