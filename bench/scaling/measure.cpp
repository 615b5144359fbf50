#include "measure.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <sys/mman.h>
#include <thread>
#include <unistd.h>

#include "loraflip.h"
#include "observer.hpp"

namespace lfbench::scaling {

namespace {

void progress(const std::string &what) {
  std::printf("  %s: done\n", what.c_str());
  std::fflush(stdout);
}

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// One figure's daemon, its client and, when asked for, the observing reader process (started
// before the client, so that fork copies no ZeroMQ context into it). Everything goes on every
// way out: the observer first, then the client, then the daemon and its arena.
class Section {
 public:
  Section(const Options &opt, const std::string &tag, std::vector<std::string> daemon_args,
          bool with_observer)
      : instance_("lfscale-" + std::to_string(::getpid()) + "-" + tag),
        daemon_(opt.daemon, instance_, "/tmp/" + instance_, std::move(daemon_args), 15) {
    daemon_.start();
    if (with_observer) {
      observer_ = static_cast<Observer *>(shared_map(sizeof(Observer)));
      observer_pid_ = spawn([&] { return observer_main(*observer_, daemon_.dir(), false); });
      g_children[0] = observer_pid_;
    }
    try {
      check(lf_client_open(daemon_.dir().c_str(), 10000, &client_), "lf_client_open");
    } catch (...) {
      stop_observer();
      throw;
    }
  }
  ~Section() {
    stop_observer();
    lf_client_close(client_);
  }
  Section(const Section &) = delete;
  Section &operator=(const Section &) = delete;

  lf_client_t *client() const { return client_; }
  Observer &observer() const { return *observer_; }
  const std::string &dir() const { return daemon_.dir(); }
  pid_t daemon_pid() const { return daemon_.pid(); }

 private:
  void stop_observer() {
    if (observer_ == nullptr) return;
    observer_->mode.store(kQuit);
    if (observer_pid_ > 0) wait_child(observer_pid_);
    g_children[0] = -1;
    ::munmap(observer_, sizeof(Observer));
    observer_ = nullptr;
  }

  std::string instance_;
  BenchDaemon daemon_;
  Observer *observer_ = nullptr;  // in shared memory
  pid_t observer_pid_ = -1;
  lf_client_t *client_ = nullptr;
};

// The bytes every 4 KiB version is written from.
const std::vector<std::byte> &flip_source() {
  static const std::vector<std::byte> src(4096, std::byte{0x3c});  // f16 1.0
  return src;
}

// Creates a 4 KiB adapter (flip_tensors) and commits its first version, without the observer.
void create_small_adapter(lf_client_t *client, const std::string &name) {
  create_lora_adapter(client, name, flip_tensors(), 1);
  lf_writer_t *w = nullptr;
  check(lf_client_begin_write(client, name.c_str(), 0, &w), "begin_write " + name, client);
  check(lf_writer_copy_in(w, 0, flip_source().data(), 4096), "copy_in " + name);
  check(lf_writer_commit(w, 0, nullptr), "commit " + name, client);
}

// A Publisher of a 4 KiB adapter that has `version` active.
Publisher small_publisher(const Section &s, const std::string &name, uint64_t version) {
  return Publisher{s.client(), s.observer(), name, {0}, {4096}, flip_source().data(), version};
}

uint64_t status_kib(const std::string &text, const char *key) {
  const size_t at = text.find(key);
  return at == std::string::npos ? 0 : std::strtoull(text.c_str() + at + std::strlen(key), nullptr, 10);
}

// A number from the daemon's stats JSON ("readers": 12): only to print beside the memory.
uint64_t stats_count(lf_client_t *client, const char *key) {
  char *json = nullptr;
  check(lf_client_stats(client, &json), "lf_client_stats", client);
  const std::string text = json;
  lf_free(json);
  const std::string quoted = std::string("\"") + key + "\":";
  const size_t at = text.find(quoted);
  return at == std::string::npos ? 0 : std::strtoull(text.c_str() + at + quoted.size(), nullptr, 10);
}

// Lets the daemon catch up first: two reaper passes (100 ms each by default) to notice readers
// that came or went, and a stats request, so that its event loop has handled what is queued.
DaemonMemory daemon_memory(const Section &s, const char *held_key) {
  sleep_ms(250);
  DaemonMemory m;
  m.held = stats_count(s.client(), held_key);
  std::ifstream in("/proc/" + std::to_string(s.daemon_pid()) + "/status");
  const std::string text(std::istreambuf_iterator<char>(in), {});
  m.rss_kib = status_kib(text, "VmRSS:");
  m.anon_kib = status_kib(text, "RssAnon:");
  m.shmem_kib = status_kib(text, "RssShmem:");
  if (m.rss_kib == 0) fail("cannot read the daemon's /proc/<pid>/status");
  return m;
}

// An idle reader process: opens a reader, pins the active version of `adapter`, counts itself
// in `ready` (and in `errors` when something failed), and holds the pin until `wake_fd` reads
// end of file. `parent_fd` is the write end, which only the parent may keep open.
int idle_reader_main(const std::string &dir, const std::string &adapter, int wake_fd,
                     int parent_fd, std::atomic<uint32_t> &ready, std::atomic<uint32_t> &errors) {
  ::close(parent_fd);
  lf_reader_t *reader = nullptr;
  lf_adapter_ref_t ref = 0;
  lf_pin_t *pin = nullptr;
  const bool ok = lf_reader_open(dir.c_str(), &reader) == LF_OK &&
                  lf_reader_find(reader, adapter.c_str(), &ref) == LF_OK &&
                  lf_reader_acquire(reader, ref, 0, &pin) == LF_OK;
  if (!ok) errors.fetch_add(1);
  ready.fetch_add(1);
  char c;
  while (::read(wake_fd, &c, 1) < 0 && errno == EINTR) {
  }
  lf_pin_release(pin);
  lf_reader_close(reader);
  return ok ? 0 : 1;
}

// `n` idle reader processes (idle_reader_main), as idle generation loops are, until stop();
// for the memory figure.
class IdleReaders {
 public:
  IdleReaders(const std::string &dir, const std::string &adapter, size_t n)
      : shared_(static_cast<std::atomic<uint32_t> *>(shared_map(2 * sizeof(std::atomic<uint32_t>)))) {
    int fds[2];
    if (::pipe(fds) != 0) fail(std::string("pipe: ") + std::strerror(errno));
    wake_ = fds[1];
    int rfd = fds[0];  // the children's end; -1 once this process closed its copy
    std::atomic<uint32_t> &ready = shared_[0], &errors = shared_[1];
    try {
      for (size_t i = 0; i < n; ++i)
        pids_.push_back(spawn(
            [&] { return idle_reader_main(dir, adapter, rfd, wake_, ready, errors); },
            "idle reader"));
      ::close(rfd);
      rfd = -1;
      const uint64_t deadline = now_ns() + 30'000'000'000ULL;
      while (ready.load() < n) {
        if (now_ns() > deadline) fail("idle readers did not start");
        sleep_ms(1);
      }
      if (errors.load() != 0) fail(std::to_string(errors.load()) + " idle reader(s) failed to pin");
    } catch (...) {
      if (rfd >= 0) ::close(rfd);
      stop();
      throw;
    }
  }
  ~IdleReaders() {
    stop();
    ::munmap(shared_, 2 * sizeof(std::atomic<uint32_t>));
  }
  IdleReaders(const IdleReaders &) = delete;
  IdleReaders &operator=(const IdleReaders &) = delete;

  // Closing the pipe's last writer wakes every reader (end of file).
  void stop() {
    if (wake_ >= 0) ::close(wake_);
    wake_ = -1;
    for (pid_t p : pids_) wait_child(p);
    pids_.clear();
  }

 private:
  std::atomic<uint32_t> *shared_;  // ready, errors; in shared memory
  int wake_ = -1;
  std::vector<pid_t> pids_;
};

// In shared memory: what each event subscriber process saw last.
struct alignas(64) SubscriberSlot {
  std::atomic<uint64_t> seen_ns;       // now_ns() as lf_events_next_event returned
  std::atomic<uint64_t> seen_version;  // stored after seen_ns (release)
  std::atomic<uint32_t> ready;
};
struct SubscriberShared {
  std::atomic<uint32_t> quit;
  std::atomic<uint32_t> errors;
  SubscriberSlot slots[1];  // `n` of them, allocated past the struct
};

int subscriber_main(SubscriberShared &s, size_t i, const std::string &dir,
                    const std::string &adapter) {
  lf_events_t *events = nullptr;
  if (lf_events_open(dir.c_str(), adapter.c_str(), &events) != LF_OK) {
    s.errors.fetch_add(1);
    s.slots[i].ready.store(1);
    return 1;
  }
  s.slots[i].ready.store(1);
  int rc = 0;
  while (s.quit.load(std::memory_order_acquire) == 0) {
    lf_event_t e;
    // A bounded wait, so that quit is noticed.
    const int r = lf_events_next_event(events, 50, &e);
    if (r == LF_OK) {
      s.slots[i].seen_ns.store(now_ns(), std::memory_order_relaxed);
      s.slots[i].seen_version.store(e.version, std::memory_order_release);
    } else if (r != LF_E_TIMEOUT) {
      s.errors.fetch_add(1);
      rc = 1;
      break;
    }
  }
  lf_events_close(events);
  return rc;
}

// Waits until every subscriber saw `version`; false when `timeout_ms` passed first. Polls with
// short sleeps: a spinning benchmark would take one of the two CPUs from the subscribers.
bool wait_all_subscribers(SubscriberShared &s, size_t n, uint64_t version, int timeout_ms) {
  const uint64_t deadline = now_ns() + uint64_t(timeout_ms) * 1'000'000ULL;
  for (size_t i = 0; i < n; ++i)
    while (s.slots[i].seen_version.load(std::memory_order_acquire) < version) {
      if (now_ns() > deadline) return false;
      ::usleep(20);
    }
  return true;
}

FlipRow measure_subscribers(const Section &sec, const std::string &adapter, Publisher &p,
                            size_t n, size_t reps) {
  const size_t bytes = sizeof(SubscriberShared) + n * sizeof(SubscriberSlot);
  auto *s = static_cast<SubscriberShared *>(shared_map(bytes));
  // Stops the subscribers and unmaps their slots on every way out.
  struct Subscribers {
    SubscriberShared *s;
    size_t bytes;
    std::vector<pid_t> pids;
    // How many of them failed.
    int stop() {
      s->quit.store(1, std::memory_order_release);
      int bad = 0;
      for (pid_t pid : pids) bad += wait_child(pid) != 0;
      pids.clear();
      return bad;
    }
    ~Subscribers() {
      stop();
      ::munmap(s, bytes);
    }
  } subs{s, bytes, {}};
  for (size_t i = 0; i < n; ++i)
    subs.pids.push_back(spawn([&, i] { return subscriber_main(*s, i, sec.dir(), adapter); },
                              "subscriber"));
  const uint64_t deadline = now_ns() + 30'000'000'000ULL;
  for (size_t i = 0; i < n; ++i)
    while (s->slots[i].ready.load() == 0) {
      if (now_ns() > deadline) fail("event subscribers did not start");
      sleep_ms(1);
    }
  if (s->errors.load() != 0) fail("an event subscriber could not subscribe");
  // A ZeroMQ subscription reaches the daemon's PUB socket some time after the connect, and
  // events before that are lost to it: publish until every subscriber got one.
  bool all = false;
  for (int i = 0; i < 200 && !all; ++i) {
    p.publish();
    all = wait_all_subscribers(*s, n, p.last_version, 25);
  }
  if (!all) fail("event subscribers still miss events after 200 publishes");
  for (int i = 0; i < 10; ++i) {
    p.publish();
    if (!wait_all_subscribers(*s, n, p.last_version, 10000)) fail("a subscriber missed an event");
  }
  std::vector<double> visible, event, last;
  for (size_t r = 0; r < reps; ++r) {
    const Publisher::Timing t = p.publish();
    if (!wait_all_subscribers(*s, n, p.last_version, 10000))
      fail("a subscriber missed the event of version " + std::to_string(p.last_version));
    visible.push_back(double(t.visible_ns));
    double latest = 0;
    for (size_t i = 0; i < n; ++i) {
      const uint64_t seen = s->slots[i].seen_ns.load(std::memory_order_relaxed);
      event.push_back(double(seen - t.commit_at_ns));
      latest = std::max(latest, double(seen - t.commit_at_ns));
    }
    last.push_back(latest);
  }
  if (const int bad = subs.stop(); bad != 0)
    fail(std::to_string(bad) + " subscriber(s) failed");
  return {n, reps, stats_of(visible), stats_of(event), stats_of(last)};
}

}  // namespace

std::vector<PublishFigures> run_publish(const Options &opt, const Plan &plan) {
  // Four slots per adapter (the default history of 2, plus 2), every size kept, plus room.
  uint64_t arena_mib = 64, largest = 0;
  for (uint64_t mib : plan.sizes_mib) {
    arena_mib += 4 * mib;
    largest = std::max(largest, mib);
  }
  Section sec(opt, "publish", {"--arena-size", std::to_string(arena_mib) + "M"}, true);
  std::vector<PublishFigures> rows;
  const CopyBuffers buffers(largest << 20);
  sec.observer().mode.store(kWatch);
  for (uint64_t mib : plan.sizes_mib) {
    rows.push_back(measure_publish(sec.client(), sec.observer(), mib, plan.publish_reps(mib), buffers));
    progress("1. publish " + std::to_string(mib) + " MiB");
  }
  return rows;
}

ReaderFigures run_readers(const Options &opt, const Plan &plan) {
  const size_t most = *std::max_element(plan.readers.begin(), plan.readers.end());
  // Room for a round of readers that ended but is not reclaimed yet, beside the next.
  Section sec(opt, "readers",
              {"--arena-size", "64M", "--max-readers", std::to_string(2 * most + 16)}, false);
  const std::string adapter = "scale-acquire";
  create_small_adapter(sec.client(), adapter);
  ReaderFigures f;
  f.memory.push_back({0, daemon_memory(sec, "readers")});
  for (size_t n : plan.readers) {
    {
      IdleReaders idle(sec.dir(), adapter, n);
      f.memory.push_back({n, daemon_memory(sec, "readers")});
    }
    sleep_ms(250);  // the idle readers reclaimed before the busy ones start
    f.acquire.push_back(
        {n, measure_acquire_release(sec.dir(), adapter, n, plan.acquire_chunks, plan.acquire_iters)});
    progress("2. acquire + release and 4b. memory, " + std::to_string(n) + " reader(s)");
  }
  return f;
}

AdapterFigures run_adapters(const Options &opt, const Plan &plan) {
  const size_t most = *std::max_element(plan.adapters.begin(), plan.adapters.end());
  Section sec(opt, "adapters",
              {"--arena-size", "64M", "--max-adapters", std::to_string(most + 16)}, true);
  AdapterFigures f;
  f.memory.push_back({0, daemon_memory(sec, "adapters")});
  size_t made = 0;
  for (size_t n : plan.adapters) {
    for (; made < n; ++made) create_small_adapter(sec.client(), "scale-" + std::to_string(made));
    f.memory.push_back({n, daemon_memory(sec, "adapters")});
    // The newest adapter: last in the daemon's table, and its name the last a lookup finds.
    const std::string name = "scale-" + std::to_string(n - 1);
    observe(sec.observer(), name);
    sec.observer().mode.store(kWatch);
    Publisher p = small_publisher(sec, name, 1);
    for (int i = 0; i < 20; ++i) p.publish();
    std::vector<double> visible;
    for (size_t r = 0; r < plan.flip_reps; ++r) visible.push_back(double(p.publish().visible_ns));
    sec.observer().mode.store(kIdle);
    f.flip.push_back({n, plan.flip_reps, stats_of(visible), {}, {}});
    progress("3a. flip and 4a. memory, " + std::to_string(n) + " adapter(s)");
  }
  return f;
}

std::vector<FlipRow> run_subscribers(const Options &opt, const Plan &plan) {
  Section sec(opt, "events", {"--arena-size", "64M"}, true);
  const std::string name = "scale-events";
  create_small_adapter(sec.client(), name);
  observe(sec.observer(), name);
  sec.observer().mode.store(kWatch);
  Publisher p = small_publisher(sec, name, 1);
  std::vector<FlipRow> rows;
  // 0 first: the same flip on the same daemon with nobody subscribed, to compare with.
  std::vector<size_t> counts = plan.subscribers;
  counts.insert(counts.begin(), 0);
  for (size_t n : counts) {
    rows.push_back(measure_subscribers(sec, name, p, n, plan.flip_reps));
    progress("3b. flip and events, " + std::to_string(n) + " subscriber(s)");
  }
  sec.observer().mode.store(kIdle);
  return rows;
}

}  // namespace lfbench::scaling
