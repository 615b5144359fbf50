// lf-soak: writers, readers and the daemon killed at random (SIGKILL) for a while, with every
// word of every read checked against the version the reader pinned.
//
//   lf-soak [--seconds N | --minutes N] [--writers N] [--readers N] [--seed N]
//           [--kill-every-ms MIN:MAX] [--placement host|cuda:0|cuda:0,1] [--inject-torn]
//   (LORAFLIPD names the daemon binary)
//
// --placement cuda:...: the adapter lives in device memory, stood in for by the daemon's host
// implementation of the device interface (two devices). Readers check the first device's copy
// and, placed on two, the second's too. A killed daemon's successor puts the active version back
// from its host copy; in the rare case that the kill fell between a flip and that copy, the
// adapter is dropped instead, and the soak creates it again (counted, not a failure: versions
// then start from 1 again, and readers start over with the new adapter).
//
// --inject-torn makes every 16th version carry one word of another version, and turns the
// verdict around: the run passes only if the checker caught torn reads (a meson test runs it
// so, to show that the checker can fail).
//
// Prints versions published, reads checked, kills survived and torn reads; exits 1 when any
// read was torn, a commit got another version than its writer wrote, or nothing happened.
//
// How a writer knows the version it writes: writers take turns under an flock (which a killed
// writer drops with its life), and each one begins only when the adapter has no lease at all
// (census: nothing writing, nothing abandoned) and then writes the pattern of last_version + 1.
// The daemon is the only one that numbers versions, and no other lease exists until this one
// ends, so the commit gets exactly that number. A writer that sees any error once its lease may
// exist exits and is started again: its lease then ends with its process (reclaimed as dead).
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <random>
#include <string>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "support.hpp"

using namespace lftest;

namespace {

constexpr const char *kAdapter = "soak";
constexpr int kTensors = 4;
constexpr int64_t kElements = 16384;  // f32: 64 KiB per tensor, 256 KiB per version

// Lives in a shared anonymous mapping made before any fork: children count into it, and what
// they counted survives their SIGKILL.
struct Tally {
  std::atomic<uint64_t> reads{0};            // pins whose every word was checked (twice)
  std::atomic<uint64_t> torn_reads{0};       // pins with at least one wrong word
  std::atomic<uint64_t> torn_words{0};
  std::atomic<uint64_t> commits{0};          // commits whose writer saw the reply
  std::atomic<uint64_t> version_mismatch{0}; // commits numbered other than expected
  std::atomic<uint64_t> went_back{0};        // a reader saw the active version decrease
  std::atomic<uint64_t> max_version{0};      // highest version a reader pinned
};

Tally *g_tally = nullptr;
bool g_inject_torn = false;
std::string g_placement = "host";
int g_replica = -1;  // a second device whose copy readers check too, or -1

void note_max(uint64_t v) {
  uint64_t seen = g_tally->max_version.load();
  while (v > seen && !g_tally->max_version.compare_exchange_weak(seen, v)) {
  }
}

int writer_main(const std::string &dir, const std::string &lock_path, unsigned seed) {
  const int lock = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock < 0) return 10;
  std::minstd_rand rng(seed);
  lf_client_t *client = nullptr;
  while (true) {
    if (client == nullptr && lf_client_open(dir.c_str(), 2000, &client) != LF_OK) {
      client = nullptr;
      sleep_ms(20);
      continue;
    }
    while (::flock(lock, LOCK_EX) != 0 && errno == EINTR) {
    }
    // Wait for an adapter with no lease at all, and learn the last version assigned.
    uint64_t last = 0;
    while (true) {
      char *json = nullptr;
      if (lf_client_info(client, kAdapter, &json) == LF_OK) {
        const std::string info(json);
        lf_free(json);
        if (json_number(info, "writing") == 0 && json_number(info, "abandoned") == 0) {
          last = static_cast<uint64_t>(json_number(info, "last_version"));
          break;
        }
      }
      sleep_ms(5);
    }
    lf_writer_t *w = nullptr;
    int rc = lf_client_begin_write(client, kAdapter, 10000, &w);
    if (rc == LF_E_NO_FREE_SLOT) {  // readers pin every free slot: no lease was made
      ::flock(lock, LOCK_UN);
      sleep_ms(2);
      continue;
    }
    if (rc != LF_OK) return 3;  // the reply may be lost while the lease exists: end it by dying
    // A daemon restart between the look above and this lease may have dropped a device-placed
    // adapter and the soak made it again (numbered from 1): then `last` is stale. Look again.
    if (g_placement != "host") {
      char *json = nullptr;
      if (lf_client_info(client, kAdapter, &json) != LF_OK) return 3;
      const uint64_t now_last = static_cast<uint64_t>(json_number(json, "last_version"));
      lf_free(json);
      if (now_last != last) return 3;
    }
    fill_pattern(w, last + 1);
    if (g_inject_torn && (last + 1) % 16 == 0) {
      lf_tensor_view_t view;
      lf_writer_tensor(w, 1, &view);
      static_cast<uint64_t *>(view.data)[7] = pattern_word(last, 7);
    }
    uint64_t version = 0;
    rc = lf_writer_commit(w, 0, &version);
    if (rc != LF_OK) return 3;
    if (version != last + 1) {
      g_tally->version_mismatch.fetch_add(1);
      return 4;
    }
    g_tally->commits.fetch_add(1);
    ::flock(lock, LOCK_UN);
    ::usleep(500 + rng() % 3000);
  }
}

int reader_main(const std::string &dir, unsigned seed) {
  std::minstd_rand rng(seed);
  lf_reader_t *reader = nullptr;
  while (lf_reader_open(dir.c_str(), &reader) != LF_OK) sleep_ms(20);
  lf_adapter_ref_t ref = 0;
  while (lf_reader_find(reader, kAdapter, &ref) != LF_OK) sleep_ms(20);
  uint64_t last = 0;
  while (true) {
    lf_pin_t *pin = nullptr;
    const int rc = lf_reader_acquire(reader, ref, 0, &pin);
    if (rc == LF_E_STALE) {  // dropped at a daemon restart and made again: start over
      while (lf_reader_find(reader, kAdapter, &ref) != LF_OK) sleep_ms(5);
      last = 0;
      continue;
    }
    if (rc != LF_OK) {  // no version yet
      sleep_ms(1);
      continue;
    }
    uint64_t torn = count_torn(pin);
    if (g_replica >= 0) torn += count_torn(pin, g_replica);
    if (rng() % 8 == 0) ::usleep(1000 + rng() % 4000);  // hold pins across flips
    torn += count_torn(pin);
    if (g_replica >= 0) torn += count_torn(pin, g_replica);
    const uint64_t v = lf_pin_version(pin);
    lf_pin_release(pin);
    g_tally->reads.fetch_add(1);
    if (torn != 0) {
      g_tally->torn_reads.fetch_add(1);
      g_tally->torn_words.fetch_add(torn);
    }
    if (v < last) g_tally->went_back.fetch_add(1);  // no rollbacks here: versions only grow
    last = v;
    note_max(v);
  }
}

int usage(const char *why) {
  std::fprintf(stderr,
               "lf-soak: %s\nusage: lf-soak [--seconds N | --minutes N] [--writers N] "
               "[--readers N] [--seed N] [--kill-every-ms MIN:MAX] [--inject-torn]\n",
               why);
  return 2;
}

}  // namespace

int main(int argc, char **argv) {
  double seconds = 60;
  int writers = 2, readers = 4;
  unsigned seed = static_cast<unsigned>(::getpid());
  int kill_min = 100, kill_max = 600;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--inject-torn") {
      g_inject_torn = true;
      continue;
    }
    const char *v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (v == nullptr) return usage(("missing value after " + a).c_str());
    ++i;
    if (a == "--seconds") seconds = std::atof(v);
    else if (a == "--minutes") seconds = std::atof(v) * 60;
    else if (a == "--writers") writers = std::atoi(v);
    else if (a == "--readers") readers = std::atoi(v);
    else if (a == "--seed") seed = static_cast<unsigned>(std::strtoul(v, nullptr, 10));
    else if (a == "--placement") g_placement = v;
    else if (a == "--kill-every-ms") {
      if (std::sscanf(v, "%d:%d", &kill_min, &kill_max) != 2) return usage("--kill-every-ms MIN:MAX");
    } else {
      return usage(("unknown option " + a).c_str());
    }
  }
  if (!(seconds > 0) || writers < 1 || readers < 1 || kill_min < 1 || kill_max < kill_min)
    return usage("bad values");
  if (g_placement != "host" && g_placement != "cuda:0" && g_placement != "cuda:0,1")
    return usage("--placement wants host, cuda:0 or cuda:0,1");
  if (g_placement == "cuda:0,1") g_replica = 1;
  if (std::getenv("LORAFLIPD") == nullptr) return usage("set LORAFLIPD to the loraflipd binary");

  void *shared = ::mmap(nullptr, sizeof(Tally), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) return 1;
  g_tally = new (shared) Tally();
  std::minstd_rand rng(seed);
  std::printf("lf-soak: %.0f s, %d writers, %d readers, seed %u, a kill every %d-%d ms, "
              "placement %s\n", seconds, writers, readers, seed, kill_min, kill_max,
              g_placement.c_str());
  std::fflush(stdout);

  std::vector<std::string> daemon_args = {"--reap-interval-ms", "50"};
  if (g_placement != "host")
    daemon_args.insert(daemon_args.end(), {"--devices", "0,1", "--device-backend", "host",
                                           "--device-arena-size", "16M"});
  Daemon daemon("soak", daemon_args);
  try {
    daemon.start();
  } catch (const std::exception &e) {
    std::fprintf(stderr, "lf-soak: %s\n", e.what());
    return 1;
  }
  {
    lf_client_t *client = nullptr;
    if (lf_client_open(daemon.dir().c_str(), 5000, &client) != LF_OK ||
        create_pattern_adapter(client, kAdapter, kTensors, kElements, 2, g_placement) != LF_OK) {
      std::fprintf(stderr, "lf-soak: cannot create the adapter: %s\n", lf_last_error_message());
      return 1;
    }
    lf_client_close(client);  // no ZeroMQ threads in this process while it forks
  }
  const std::string lock_path = daemon.dir() + "/soak.lock";
  const std::string dir = daemon.dir();

  struct Child {
    pid_t pid;
    bool writer;
  };
  std::vector<Child> children;
  auto start_child = [&](bool writer) {
    const unsigned s = static_cast<unsigned>(rng());
    const pid_t pid = writer ? spawn([&, s] { return writer_main(dir, lock_path, s); })
                             : spawn([&, s] { return reader_main(dir, s); });
    return Child{pid, writer};
  };
  for (int i = 0; i < writers; ++i) children.push_back(start_child(true));
  for (int i = 0; i < readers; ++i) children.push_back(start_child(false));

  uint64_t kills_daemon = 0, kills_writer = 0, kills_reader = 0, writer_restarts = 0;
  uint64_t dropped_at_restart = 0;
  // After a daemon restart: the adapter must be there again. A device placement may have lost
  // it (killed between a flip and its host copy): make it again. A host placement never may.
  auto adapter_back = [&] {
    lf_client_t *client = nullptr;
    if (lf_client_open(daemon.dir().c_str(), 5000, &client) != LF_OK) return false;
    char *json = nullptr;
    int rc = lf_client_info(client, kAdapter, &json);
    lf_free(json);
    if (rc == LF_E_NOT_FOUND && g_placement != "host") {
      ++dropped_at_restart;
      rc = create_pattern_adapter(client, kAdapter, kTensors, kElements, 2, g_placement);
    }
    lf_client_close(client);
    return rc == LF_OK;
  };
  int failures = 0;
  const uint64_t end = now_ms() + static_cast<uint64_t>(seconds * 1000);
  while (now_ms() < end) {
    sleep_ms(kill_min + static_cast<int>(rng() % static_cast<unsigned>(kill_max - kill_min + 1)));
    // Writers that ended themselves (an error once their lease may exist) start again.
    for (Child &c : children) {
      int status = 0;
      if (::waitpid(c.pid, &status, WNOHANG) == c.pid) {
        if (!c.writer || !WIFEXITED(status) || (WEXITSTATUS(status) != 3 && WEXITSTATUS(status) != 4)) {
          std::fprintf(stderr, "lf-soak: a %s ended by itself (status %d)\n",
                       c.writer ? "writer" : "reader", status);
          ++failures;
        }
        ++writer_restarts;
        c = start_child(c.writer);
      }
    }
    const unsigned pick = rng() % 10;
    if (pick < 2) {
      daemon.kill9();
      ++kills_daemon;
      sleep_ms(static_cast<int>(rng() % 300));
      try {
        daemon.start();  // re-attaches to the arena; readers kept reading meanwhile
      } catch (const std::exception &e) {
        std::fprintf(stderr, "lf-soak: the daemon did not come back: %s\n", e.what());
        ++failures;
        break;
      }
      if (!adapter_back()) {
        std::fprintf(stderr, "lf-soak: the adapter did not come back after a restart: %s\n",
                     lf_last_error_message());
        ++failures;
        break;
      }
    } else {
      std::vector<size_t> pool;
      for (size_t i = 0; i < children.size(); ++i)
        if (children[i].writer == (pick < 6)) pool.push_back(i);
      Child &c = children[pool[rng() % pool.size()]];
      ::kill(c.pid, SIGKILL);
      wait_child(c.pid);
      (c.writer ? kills_writer : kills_reader) += 1;
      c = start_child(c.writer);
    }
  }
  for (Child &c : children) {
    ::kill(c.pid, SIGKILL);
    wait_child(c.pid);
  }

  uint64_t last_version = 0;
  if (daemon.running()) {
    lf_client_t *client = nullptr;
    char *json = nullptr;
    if (lf_client_open(dir.c_str(), 5000, &client) == LF_OK &&
        lf_client_info(client, kAdapter, &json) == LF_OK) {
      last_version = static_cast<uint64_t>(json_number(json, "last_version"));
      lf_free(json);
    } else {
      std::fprintf(stderr, "lf-soak: the daemon does not answer at the end\n");
      ++failures;
    }
    lf_client_close(client);
  }

  const Tally &t = *g_tally;
  std::printf("versions published: %llu (commits seen by their writer: %llu)\n",
              static_cast<unsigned long long>(last_version),
              static_cast<unsigned long long>(t.commits.load()));
  std::printf("reads checked:      %llu (highest version read: %llu)\n",
              static_cast<unsigned long long>(t.reads.load()),
              static_cast<unsigned long long>(t.max_version.load()));
  std::printf("kills survived:     %llu daemon, %llu writer, %llu reader (writers restarted "
              "after an error: %llu)\n",
              static_cast<unsigned long long>(kills_daemon),
              static_cast<unsigned long long>(kills_writer),
              static_cast<unsigned long long>(kills_reader),
              static_cast<unsigned long long>(writer_restarts));
  if (g_placement != "host")
    std::printf("device adapter:     put back at every restart but %llu (dropped, made again)\n",
                static_cast<unsigned long long>(dropped_at_restart));
  std::printf("torn reads:         %llu (%llu words)\n",
              static_cast<unsigned long long>(t.torn_reads.load()),
              static_cast<unsigned long long>(t.torn_words.load()));
  if (t.version_mismatch.load() != 0) {
    std::printf("FAIL: %llu commits got another version than their writer wrote\n",
                static_cast<unsigned long long>(t.version_mismatch.load()));
    ++failures;
  }
  if (t.went_back.load() != 0) {
    std::printf("FAIL: readers saw the active version go back %llu times\n",
                static_cast<unsigned long long>(t.went_back.load()));
    ++failures;
  }
  // Commits counted by the writers, not the adapter's last version: a device adapter whose host
  // copy lagged is dropped and made again at a restart, and the run may end before its first
  // version.
  if (t.commits.load() == 0 || t.reads.load() == 0) {
    std::printf("FAIL: nothing was published or read\n");
    ++failures;
  }
  if (g_inject_torn) {
    if (t.torn_reads.load() == 0) {
      std::printf("FAIL: torn versions were injected but the checker caught none\n");
      ++failures;
    } else {
      std::printf("the checker caught the injected torn versions, as it should\n");
    }
  } else if (t.torn_reads.load() != 0) {
    ++failures;
  }
  std::printf("%s\n", failures == 0 ? "soak: OK" : ("soak: FAILED (daemon log: " + dir + ".log)").c_str());
  if (failures == 0) ::unlink((dir + ".log").c_str());
  return failures == 0 ? 0 : 1;
}
